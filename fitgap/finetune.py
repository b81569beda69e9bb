"""Fine-tuning a binary real/fake head on a (pre-trained) encoder: full, linear probe or few-shot."""
from __future__ import annotations

import copy
import os
import time
from typing import Any, Dict, List, Optional, Tuple

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F
from torch.utils.data import DataLoader, DistributedSampler
from .progress import progress

from . import checkpoint as ckpt
from . import config as C
from . import distributed as D
from .benchmarks import load_benchmark
from .data import summarize_skipped
from .detector import load_pretrained_encoder
from .evaldata import Perturbation, TrainCrops, collate_train
from .evaluate import _fmt, evaluate_subsets, format_markdown
from .models import SCORES, Detector, check_encoder_config, encoder_from_config, has_distance, without_distance
from .realdist import MIN_REALS
from .optim import amp_context, cosine_schedule, optimizer_step, set_lr
from .pretrain import DEFAULTS as PRETRAIN_DEFAULTS
from .pretrain import IMAGENET_MEAN, IMAGENET_STD, augment_patches, check_sharpen, check_train_common
from .runlog import JsonlLog, start_run
from .seeding import loader_seeding, seed_everything

DEFAULTS: Dict[str, Any] = {
    "name": "finetune",
    "out_dir": "runs",
    "seed": 0,
    "device": "auto",
    "init": None,  # a pre-training checkpoint; null trains from scratch (the ablation)
    "mode": "full",  # full | linear | fewshot
    "fewshot": {"k": 16, "subsets": None},  # k images per class from each subset (default: data.subsets)
    "data": {"bench": "mini", "root": None, "split": "train", "subsets": None, "val_fraction": 0.2,
             "workers": 2},
    "patch": 128,
    # sharpen: null, or [lo, hi]: every training crop x becomes x + a (x - blur(x)), a drawn in [lo, hi] per
    # crop (fitgap.pretrain.sharpen, the pre-training's augment.sharpen applied to the fine-tuning's batches)
    "augment": {"flip": True, "jpeg_prob": 0.0, "blur_prob": 0.0, "sharpen": None},
    "normalize": {"mean": IMAGENET_MEAN, "std": IMAGENET_STD},
    "model": copy.deepcopy(PRETRAIN_DEFAULTS["model"]),
    # encoder_lr_scale: the encoder learns at lr x this (the head at lr): below 1 keeps more of what
    # pre-training learned
    "optim": {"lr": 1.0e-4, "weight_decay": 0.0, "warmup_steps": 0, "min_lr": 0.0, "grad_clip": 0.0,
              "encoder_lr_scale": 1.0},
    # linear_epochs: the first epochs train the head alone on the frozen encoder, then everything
    # (linear probing, then fine-tuning: the head starts aligned with the features)
    "train": {"epochs": 10, "linear_epochs": 0, "batch": 64, "max_steps": None, "amp": "bf16", "channels_last": True,
              "compile": False, "sync_bn": False, "log_every": 10, "threads": None, "deterministic": True},
    "eval": {"size": None, "crop": "center", "batch": 32},
    # score: what the detector's logit is. head: the trained Linear head (the paper's). distance: how far
    # the image's features lie from those of the training split's reals (fitgap.realdist, fitted on
    # best.pt's encoder when training ends; the head is still what trains and what picks best.pt)
    "score": "head",
}


def check(cfg: Dict[str, Any], world_size: int) -> None:
    C.require(cfg["mode"] in ("full", "linear", "fewshot"), "mode", f"full, linear or fewshot, got {cfg['mode']!r}")
    C.require(cfg["init"] is None or os.path.isfile(cfg["init"]), "init", f"{cfg['init']!r} does not exist")
    C.require(cfg["mode"] != "linear" or cfg["init"] is not None, "mode",
              "linear probing needs a pre-trained encoder (init)")
    C.require(cfg["patch"] >= 8, "patch", "must be >= 8")
    C.require(cfg["train"]["batch"] % world_size == 0, "train.batch",
              f"{cfg['train']['batch']} is not divisible by {world_size} ranks")
    C.require(cfg["train"]["amp"] in ("bf16", "fp16", "none"), "train.amp", "bf16, fp16 or none")
    C.require(0 < cfg["data"]["val_fraction"] < 1, "data.val_fraction", "must be in (0, 1)")
    C.require(cfg["fewshot"]["k"] >= 1, "fewshot.k", "must be >= 1")
    C.require(0 < cfg["optim"]["encoder_lr_scale"] <= 1e3, "optim.encoder_lr_scale", "must be in (0, 1000]")
    le = cfg["train"]["linear_epochs"]
    C.require(isinstance(le, int) and (le == 0 or 0 < le < cfg["train"]["epochs"]), "train.linear_epochs",
              f"must be 0 or fewer than train.epochs ({cfg['train']['epochs']}), got {le!r}")
    C.require(cfg["mode"] == "full" or cfg["train"]["linear_epochs"] == 0, "train.linear_epochs",
              "only with mode: full (linear and fewshot modes train as they are)")
    C.require(cfg["eval"]["crop"] in ("center", "tiles"), "eval.crop", "center or tiles")
    C.require(cfg["device"] in ("auto", "cpu", "cuda"), "device", "auto, cpu or cuda")
    C.require(cfg["score"] in SCORES, "score", f"one of {', '.join(SCORES)}, got {cfg['score']!r}")
    check_sharpen(cfg["augment"]["sharpen"])
    check_train_common(cfg)


