"""Training checkpoints that load with torch.load(weights_only=True), written atomically (fitgap.files)."""
from __future__ import annotations

import copy
import os
import random
from typing import Any, Dict, List, Optional, Sequence

import numpy as np
import torch
from .errors import CheckpointError, ConfigError, FitgapError, MissingInput
from .files import atomic_save  # noqa: F401 - callers write checkpoints as ckpt.atomic_save


def rng_state() -> Dict[str, Any]:
    """Python, numpy and torch RNG states in types that weights_only loading accepts."""
    np_state = np.random.get_state()
    state = {
        "python": random.getstate(),
        "numpy": {"name": np_state[0], "keys": torch.from_numpy(np_state[1].astype(np.int64)),
                  "pos": int(np_state[2]), "has_gauss": int(np_state[3]), "cached": float(np_state[4])},
        "torch": torch.get_rng_state(),
    }
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: Dict[str, Any]) -> None:
    py = state["python"]
    random.setstate((py[0], tuple(py[1]), py[2]))
    n = state["numpy"]
    np.random.set_state((n["name"], n["keys"].numpy().astype(np.uint32), n["pos"], n["has_gauss"],
                         n["cached"]))
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def load(path: str, map_location: Optional[str] = "cpu", resuming: bool = False) -> Dict[str, Any]:
    """torch.load(weights_only=True) with one-line errors. `resuming`: the caller is a training run about
    to continue from `path` (the advice then is about resuming); every other caller only reads it."""
    if not os.path.isfile(path):
        raise MissingInput(f"checkpoint {path!r} does not exist")
    try:
        return torch.load(path, map_location=map_location, weights_only=True)
    except Exception as exc:  # a truncated or foreign file: say what to do, in one line
        reason = (str(exc).strip().splitlines() or [type(exc).__name__])[0]
        raise CheckpointError(f"cannot read checkpoint {path!r} ({reason}); {_what_to_do(path, resuming)}") from None


def _what_to_do(path: str, resuming: bool) -> str:
    folder = os.path.dirname(os.path.abspath(path))
    copies = sorted(f for f in os.listdir(folder) if f.endswith(".pt") and f != os.path.basename(path)
                    and not f.startswith(".tmp-")) if os.path.isdir(folder) else []
    if not resuming:
        return ("it is truncated or not a fitgap checkpoint: copy it again from where it was written"
                + (f", or read another one of {folder}: {', '.join(copies)}" if copies else ""))
    where = (f"other checkpoints in {folder}: {', '.join(copies)} (copy one over {os.path.basename(path)} "
             "to resume from it)" if copies else f"no other checkpoint in {folder}")
    return f"{where}; or start afresh with another name= (or remove {folder})"


def save_training(path: str, model, optimizer, scaler, cfg: Dict[str, Any], kind: str,
                  rng_ranks: Optional[List[Dict[str, Any]]] = None, **counters) -> None:
    """Atomic checkpoint of a training run: weights, optimiser, scaler, RNG states (this process's as
    "rng", every rank's as "rng_ranks" when given: gather them with rank_rng_states() on every rank
    first), the config as a plain dict, what kind of run wrote it and its counters (step, epoch, ...)."""
    atomic_save({"model": model.state_dict(), "optimizer": optimizer.state_dict(),
                 "scaler": scaler.state_dict(), "rng": rng_state(), "rng_ranks": rng_ranks or [rng_state()],
                 "config": cfg, "kind": kind, **counters}, path)


def rank_rng_states() -> List[Dict[str, Any]]:
    """Every rank's RNG state, in rank order (a collective: call it on every rank)."""
    from . import distributed as D

    return D.all_gather_object(rng_state())


def _changed(old: Dict[str, Any], new: Dict[str, Any], prefix: str = "") -> List[str]:
    keys = []
    for k in sorted(set(old) | set(new)):
        a, b = old.get(k), new.get(k)
        if isinstance(a, dict) and isinstance(b, dict):
            keys += _changed(a, b, f"{prefix}{k}.")
        elif a != b:
            keys.append(f"{prefix}{k}")
    return keys


