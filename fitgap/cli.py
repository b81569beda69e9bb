"""Entry-point plumbing shared by the scripts: user errors become one line and exit code 2."""
from __future__ import annotations

import sys

from . import distributed as D
from .config import ConfigError
from .optim import NonFiniteLoss

USER_ERRORS = (ConfigError, NonFiniteLoss, FileNotFoundError, ValueError)


def run_main(fn, *args):
    try:
        return fn(*args)
    except USER_ERRORS as exc:
        print(f"error: {exc}", file=sys.stderr, flush=True)
        sys.exit(2)
    finally:
        D.cleanup()