def split_items(items: List[Tuple[str, int]], val_fraction: float, seed: int):
    """Seeded split of one subset into train / val, per class."""
    rng = np.random.default_rng(seed)
    train, val = [], []
    for label in (0, 1):
        cls = [it for it in items if it[1] == label]
        order = rng.permutation(len(cls))
        n_val = int(round(len(cls) * val_fraction)) if len(cls) > 1 else 0
        val += [cls[i] for i in order[:n_val]]
        train += [cls[i] for i in order[n_val:]]
    return train, val


def fewshot_sample(items: List[Tuple[str, int]], k: int, seed: int) -> List[Tuple[str, int]]:
    """k images per class, seeded (all of a class that has fewer)."""
    rng = np.random.default_rng(seed)
    out = []
    for label in (0, 1):
        cls = [it for it in items if it[1] == label]
        out += [cls[i] for i in sorted(rng.permutation(len(cls))[:k])]
    return out


def build_data(cfg: Dict[str, Any]):
    """(train items, val subsets) from the config's benchmark."""
    d = cfg["data"]
    # rank 0 lists and broadcasts: every rank splits and samples the same listing
    subsets = D.decided_by_rank0(load_benchmark, d["bench"], d["root"], d["split"], d["subsets"])
    bad = [s.name for s in subsets if s.status != "ok"]
    if bad:
        raise C.ConfigError(f"data.subsets: {', '.join(bad)} missing or empty under {d['root']!r} "
                            f"({d['bench']}, split {d['split']})")
    train, val_subsets = [], []
    shots = set(cfg["fewshot"]["subsets"] or [s.name for s in subsets])
    for i, s in enumerate(subsets):
        tr, va = split_items(s.items, d["val_fraction"], cfg["seed"] + i)
        if cfg["mode"] == "fewshot":
            tr = fewshot_sample(tr, cfg["fewshot"]["k"], cfg["seed"] + i) if s.name in shots else []
        train += tr
        val_subsets.append(type(s)(s.name, va, "ok" if va else "empty"))
    if not train:
        raise C.ConfigError("data: no training images")
    if cfg["score"] == "distance" and sum(label == 0 for _, label in train) < MIN_REALS:
        raise C.ConfigError(f"score: distance is fitted on the training split's real images; it holds "
                            f"{sum(label == 0 for _, label in train)}, at least {MIN_REALS} are needed")
    return train, val_subsets


def build_model(cfg: Dict[str, Any]) -> Detector:
    model = Detector(encoder_from_config(cfg["model"]))
    if cfg["init"]:
        load_pretrained_encoder(model, cfg["init"])
    if cfg["mode"] == "linear":
        for p in model.encoder.parameters():
            p.requires_grad_(False)
    return model


# what a resumed run must share with its checkpoint
RESUME_SAME = ("model", "mode", "normalize", "patch", "augment")


def resolve_config(cfg: Dict[str, Any]) -> Dict[str, Any]:
    """Take the encoder description and normalisation from the pre-training checkpoint."""
    if cfg["init"]:
        pre = ckpt.load(cfg["init"]).get("config", {})
        if "model" in pre:
            cfg["model"] = ckpt.with_defaults(pre["model"], DEFAULTS["model"])  # keys newer than the checkpoint: defaults
            cfg["model"]["weights"] = None
        if "normalize" in pre:
            cfg["normalize"] = copy.deepcopy(pre["normalize"])
    return cfg


def save(path, model, optimizer, scaler, cfg, epoch, step, best_ap, rng_ranks, best_epoch):
    """best_epoch: the epoch best.pt holds (None: not known, a run resumed from a checkpoint written
    before it was recorded)."""
    ckpt.save_training(path, model, optimizer, scaler, cfg, "detector", rng_ranks=rng_ranks, epoch=epoch,
                       step=step, best_ap=best_ap, best_epoch=best_epoch)


