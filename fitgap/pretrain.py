"""Rescaling-contrastive pre-training on real images (the logic behind train_contrastive.py)."""
from __future__ import annotations

import math
import os
import time
from typing import Any, Dict

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F
from torch.utils.data import DataLoader
from .progress import progress

import rescale_ext

from . import checkpoint as ckpt
from . import config as C
from . import distributed as D
from . import shards
from .evaldata import op_normalization
from .data import PlanBatchSampler, PlannedWindows, WindowDataset, collate_planned, summarize_skipped
from .index import broadcast_index, index_for_run
from .losses import supcon_loss
from .models import ContrastiveModel, check_encoder_config, encoder_from_config
from .optim import amp_context, cosine_schedule, optimizer_step, set_lr
from .plan import PlanSpec, max_window
from .ratios import format_ratio, ratios_from_config
from .runlog import JsonlLog, start_run
from .seeding import loader_seeding, seed_everything

IMAGENET_MEAN = [0.485, 0.456, 0.406]
IMAGENET_STD = [0.229, 0.224, 0.225]

DEFAULTS: Dict[str, Any] = {
    "name": "pretrain",
    "out_dir": "runs",
    "seed": 0,
    "device": "auto",  # auto | cpu | cuda
    # train: a folder of real images, a list file (text/CSV/npy), or WebDataset shards ("dir/train-{000000..000146}.tar"
    # or the shards.json that `python -m fitgap.shards` writes); index: a list file of paths (relative ones
    # join data.train when that is a folder)
    "data": {"train": "", "index": None, "workers": 4, "min_side": 300, "max_tries": 16, "cache_images": 0},
    "ratios": {"list": None, "range": None, "max_denominator": 8},
    "plan": {"patch": 128, "images_per_ratio": 2, "phases_per_image": 2, "patches_per_phase": 2,
             "grid": 2, "quantize": True},
    "normalize": {"mean": IMAGENET_MEAN, "std": IMAGENET_STD},
    "model": {"backbone": "legacy_xception", "pretrained": False, "weights": None,
              "stem_stride": None, "stem_pool": True, "pool_grid": 1, "highpass": False, "highpass_norm": False, "highpass_both": False,
              "trace_features": 0, "trace_block": 12, "proj_hidden": 2048, "proj_dim": 128},
    # base_temperature: null = the temperature (loss values then are t_base/t = 1.43x below those of
    # SupContrast's default base 0.07 at temperature 0.1; set 0.07 to log comparable numbers)
    # backbone_weight: w > 0 (an encoder with a trace branch only) adds w x the SupCon loss of a second
    # projection of the backbone's features alone (models.ContrastiveModel): otherwise the branch's fixed
    # statistics can carry the classes and the backbone learns little of them
    "loss": {"temperature": 0.1, "base_temperature": None, "gather": True, "backbone_weight": 0.0},
    "optim": {"lr": 2e-4, "betas": [0.9, 0.999], "weight_decay": 2e-4, "warmup_steps": 500,
              "min_lr": 0.0, "grad_clip": 0.0},
    "train": {"epochs": 200, "batch": 128, "steps_per_epoch": None, "max_steps": None,
              "amp": "bf16", "channels_last": True, "compile": False, "sync_bn": False,
              "ckpt_every": 1000, "keep_every": 0, "log_every": 10, "threads": None, "deterministic": True},
    # sharpen: [lo, hi] (or null: off) -- every patch, after the op built it, becomes x + a (x - blur(x))
    # with its own a drawn uniformly in [lo, hi] (a = -1: a 3x3 binomial blur, a > 0: sharper). The
    # filter is the same at every pixel, so the period and phase of a rescaling trace survive it, while
    # how smooth a patch is stops telling its ratio: the classes must be told apart by their pattern.
    "augment": {"sharpen": None},
    # every: also probe every N steps during training (0: only at the end), logged with the elapsed time
    # folds: 0 scores the probe leave-one-photo-out; k >= 2 deals more than k photos into k folds
    "probe": {"images": None, "patches": 8, "window": 384, "seed": 0, "baseline": True, "every": 0,
              "reference": True, "folds": 0},
}