def with_defaults(old: Dict[str, Any], defaults: Dict[str, Any]) -> Dict[str, Any]:
    """`old` with every key it lacks taken from `defaults` (recursively): a checkpoint written before a
    config key existed behaved as that key's default."""
    out = dict(old)
    for k, v in defaults.items():
        if k not in out:
            out[k] = copy.deepcopy(v)
        elif isinstance(out[k], dict) and isinstance(v, dict):
            out[k] = with_defaults(out[k], v)
    return out


def check_resumable_everywhere(path: str, cfg: Dict[str, Any], same: Sequence[str],
                               defaults: Optional[Dict[str, Any]] = None) -> None:
    """check_resumable decided by rank 0 alone (its view of the run folder) and raised on every rank,
    so that ranks never disagree about whether a run may start."""
    from . import distributed as D

    error = None
    if D.get_rank() == 0:
        try:
            check_resumable(path, cfg, same, defaults)
        except FitgapError as exc:
            error = exc
    error = D.broadcast_object(error)
    if error is not None:
        raise error


def check_resumable(path: str, cfg: Dict[str, Any], same: Sequence[str],
                    defaults: Optional[Dict[str, Any]] = None) -> None:
    """Before a run writes anything: if `path` exists, the config sections named in `same` must equal
    those it was written with (a run whose model or task changed cannot continue from it). Keys the
    checkpoint's config lacks (added to the project later) count as their `defaults` value."""
    if not os.path.exists(path):
        return
    old = load(path, resuming=True).get("config", {})
    if defaults:
        old, cfg = with_defaults(old, defaults), with_defaults(cfg, defaults)
    changed = _changed({k: old.get(k) for k in same}, {k: cfg.get(k) for k in same})
    if changed:
        raise ConfigError(f"{', '.join(changed)}: differ from {path}, which this run would resume; "
                          f"choose another name= or remove {os.path.dirname(path)} to start afresh")


def restore_training(path: str, model, optimizer, scaler, rank: int = 0) -> Dict[str, Any]:
    """Load what save_training wrote into model/optimizer/scaler and this rank's RNG state (rank 0's
    when the checkpoint holds fewer ranks); returns the dict. (Runs call check_resumable on the same
    path before they write anything.)"""
    saved = load(path, resuming=True)
    model.load_state_dict(saved["model"])
    groups = len(saved["optimizer"].get("param_groups", []))
    if groups != len(optimizer.param_groups):
        raise CheckpointError(f"{path}: its optimizer has {groups} parameter group(s), this run's has "
                              f"{len(optimizer.param_groups)} (written by another version of the training "
                              "script): continue it with that version, or start a new run folder")
    optimizer.load_state_dict(saved["optimizer"])
    scaler.load_state_dict(saved["scaler"])
    ranks = saved.get("rng_ranks") or [saved["rng"]]
    set_rng_state(ranks[rank] if rank < len(ranks) else saved["rng"])
    return saved


def resume_everywhere(path: str, model, optimizer, scaler) -> Optional[Dict[str, Any]]:
    """Resume decided once: rank 0 looks for `path` (every rank passes the same path of its own run
    folder) and broadcasts whether to resume; every rank then restores its copy (and its own RNG
    state), and the steps they read are compared. A rank that cannot read it, or reads another step,
    stops the whole group with a message naming the rank and the path, never a hang. Returns the
    checkpoint dict, or None for a fresh start."""
    from . import distributed as D

    rank = D.get_rank()
    if not D.broadcast_object(rank == 0 and os.path.exists(path)):
        return None
    saved, error = None, ""
    try:
        saved = restore_training(path, model, optimizer, scaler, rank)
    except Exception as exc:  # noqa: BLE001 - reported to every rank below
        error = f"rank {rank} cannot read {path}, which rank 0 resumes from: {exc}"
    reports = D.all_gather_object((error, None if saved is None else saved.get("step")))
    errors = [e for e, _ in reports if e]
    step0 = reports[0][1]
    errors += [f"rank {r} read step {s} from {path}, rank 0 step {step0}" for r, (e, s) in enumerate(reports)
               if not e and not reports[0][0] and s != step0]
    if errors:
        raise CheckpointError("; ".join(errors) + " (every rank needs the run folder: a shared file system, or a "
                              "copy of the checkpoint on every node)")
    return saved
