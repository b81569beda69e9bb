"""`fitgap <command> ...`: one entry point for the modules users call (`python -m fitgap.<command>` keeps
working; each command's options and help live in its own module)."""
from __future__ import annotations

import importlib
import sys
from typing import List, Optional

# command -> (module, function taking argv)
COMMANDS = {
    "detect": ("fitgap.detect", "cli"),
    "evaluate": ("fitgap.evaluate", "main"),
    "calibrate": ("fitgap.calibrate", "main"),
    "export": ("fitgap.export", "main"),
    "audit": ("fitgap.audit", "main"),
    "robustness": ("fitgap.robustness", "main"),
    "probe": ("fitgap.probe", "main"),
    "analysis": ("fitgap.analysis", "main"),
    "shards": ("fitgap.shards", "main"),
    "serve": ("fitgap.serve", "cli"),
    "reproduce": ("fitgap.reproduce", "main"),
    "demo": ("fitgap.demo", "main"),
}


def summary(module: str) -> str:
    """The first sentence of a command's module docstring (imported only for `fitgap --help`)."""
    doc = (importlib.import_module(module).__doc__ or "").strip()
    first = " ".join(doc.split("\n\n")[0].split())
    first = first.split(". ")[0].rstrip(".")
    return first if len(first) <= 88 else first[:85].rsplit(" ", 1)[0] + " ..."


def usage() -> str:
    lines = ["usage: fitgap <command> [options]   (fitgap <command> --help for its options)", "", "commands:"]
    lines += [f"  {name:<11} {summary(mod)}" for name, (mod, _) in COMMANDS.items()]
    lines += ["", "Training: train_contrastive.py and finetune.py (torchrun), evaluate.py, as before."]
    return "\n".join(lines)


def main(argv: Optional[List[str]] = None) -> None:
    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv or argv[0] in ("-h", "--help"):
        print(usage())
        sys.exit(0 if argv else 2)
    if argv[0] in ("-V", "--version"):
        from . import __version__

        print(f"fitgap {__version__}")
        sys.exit(0)
    name, rest = argv[0], argv[1:]
    if name not in COMMANDS:
        print(f"error: unknown command {name!r}; choose one of {', '.join(COMMANDS)}", file=sys.stderr)
        sys.exit(2)
    module, fn = COMMANDS[name]
    sys.argv = [f"fitgap {name}", *rest]  # argparse names the command in its usage line
    getattr(importlib.import_module(module), fn)(rest)


if __name__ == "__main__":
    main()