# what a resumed run must share with its checkpoint (the rest, e.g. train.epochs, may change)
RESUME_SAME = ("model", "ratios", "plan", "normalize", "loss", "augment")


def build_spec(cfg: Dict[str, Any], world_size: int) -> PlanSpec:
    """Check the config for this world size and return the plan spec (ConfigError on problems)."""
    ratios = ratios_from_config(cfg["ratios"])
    p, t = cfg["plan"], cfg["train"]
    C.require(isinstance(t["batch"], int) and t["batch"] > 0, "train.batch", "must be a positive integer")
    C.require(t["batch"] % world_size == 0, "train.batch",
              f"global batch {t['batch']} is not divisible by {world_size} ranks")
    per_rank = t["batch"] // world_size
    per_image = p["phases_per_image"] * p["patches_per_phase"]
    group = per_image * p["images_per_ratio"]
    C.require(per_rank % group == 0, "train.batch",
              f"{per_rank} patches per rank are not a multiple of {group} "
              f"(plan.images_per_ratio x plan.phases_per_image x plan.patches_per_phase)")
    spec = PlanSpec(ratios=ratios, patch=p["patch"], images=per_rank // per_image,
                    images_per_ratio=p["images_per_ratio"], phases_per_image=p["phases_per_image"],
                    patches_per_phase=p["patches_per_phase"], grid=p["grid"])
    spec.check()
    window = max_window(spec)
    C.require(window <= cfg["data"]["min_side"], "plan.patch",
              f"patches of {spec.patch} px need source windows up to {window} px, larger than "
              f"data.min_side={cfg['data']['min_side']} (the smallest image side the data is meant "
              "to have; smaller images are skipped)")
    check_encoder_config(cfg["model"], {"plan.patch": spec.patch})
    C.require(t["amp"] in ("bf16", "fp16", "none"), "train.amp", f"bf16, fp16 or none, got {t['amp']!r}")
    C.require(t["epochs"] >= 1, "train.epochs", "must be >= 1")
    C.require(t["steps_per_epoch"] is None or t["steps_per_epoch"] >= 1, "train.steps_per_epoch",
              "must be >= 1 or null")
    C.require(t["ckpt_every"] >= 1 and t["log_every"] >= 1, "train.ckpt_every", "and train.log_every must be >= 1")
    C.require(cfg["probe"]["every"] >= 0, "probe.every", "must be >= 0 (0: probe at the end only)")
    from .probe import FOLDS_RULE, valid_folds

    C.require(valid_folds(cfg["probe"]["folds"]), "probe.folds", f"{FOLDS_RULE}, got {cfg['probe']['folds']!r}")
    C.require(cfg["loss"]["temperature"] > 0, "loss.temperature", "must be positive")
    bt = cfg["loss"]["base_temperature"]
    C.require(bt is None or (isinstance(bt, (int, float)) and not isinstance(bt, bool) and bt > 0),
              "loss.base_temperature", f"a positive number or null (= loss.temperature), got {bt!r}")
    bw = cfg["loss"]["backbone_weight"]
    C.require(isinstance(bw, (int, float)) and not isinstance(bw, bool) and math.isfinite(bw) and bw >= 0,
              "loss.backbone_weight", f"a number >= 0 (0: off), got {bw!r}")
    C.require(not bw or cfg["model"]["trace_features"], "loss.backbone_weight",
              "needs model.trace_features > 0: without a trace branch the backbone is the whole encoder")
    C.require(cfg["optim"]["lr"] > 0, "optim.lr", "must be positive")
    C.require(len(cfg["optim"]["betas"]) == 2, "optim.betas", "needs two values")
    for k in ("mean", "std"):
        C.require(len(cfg["normalize"][k]) == 3, f"normalize.{k}", "needs 3 values")
    C.require(all(s > 0 for s in cfg["normalize"]["std"]), "normalize.std", "must be positive")
    C.require(cfg["device"] in ("auto", "cpu", "cuda"), "device", "auto, cpu or cuda")
    check_sharpen(cfg["augment"]["sharpen"])
    check_train_common(cfg)
    check_data_source(cfg["data"])
    if cfg["probe"]["images"]:
        C.require(os.path.exists(cfg["probe"]["images"]), "probe.images",
                  f"{cfg['probe']['images']!r} does not exist")
    return spec