NO_VAL_AP = -1.0  # best_ap while no epoch has had a validation AP


def replaces_best(ap: Optional[float], best_ap: float) -> bool:
    """Whether the epoch just validated (mean validation AP `ap`, None where no validation subset
    holds both classes) becomes best.pt: a higher AP; while no epoch has had one, the latest epoch."""
    return ap > best_ap if ap is not None else best_ap <= NO_VAL_AP


def selection_note(ap: Optional[float], best_ap: float, best_epoch: Optional[int]) -> str:
    """What the epoch just validated does to best.pt, in words, where the AP alone does not say it: a
    later epoch whose validation AP only equals the best (common once it saturates at 100) leaves
    best.pt at the earliest such epoch; without a validation AP best.pt is the latest epoch."""
    if ap is None:
        if best_ap > NO_VAL_AP:
            return f"; no validation AP (no validation subset holds both classes): best.pt stays at epoch {best_epoch}"
        return "; no validation AP (no validation subset holds both classes): best.pt is this latest epoch"
    if best_epoch is None or ap > best_ap:
        return ""
    if ap == best_ap:
        return f"; ties epoch {best_epoch}'s validation AP: best.pt stays at epoch {best_epoch} (the earliest)"
    return f"; best.pt stays at epoch {best_epoch} (val AP {100 * best_ap:.1f})"


def param_groups(model: Detector, encoder_lr_scale: float, separate: bool = True) -> List[Dict[str, Any]]:
    """The head at the base learning rate, the encoder at `encoder_lr_scale` times it (trainable
    parameters only). separate=False (encoder at the head's rate, no head-only epochs): one group of
    every trainable parameter, as runs started before the groups existed have, so they resume."""
    if not separate:
        return [{"params": [p for p in model.parameters() if p.requires_grad], "lr_scale": 1.0, "name": "all"}]
    enc = [p for p in model.encoder.parameters() if p.requires_grad]
    head = [p for p in model.classifier.parameters() if p.requires_grad]
    return [g for g in ({"params": head, "lr_scale": 1.0, "name": "head"},
                        {"params": enc, "lr_scale": float(encoder_lr_scale), "name": "encoder"}) if g["params"]]


def encoder_frozen(cfg: Dict[str, Any], epoch: int) -> bool:
    """The encoder is held fixed (eval mode, no update) in linear mode and in the first
    train.linear_epochs epochs of a full fine-tuning."""
    return cfg["mode"] == "linear" or epoch < cfg["train"]["linear_epochs"]


def train_one_epoch(model, loader, optimizer, scaler, schedule, cfg, info, state, log):
    model.train()
    frozen = encoder_frozen(cfg, state["epoch"])
    core = model.module if hasattr(model, "module") else model
    core = getattr(core, "_orig_mod", core)
    if frozen:  # batch-norm statistics stay the pre-trained ones; the encoder group steps at lr 0
        core.encoder.eval()
    enc_group = [g for g in optimizer.param_groups if g.get("name") == "encoder"]
    t = cfg["train"]
    losses, skipped, t0, seen = [], [], time.perf_counter(), 0
    for x, y, sk in progress(loader, desc=f"epoch {state['epoch']}", disable=not info.is_main, leave=False,
                         dynamic_ncols=True):
        if state["step"] >= len(schedule):
            break
        lr = schedule[state["step"]]
        set_lr(optimizer, lr)
        for g in enc_group if frozen else ():
            g["lr"] = 0.0
        x = x.to(info.device, non_blocking=True)
        x = augment_patches(x, cfg, info.rank, state["step"])  # augment.sharpen, drawn from (seed, rank, step)
        if t["channels_last"]:
            x = x.contiguous(memory_format=torch.channels_last)
        y = y.to(info.device, non_blocking=True)
        with amp_context(t["amp"], info.device):
            logits = model(x)
        loss = F.binary_cross_entropy_with_logits(logits.float(), y)
        mean_loss = optimizer_step(loss, model, optimizer, scaler, cfg["optim"]["grad_clip"], state["step"])
        state["step"] += 1
        losses.append(mean_loss)
        skipped += sk
        seen += x.shape[0] * info.world_size
        if info.is_main and state["step"] % t["log_every"] == 0:
            log.write({"step": state["step"], "epoch": state["epoch"], "loss": mean_loss, "lr": lr,
                       "images_per_s": seen / (time.perf_counter() - t0)})
    return {"loss": float(np.mean(losses)) if losses else float("nan"), "skipped": skipped}


