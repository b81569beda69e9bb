"""Entry-point plumbing shared by the scripts: the project's own errors (a config key, an argument or
a path named in the message) become one line on stderr and exit code 2; anything else (a bug, a
library failure) keeps its traceback and a non-zero exit."""
from __future__ import annotations

import sys

from . import distributed as D
from .errors import FitgapError


def run_main(fn, *args):
    try:
        return fn(*args)
    except FitgapError as exc:
        print(f"error: {exc}", file=sys.stderr, flush=True)
        sys.exit(2)
    finally:
        D.cleanup()