SHARPEN_MAX = 4.0  # beyond this the filter's high-pass part outweighs the patch itself


def check_sharpen(value) -> None:
    """augment.sharpen: null, or [lo, hi] with -1 <= lo <= hi <= SHARPEN_MAX (a < -1 would invert the
    high frequencies instead of removing them)."""
    if value is None:
        return
    ok = (isinstance(value, (list, tuple)) and len(value) == 2
          and all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in value))
    C.require(ok, "augment.sharpen", f"null or two numbers [lo, hi], got {value!r}")
    lo, hi = (float(v) for v in value)
    C.require(-1.0 <= lo <= hi <= SHARPEN_MAX, "augment.sharpen",
              f"needs -1 <= lo <= hi <= {SHARPEN_MAX:g} (-1: a 3x3 blur, 0: unchanged), got {value!r}")


def sharpen_strengths(lo: float, hi: float, n: int, seed: int, rank: int, step: int) -> torch.Tensor:
    """The n strengths of one step, drawn from a generator of (seed, rank, step) alone: the same on CPU
    and GPU, and a resumed run draws what the uninterrupted one drew."""
    g = torch.Generator().manual_seed(((seed * 1_000_003 + rank) * 1_000_033 + step) % 2**63)
    return lo + (hi - lo) * torch.rand(n, generator=g, dtype=torch.float64)


def sharpen(x: torch.Tensor, strengths: torch.Tensor) -> torch.Tensor:
    """x + a (x - blur(x)) per patch (a = strengths[i]), blur = the 3x3 binomial filter [1 2 1]^T [1 2 1] / 16,
    mirrored at the borders, applied as two 1-D passes of shifted slices (20x faster on the CPU than a
    grouped conv). Shift-invariant: a patch shifted by q pixels gives the same patch shifted (away from
    the border). Keeps x's dtype and memory layout (NCHW or channels_last)."""
    p = F.pad(x, (1, 1, 1, 1), mode="reflect")
    rows = p[..., :-2] + 2 * p[..., 1:-1] + p[..., 2:]
    blurred = (rows[..., :-2, :] + 2 * rows[..., 1:-1, :] + rows[..., 2:, :]) * (1.0 / 16.0)
    out = torch.addcmul(x, strengths.to(device=x.device, dtype=x.dtype).view(-1, 1, 1, 1), x - blurred)
    channels_last = x.is_contiguous(memory_format=torch.channels_last) and not x.is_contiguous()
    return out.contiguous(memory_format=torch.channels_last if channels_last else torch.contiguous_format)


def check_data_source(d: Dict[str, Any]) -> None:
    if d["index"]:
        C.require(os.path.isfile(d["index"]), "data.index", f"{d['index']!r} is not a file")
        C.require(not d["train"] or os.path.isdir(d["train"]), "data.train",
                  f"with data.index set, data.train is the folder relative paths join; {d['train']!r} is not one")
        return
    C.require(bool(d["train"]), "data.train", "set a folder of real images, a file list or shards")
    if shards.is_shard_source(d["train"]):
        shards.check_source(d["train"])
        return
    C.require(os.path.exists(d["train"]), "data.train", f"{d['train']!r} does not exist")


def check_train_common(cfg: Dict[str, Any]) -> None:
    """Checks of the train keys that pre-training and fine-tuning share."""
    check_sync_bn(cfg)
    th = cfg["train"]["threads"]
    C.require(th is None or (isinstance(th, int) and not isinstance(th, bool) and th >= 1), "train.threads",
              f"a positive integer or null (torch's default), got {th!r}")


