"""torchrun helpers: process group set-up, rank-0 printing, gathers, metric averaging."""
from __future__ import annotations

import os
from dataclasses import dataclass
from typing import List

import torch
import torch.distributed as dist
from .errors import InputError


@dataclass
class DistInfo:
    rank: int = 0
    world_size: int = 1
    local_rank: int = 0
    device: torch.device = torch.device("cpu")

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def distributed(self) -> bool:
        return self.world_size > 1


def uses_cuda(device: str) -> bool:
    """Whether a run with this `device` setting runs on CUDA devices."""
    return torch.cuda.is_available() if device == "auto" else device == "cuda"


def init(device: str = "auto") -> DistInfo:
    """Set up from torchrun's environment (NCCL on GPUs, gloo on CPUs); a plain `python` run is a
    world of one. `device`: auto | cpu | cuda."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    rank = int(os.environ.get("RANK", "0"))
    local = int(os.environ.get("LOCAL_RANK", "0"))
    use_cuda = uses_cuda(device)
    if use_cuda and not torch.cuda.is_available():
        raise InputError("device=cuda was asked for but no CUDA device is available")
    if use_cuda:
        torch.cuda.set_device(local)
        dev = torch.device("cuda", local)
    else:
        dev = torch.device("cpu")
    if world > 1 and not dist.is_initialized():
        dist.init_process_group(backend="nccl" if use_cuda else "gloo")
    return DistInfo(rank, world, local, dev)


def get_rank() -> int:
    return dist.get_rank() if dist.is_available() and dist.is_initialized() else 0


def cleanup() -> None:
    if dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()


def barrier() -> None:
    if dist.is_available() and dist.is_initialized():
        dist.barrier()


def all_gather_with_grad(x: torch.Tensor) -> torch.Tensor:
    """Concatenate `x` from every rank; the backward sums the gradients over ranks."""
    if not (dist.is_available() and dist.is_initialized()) or dist.get_world_size() == 1:
        return x
    from torch.distributed.nn.functional import all_gather

    return torch.cat(all_gather(x), dim=0)


def all_gather_nograd(x: torch.Tensor) -> torch.Tensor:
    if not (dist.is_available() and dist.is_initialized()) or dist.get_world_size() == 1:
        return x
    out: List[torch.Tensor] = [torch.empty_like(x) for _ in range(dist.get_world_size())]
    dist.all_gather(out, x.contiguous())
    return torch.cat(out, dim=0)


def all_gather_object(obj):
    if not (dist.is_available() and dist.is_initialized()) or dist.get_world_size() == 1:
        return [obj]
    out = [None] * dist.get_world_size()
    dist.all_gather_object(out, obj)
    return out


def broadcast_object(obj, src: int = 0):
    """`obj` as rank `src` holds it, on every rank (a world of one returns it unchanged)."""
    if not (dist.is_available() and dist.is_initialized()) or dist.get_world_size() == 1:
        return obj
    box = [obj]
    dist.broadcast_object_list(box, src=src)
    return box[0]


def decided_by_rank0(fn, *args, **kwargs):
    """fn(*args) computed on rank 0 alone and broadcast: every rank gets rank 0's result, or raises the
    project error rank 0 met (never a hang, never ranks that disagree). For what every rank must see the
    same of: a benchmark's listing, a checkpoint choice."""
    from .errors import FitgapError

    result, error = None, None
    if get_rank() == 0:
        try:
            result = fn(*args, **kwargs)
        except FitgapError as exc:
            error = exc
    result, error = broadcast_object((result, error))
    if error is not None:
        raise error
    return result


def all_reduce_mean(x: torch.Tensor) -> torch.Tensor:
    if not (dist.is_available() and dist.is_initialized()) or dist.get_world_size() == 1:
        return x
    x = x.clone()
    dist.all_reduce(x)
    return x / dist.get_world_size()


def all_reduce_sum(x: torch.Tensor) -> torch.Tensor:
    if not (dist.is_available() and dist.is_initialized()) or dist.get_world_size() == 1:
        return x
    x = x.clone()
    dist.all_reduce(x)
    return x


def weight_checksums(model: torch.nn.Module) -> List[float]:
    """One float64 fingerprint of the weights per rank (equal on every rank when DDP is in sync)."""
    total = torch.zeros((), dtype=torch.float64)
    for i, p in enumerate(model.parameters()):
        total += (p.detach().double().cpu() * (1.0 + 1e-3 * i)).sum()
    return [float(v) for v in all_gather_object(float(total))]


def place_model(model: torch.nn.Module, info: DistInfo, sync_bn: bool = False,
                channels_last: bool = False) -> torch.nn.Module:
    """SyncBN (only when distributed), move to the rank's device, channels_last memory format."""
    if sync_bn and info.distributed:
        model = torch.nn.SyncBatchNorm.convert_sync_batchnorm(model)
    model = model.to(info.device)
    if channels_last:
        model = model.to(memory_format=torch.channels_last)
    return model