def run(cfg: Dict[str, Any]) -> Dict[str, Any]:
    info = D.init(cfg["device"])
    check(cfg, info.world_size)
    cfg = resolve_config(cfg)
    check_encoder_config(cfg["model"], {"patch": cfg["patch"], "eval.size": cfg["eval"]["size"] or cfg["patch"]})
    train_items, val_subsets = build_data(cfg)
    run_dir = start_run(cfg, info.is_main, "last.pt", RESUME_SAME,
                        f"{len(train_items)} training images ({cfg['mode']}, init {cfg['init'] or 'scratch'}); "
                        f"validation: {', '.join(f'{s.name} ({len(s.items)})' for s in val_subsets)}", DEFAULTS)
    t, o = cfg["train"], cfg["optim"]
    seed_everything(cfg["seed"], t["threads"], t["deterministic"])
    model = D.place_model(build_model(cfg), info, t["sync_bn"], t["channels_last"])
    model_without_ddp = model
    if info.rank:  # the weights are alike on every rank; from here on each rank draws its own stream
        torch.manual_seed(cfg["seed"] + info.rank)
    separate = o["encoder_lr_scale"] != 1.0 or t["linear_epochs"] > 0
    optimizer = torch.optim.Adam(param_groups(model_without_ddp, o["encoder_lr_scale"], separate), lr=o["lr"],
                                 weight_decay=o["weight_decay"])
    scaler = torch.amp.GradScaler(info.device.type, enabled=t["amp"] == "fp16")

    n = cfg["normalize"]
    a = cfg["augment"]
    dataset = TrainCrops(train_items, cfg["patch"], n["mean"], n["std"], a["flip"], a["jpeg_prob"],
                         blur_prob=a["blur_prob"], seed=cfg["seed"])
    sampler = DistributedSampler(dataset, info.world_size, info.rank, shuffle=True, seed=cfg["seed"],
                                 drop_last=True)
    per_rank = t["batch"] // info.world_size
    loader = DataLoader(dataset, batch_size=per_rank, sampler=sampler, num_workers=cfg["data"]["workers"],
                        collate_fn=collate_train, drop_last=len(sampler) >= per_rank,
                        pin_memory=info.device.type == "cuda", **loader_seeding(cfg["seed"], info.rank))
    steps_per_epoch = max(1, len(loader))
    total = t["epochs"] * steps_per_epoch
    if t["max_steps"]:
        total = min(total, t["max_steps"])
    schedule = cosine_schedule(o["lr"], total, o["warmup_steps"], o["min_lr"])

    state = {"epoch": 0, "step": 0, "best_ap": NO_VAL_AP, "best_epoch": None}
    log = JsonlLog(os.path.join(run_dir, "log.jsonl"))
    last = os.path.join(run_dir, "last.pt")
    saved = ckpt.resume_everywhere(last, model_without_ddp, optimizer, scaler)
    if saved is not None:
        state = {"epoch": saved["epoch"] + 1, "step": saved["step"], "best_ap": saved["best_ap"],
                 "best_epoch": saved.get("best_epoch")}  # None: written before the epoch was recorded
        if info.is_main:
            log.truncate_after(state["step"])
            print(f"resumed from {last} after epoch {saved['epoch']}", flush=True)
    if info.distributed:
        model = nn.parallel.DistributedDataParallel(
            model, device_ids=[info.local_rank] if info.device.type == "cuda" else None)
    if t["compile"]:
        model = torch.compile(model)

    crop = cfg["eval"]["size"] or cfg["patch"]
    result: Dict[str, Any] = {}
    while state["epoch"] < t["epochs"] and state["step"] < total:
        sampler.set_epoch(state["epoch"])
        dataset.set_epoch(state["epoch"])
        stats = train_one_epoch(model, loader, optimizer, scaler, schedule, cfg, info, state, log)
        val = evaluate_subsets(model_without_ddp.eval(), val_subsets, crop, cfg["eval"]["crop"], n["mean"],
                               n["std"], Perturbation(), info.device, cfg["eval"]["batch"],
                               cfg["data"]["workers"], info, amp=t["amp"])
        val_ap = val["mean"]["ap"]
        ap = val_ap if val_ap is not None else NO_VAL_AP
        skipped = summarize_skipped([s for part in D.all_gather_object(stats["skipped"]) for s in part])
        # every rank holds the same gathered `ap`, so every rank keeps the same best_ap
        improved = replaces_best(val_ap, state["best_ap"])
        if info.is_main:
            log.write({"step": state["step"], "epoch": state["epoch"], "epoch_loss": stats["loss"],
                       "val_acc": val["mean"]["acc"], "val_ap": val["mean"]["ap"], "skipped_images": skipped,
                       "best_epoch": state["epoch"] if improved else state["best_epoch"]})
            # "-" where a metric is undefined (no validation image, or one class), never a made-up 0
            msg = (f"epoch {state['epoch']}: loss {stats['loss']:.4f}, val acc {_fmt(val['mean']['acc'])}, "
                   f"val AP {_fmt(val_ap)}") + selection_note(val_ap, state["best_ap"], state["best_epoch"])
            if skipped["count"]:
                msg += f"; skipped {skipped['count']} image reads: {skipped['reasons']}"
            print(msg, flush=True)
        if improved:
            state["best_ap"], state["best_epoch"] = ap, state["epoch"]
        rngs = ckpt.rank_rng_states()
        if info.is_main:
            if improved:
                save(os.path.join(run_dir, "best.pt"), model_without_ddp, optimizer, scaler, cfg,
                     state["epoch"], state["step"], ap, rngs, state["epoch"])
            save(last, model_without_ddp, optimizer, scaler, cfg, state["epoch"], state["step"], state["best_ap"],
                 rngs, state["best_epoch"])
        D.barrier()
        result = {"val": val, "best_ap": state["best_ap"], "best_epoch": state["best_epoch"], "loss": stats["loss"]}
        state["epoch"] += 1
    rank_best = D.all_gather_object(state["best_ap"])  # the same on every rank (a check, logged)
    if info.is_main:
        log.write({"step": state["step"], "final": True, "rank_best_ap": rank_best, "best_epoch": state["best_epoch"]})
        if result:
            print(format_markdown(result["val"], f"validation ({cfg['name']}, last epoch)"), flush=True)
        if state["best_epoch"] is not None:
            chosen = (f"val AP {100 * state['best_ap']:.1f}, the first epoch to reach it" if state["best_ap"] > NO_VAL_AP
                      else "the latest: no epoch had a validation AP, no validation subset holds both classes")
            print(f"best.pt: epoch {state['best_epoch']} ({chosen}); last.pt: epoch {state['epoch'] - 1}", flush=True)
        best = os.path.join(run_dir, "best.pt")
        if os.path.isfile(best):
            fit = settle_score(best, cfg, train_items, val_subsets, info.device)
            if fit is not None:
                log.write({"step": state["step"], "distance_fit": fit})
                result["distance_fit"] = fit
    D.barrier()
    return result