def check_sync_bn(cfg: Dict[str, Any]) -> None:
    C.require(not cfg["train"]["sync_bn"] or D.uses_cuda(cfg["device"]), "train.sync_bn",
              f"SyncBatchNorm works on CUDA devices only, and this run is on the CPU (device={cfg['device']}); "
              "set train.sync_bn=false")


def build_patches(batch: Dict[str, Any], cfg: Dict[str, Any], device: torch.device) -> torch.Tensor:
    """One copy of the packed windows to the device, then ONE rescale_gather call for all patches."""
    pixels = batch["pixels"].to(device, non_blocking=True)
    mean, std = op_normalization(cfg)
    amp = cfg["train"]["amp"]
    dtype = torch.bfloat16 if (amp == "bf16" and device.type == "cuda") else torch.float32
    return rescale_ext.rescale_gather(pixels, batch["offsets"], batch["sizes"], batch["ratios"],
                                      batch["corners"], cfg["plan"]["patch"], mean=mean, std=std,
                                      quantize=cfg["plan"]["quantize"], dtype=dtype,
                                      channels_last=cfg["train"]["channels_last"])


def augment_patches(x: torch.Tensor, cfg: Dict[str, Any], rank: int, step: int) -> torch.Tensor:
    """The config's augmentation (augment.sharpen) of a batch: pre-training's built patches, fine-tuning's
    training crops; x as it is when off. Strengths from (seed, rank, step): a resumed run draws alike."""
    band = cfg["augment"]["sharpen"]
    if not band:
        return x
    return sharpen(x, sharpen_strengths(float(band[0]), float(band[1]), x.shape[0], cfg["seed"], rank, step))


def contrastive_step(model, batch, cfg, device, info: D.DistInfo, step: int = 0):
    x = augment_patches(build_patches(batch, cfg, device), cfg, info.rank, step)
    labels = batch["labels"].to(device, non_blocking=True)
    with amp_context(cfg["train"]["amp"], device):
        out = model(x)
    return contrastive_loss(out, labels, cfg, info), x.shape[0]


def build_model(cfg: Dict[str, Any]) -> ContrastiveModel:
    """The config's encoder and projection(s): a second one of the backbone alone when loss.backbone_weight > 0."""
    return ContrastiveModel(encoder_from_config(cfg["model"]), cfg["model"]["proj_hidden"], cfg["model"]["proj_dim"],
                            backbone_head=bool(cfg["loss"]["backbone_weight"]))


def contrastive_loss(out, labels: torch.Tensor, cfg: Dict[str, Any], info: D.DistInfo) -> torch.Tensor:
    """SupCon of the model's embedding; with a backbone projection (a pair), + loss.backbone_weight x its own."""
    gather = cfg["loss"]["gather"] and info.distributed
    every_label = D.all_gather_nograd(labels) if gather else None  # once, for both embeddings
    if isinstance(out, tuple):
        z, zb = out
        return (supcon_of(z, labels, every_label, cfg, info)
                + cfg["loss"]["backbone_weight"] * supcon_of(zb, labels, every_label, cfg, info))
    return supcon_of(out, labels, every_label, cfg, info)


def supcon_of(z: torch.Tensor, labels: torch.Tensor, every_label, cfg: Dict[str, Any],
              info: D.DistInfo) -> torch.Tensor:
    """The SupCon loss of this rank's embeddings, contrasted with every rank's (whose labels are
    `every_label`) when loss.gather is on, else with its own (every_label None)."""
    t, bt = cfg["loss"]["temperature"], cfg["loss"]["base_temperature"]
    if every_label is not None:
        return supcon_loss(z, labels, t, bt, contrast=D.all_gather_with_grad(z), contrast_labels=every_label,
                           anchor_offset=info.rank * z.shape[0])
    return supcon_loss(z, labels, t, bt)


def save_checkpoint(path, model_without_ddp, optimizer, scaler, cfg, step, epoch, step_in_epoch, rng_ranks,
                    stream=None):
    ckpt.save_training(path, model_without_ddp, optimizer, scaler, cfg, "pretrain", rng_ranks=rng_ranks, step=step,
                       epoch=epoch, step_in_epoch=step_in_epoch, stream=stream)


