"""Fine-tune a real/fake head on a pre-trained encoder (full, linear probe or few-shot).

    torchrun --nproc_per_node=8 finetune.py --config configs/finetune.yaml init=runs/pretrain/checkpoint.pt \\
        data.bench=forensynths data.root=/data/CNNDetection/train data.subsets=[progan]
    python finetune.py --config configs/demo_finetune.yaml

Writes runs/<name>/{best.pt,last.pt,log.jsonl,config.yaml}; re-running resumes from last.pt.
"""
import argparse
from fitgap import config as C
from fitgap.cli import run_main
from fitgap.finetune import DEFAULTS, run


def get_args_parser():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--config", default="configs/finetune.yaml", help="YAML config")
    p.add_argument("overrides", nargs="*", help="key.sub=value overrides, e.g. mode=linear")
    return p


def main(args):
    return run_main(lambda: run(C.load_config(args.config, args.overrides, DEFAULTS)))


if __name__ == "__main__":
    main(get_args_parser().parse_args())
