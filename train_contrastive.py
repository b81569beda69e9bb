"""Rescaling-contrastive pre-training on real images.

    torchrun --nproc_per_node=8 train_contrastive.py --config configs/pretrain.yaml data.train=/data/imagenet/train
    python train_contrastive.py --config configs/demo_pretrain.yaml

Re-running the same command resumes from runs/<name>/checkpoint.pt.
"""
import argparse
from fitgap import config as C
from fitgap.cli import run_main
from fitgap.pretrain import DEFAULTS, run


def get_args_parser():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--config", default="configs/pretrain.yaml", help="YAML config")
    p.add_argument("overrides", nargs="*", help="key.sub=value overrides, e.g. train.batch=256")
    return p


def main(args):
    return run_main(lambda: run(C.load_config(args.config, args.overrides, DEFAULTS)))


if __name__ == "__main__":
    main(get_args_parser().parse_args())