def stream_state(state: Dict[str, Any], info: D.DistInfo) -> Dict[str, Any]:
    """Every rank's shard readers: samples consumed per unit this epoch (a collective)."""
    consumed: Dict[int, int] = {}
    for part in D.all_gather_object(state["consumed"]):
        consumed.update(part)
    return {"units": state["units"], "deal": shards.DEAL_VERSION, "consumed": consumed}


def build_feed(cfg: Dict[str, Any], spec: PlanSpec, info: D.DistInfo, run_dir: str, resume_path: str):
    """What feeds the batches: shards (an IterableDataset of whole batches) or an image list (a
    map-style dataset + the plan batch sampler). Returns (feed with .steps and .set_epoch, loader)."""
    d, t = cfg["data"], cfg["train"]
    seeding = loader_seeding(cfg["seed"], info.rank)
    if not d["index"] and shards.is_shard_source(d["train"]):
        listed = shards.shard_list(d["train"]) if info.is_main else None  # rank 0 reads the manifest / counts
        feed = shards.ShardWindows(D.broadcast_object(listed), spec, info.rank, info.world_size, cfg["seed"],
                                   d["workers"], d["max_tries"])
        if t["steps_per_epoch"]:
            C.require(t["steps_per_epoch"] <= feed.steps, "train.steps_per_epoch",
                      f"{t['steps_per_epoch']} is more than the {feed.steps} steps the shards give every rank")
            feed.steps = t["steps_per_epoch"]
        if info.is_main:
            print(f"shards: {len(feed.shards)} ({sum(x.samples for x in feed.shards)} images), {feed.units} "
                  f"readers (ranks x workers), {feed.steps} steps per epoch; "
                  f"{feed.layout.describe(feed.units, spec.images)}", flush=True)
        # fresh workers every epoch: they take the epoch and resume point from set_epoch
        loader = DataLoader(feed, batch_size=None, num_workers=d["workers"], pin_memory=info.device.type == "cuda",
                            persistent_workers=False, **seeding)
        return feed, loader
    paths = None
    if info.is_main:  # rank 0 lists (or reuses the run's saved index); the others receive it
        paths = index_for_run(d["index"] or d["train"], run_dir, os.path.isfile(resume_path),
                              root=d["train"] if d["index"] and d["train"] else None)
    dataset = WindowDataset(broadcast_index(paths, info.device), d["max_tries"], d["cache_images"])
    feed = PlanBatchSampler(len(dataset), spec, info.rank, info.world_size, cfg["seed"], t["steps_per_epoch"])
    loader = DataLoader(PlannedWindows(dataset), batch_sampler=feed, collate_fn=collate_planned,
                        num_workers=d["workers"], pin_memory=info.device.type == "cuda",
                        persistent_workers=d["workers"] > 0, **seeding)
    return feed, loader


