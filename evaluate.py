"""Evaluate a detector over a benchmark (`python evaluate.py --help`: the usage and options, kept in
fitgap/evaluate.py beside the code they drive; `fitgap evaluate` is the same command)."""
from fitgap.cli import run_main
from fitgap.evaluate import get_args_parser, run  # the parser lives with the code it drives


def main(args):
    return run_main(run, args)


if __name__ == "__main__":
    main(get_args_parser().parse_args())