def settle_score(path: str, cfg: Dict[str, Any], train_items, val_subsets, device) -> Optional[Dict[str, Any]]:
    """Make best.pt's logit the config's `score`. distance: fit the real distance on best.pt's encoder
    (the training split's reals, centred on the validation split's) and write it into best.pt, once:
    a resumed run that finds it fitted keeps it. head: drop a distance an earlier run fitted. Returns
    what was fitted (None for head)."""
    from .realdist import fit_detector_distance

    saved = ckpt.load(path)
    has = has_distance(saved["model"])
    if cfg["score"] == "head":
        if has or saved["config"].get("score", "head") != "head":
            saved["model"] = without_distance(saved["model"])
            saved["config"]["score"] = "head"
            saved.pop("distance_fit", None)
            ckpt.atomic_save(saved, path)
            print("best.pt: the distance fitted earlier is dropped (score: head)", flush=True)
        return None
    if has and saved["config"].get("score") == "distance" and "distance_fit" in saved:
        print(f"best.pt: score distance, fitted earlier ({saved['distance_fit']['reals']} reals)", flush=True)
        return saved["distance_fit"]
    model = Detector(encoder_from_config(saved["config"]["model"], load_weights=False))
    model.load_state_dict(without_distance(saved["model"]))
    model.to(device)
    crop = cfg["eval"]["size"] or cfg["patch"]
    n = cfg["normalize"]
    held = [it for s in val_subsets for it in s.items]
    fit = fit_detector_distance(model, train_items, held, crop, n["mean"], n["std"], device, cfg["seed"])
    saved["model"] = model.state_dict()
    saved["config"]["score"] = "distance"
    saved["distance_fit"] = fit
    ckpt.atomic_save(saved, path)
    print(f"best.pt: score distance fitted on {fit['reals']} real training images ({crop}-px centre crops), "
          f"centred on {fit['heldout_reals']} held-out reals ({fit['centred_on']}); val AP of the distance "
          f"{_fmt(fit['val_ap'])}" + (f"; {fit['left_out']} images left out (unreadable or under {crop} px)"
                                      if fit["left_out"] else ""), flush=True)
    return fit