def train_one_epoch(model, model_without_ddp, loader, optimizer, scaler, schedule, cfg, info, state,
                    log: JsonlLog, run_dir: str, steps_in_epoch: int):
    """One epoch (or what is left of it); returns averaged stats. `state` holds step/epoch counters."""
    model.train()
    t, device = cfg["train"], info.device
    total_steps = len(schedule)
    bar = progress(total=steps_in_epoch, initial=state["step_in_epoch"], disable=not info.is_main,
               desc=f"epoch {state['epoch']}", dynamic_ncols=True, leave=False)
    losses, skipped, t0, seen = [], [], time.perf_counter(), 0
    for batch in loader:
        lr = schedule[state["step"]]
        set_lr(optimizer, lr)
        loss, n = contrastive_step(model, batch, cfg, device, info, state["step"])
        mean_loss = optimizer_step(loss, model, optimizer, scaler, cfg["optim"]["grad_clip"], state["step"],
                                   f"The last good checkpoint is {os.path.join(run_dir, 'checkpoint.pt')}")
        state["step"] += 1
        state["step_in_epoch"] += 1
        losses.append(mean_loss)
        if "unit" in batch:  # shard input: where this batch's reader is in its shards
            state["consumed"][batch["unit"]] = batch["consumed"]
        skipped += batch["skipped"]
        seen += n * info.world_size
        bar.update(1)
        if state["step"] % t["log_every"] == 0 or state["step_in_epoch"] == steps_in_epoch:
            rank_losses = D.all_gather_object(float(loss.detach()))  # each rank's own anchors
            if info.is_main:
                rate = seen / (time.perf_counter() - t0)
                bar.set_postfix(loss=f"{mean_loss:.4f}", lr=f"{lr:.2e}", patches_s=f"{rate:.0f}")
                log.write({"step": state["step"], "epoch": state["epoch"], "loss": mean_loss, "lr": lr,
                           "patches_per_s": rate, "skipped": len(skipped), "rank_losses": rank_losses})
        every = cfg["probe"]["every"]
        if cfg["probe"]["images"] and every and state["step"] % every == 0 and state["step"] < total_steps:
            if info.is_main:  # the probe draws from its own seeded generators: training is unchanged
                from .probe import format_probe, run_probe

                report = run_probe(model_without_ddp.encoder, cfg, device, baseline=False, reference=False)
                log.write({"step": state["step"], "elapsed_s": time.perf_counter() - state["t_start"],
                           "probe": report})
                bar.write(f"step {state['step']}: " + format_probe(report))
            D.barrier()
        if state["step"] % t["ckpt_every"] == 0 and state["step"] < total_steps:
            rngs = ckpt.rank_rng_states()  # every rank's own RNG state, restored to that rank on resume
            stream = stream_state(state, info)
            if info.is_main:
                save_checkpoint(os.path.join(run_dir, "checkpoint.pt"), model_without_ddp, optimizer,
                                scaler, cfg, state["step"], state["epoch"], state["step_in_epoch"], rngs, stream)
            D.barrier()
        if state["step"] >= total_steps:
            break
    bar.close()
    return {"loss": float(np.mean(losses)) if losses else float("nan"), "steps": len(losses),
            "skipped": skipped}


def run(cfg: Dict[str, Any]) -> Dict[str, Any]:
    info = D.init(cfg["device"])
    spec = build_spec(cfg, info.world_size)
    run_dir = start_run(cfg, info.is_main, "checkpoint.pt", RESUME_SAME,
                        f"ratios: {', '.join(format_ratio(r) for r in spec.ratios)}; {spec.images} images x "
                        f"{spec.patches_per_image} patches per rank; {spec.num_classes} classes; largest "
                        f"window {max_window(spec)} px; world size {info.world_size} on {info.device}", DEFAULTS)
    t = cfg["train"]
    seed_everything(cfg["seed"], t["threads"], t["deterministic"])

    model = D.place_model(build_model(cfg), info, t["sync_bn"], t["channels_last"])
    model_without_ddp = model
    if info.rank:  # the weights are alike on every rank; from here on each rank draws its own stream
        torch.manual_seed(cfg["seed"] + info.rank)
        np.random.seed(cfg["seed"] + info.rank)
    o = cfg["optim"]
    optimizer = torch.optim.Adam(model.parameters(), lr=o["lr"], betas=tuple(o["betas"]),
                                 weight_decay=o["weight_decay"])
    scaler = torch.amp.GradScaler(info.device.type, enabled=t["amp"] == "fp16")

    resume_path = os.path.join(run_dir, "checkpoint.pt")
    sampler, loader = build_feed(cfg, spec, info, run_dir, resume_path)
    total_steps = t["epochs"] * sampler.steps
    if t["max_steps"]:
        total_steps = min(total_steps, t["max_steps"])
    schedule = cosine_schedule(o["lr"], total_steps, o["warmup_steps"], o["min_lr"])

    units = getattr(sampler, "units", None)
    state = {"step": 0, "epoch": 0, "step_in_epoch": 0, "t_start": time.perf_counter(), "consumed": {},
             "units": units}
    log = JsonlLog(os.path.join(run_dir, "log.jsonl"))
    saved = ckpt.resume_everywhere(resume_path, model_without_ddp, optimizer, scaler)
    if saved is not None:
        state.update(step=saved["step"], epoch=saved["epoch"], step_in_epoch=saved["step_in_epoch"])
        stream = saved.get("stream") or {}
        if state["step_in_epoch"] >= sampler.steps:
            state["epoch"] += 1
            state["step_in_epoch"] = 0
        elif units is not None and stream.get("units") == units and stream.get("deal") == shards.DEAL_VERSION:
            state["consumed"] = {int(k): int(v) for k, v in stream["consumed"].items()}
        elif units is not None and info.is_main:
            why = (f"the checkpoint's shard readers ({stream.get('units')}) differ from this run's ({units} = ranks "
                   f"x data.workers)" if stream.get("units") != units else
                   "the checkpoint's shards were dealt to readers by an older version of the deal")
            print(f"warning: {why}: the rest of epoch {state['epoch']} is dealt anew, so it "
                  "does not see the same images an uninterrupted run would", flush=True)
        if info.is_main:
            log.truncate_after(state["step"])
            print(f"resumed from {resume_path} at step {state['step']} (epoch {state['epoch']})",
                  flush=True)
    if info.distributed:
        model = nn.parallel.DistributedDataParallel(
            model, device_ids=[info.local_rank] if info.device.type == "cuda" else None)
    if t["compile"]:
        model = torch.compile(model)

    result = {"steps": state["step"], "loss": float("nan")}
    while state["step"] < total_steps and state["epoch"] < t["epochs"]:
        if units is None:
            sampler.set_epoch(state["epoch"], state["step_in_epoch"])
        else:
            sampler.set_epoch(state["epoch"], state["step_in_epoch"], state["consumed"])
        stats = train_one_epoch(model, model_without_ddp, loader, optimizer, scaler, schedule, cfg, info,
                                state, log, run_dir, sampler.steps)
        skipped = [s for part in D.all_gather_object(stats["skipped"]) for s in part]
        summary = summarize_skipped(skipped)
        epoch_done = state["step_in_epoch"] >= sampler.steps
        rngs = ckpt.rank_rng_states()
        stream = stream_state(state, info)
        if info.is_main:
            log.write({"step": state["step"], "epoch": state["epoch"], "epoch_loss": stats["loss"],
                       "skipped_images": summary})
            msg = f"epoch {state['epoch']}: loss {stats['loss']:.4f}, step {state['step']}/{total_steps}"
            if summary["count"]:
                msg += (f"; skipped {summary['count']} image reads ({summary['files']} files): "
                        f"{summary['reasons']}, e.g. {summary['examples'][:3]}")
            print(msg, flush=True)
            save_checkpoint(resume_path, model_without_ddp, optimizer, scaler, cfg, state["step"],
                            state["epoch"], state["step_in_epoch"], rngs, stream)
            if t["keep_every"] and epoch_done and (state["epoch"] + 1) % t["keep_every"] == 0:
                save_checkpoint(os.path.join(run_dir, f"checkpoint_{state['epoch']:04d}.pt"),
                                model_without_ddp, optimizer, scaler, cfg, state["step"], state["epoch"],
                                state["step_in_epoch"], rngs, stream)
        D.barrier()
        result = {"steps": state["step"], "loss": stats["loss"], "skipped": summary}
        if epoch_done:
            state["epoch"] += 1
            state["step_in_epoch"] = 0
            state["consumed"] = {}
    checksums = D.weight_checksums(model_without_ddp)
    if info.is_main:
        log.write({"step": state["step"], "final": True, "rank_checksums": checksums,
                   "ranks_in_sync": len(set(checksums)) == 1})
    if info.is_main and cfg["probe"]["images"]:
        from .probe import format_probe, run_probe

        report = run_probe(model_without_ddp.encoder, cfg, info.device)
        result["probe"] = report
        log.write({"step": state["step"], "elapsed_s": time.perf_counter() - state["t_start"], "probe": report})
        print(format_probe(report), flush=True)
    D.barrier()
    return result
