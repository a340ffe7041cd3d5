"""Running one batch command as several processes (``torchrun``): rank, sharding, coordination.

torchrun (``python -m torch.distributed.run``) starts one process per GPU (or per CPU slot) and
tells each who it is through environment variables: RANK (0..WORLD_SIZE-1 over all nodes),
WORLD_SIZE, LOCAL_RANK (the index on this node, used to pick the GPU), MASTER_ADDR/MASTER_PORT
(where rank 0 listens). Without them the process is a world of one and nothing here starts a
process group.

The batch commands need little from the process group: a barrier before rank 0 merges the
shards, and rank 0's answer to "may this output folder be used" broadcast to the others. Work is
split by :func:`shard` (rank r takes items r, r + W, r + 2W, ...); the results never depend on
the split because every image's randomness is seeded from (seed, image, stage, setting) alone
(:mod:`fvit_core.protocol.seeds`).

Backend: ``gloo`` by default, for CPU and GPU runs alike. It carries the barrier and a few small
Python objects over TCP, between nodes too, and it has no collective-timeout watchdog (NCCL's
would end a run whose ranks finish their shards hours apart). ``nccl`` can be asked for.
"""

from __future__ import annotations

import datetime
import os
from dataclasses import dataclass
from typing import Any, Mapping, Sequence, TypeVar

import torch

from fvit_core.errors import SettingError

T = TypeVar("T")

BACKENDS: tuple[str, ...] = ("gloo", "nccl")
# Ranks wait for each other only at the end (before the merge); a shard may take much longer
# than another (resumed runs, slower nodes), so the wait allowed is long.
DEFAULT_TIMEOUT = datetime.timedelta(hours=72)


@dataclass(frozen=True)
class DistContext:
    """Who this process is in the run. A single process is rank 0 of a world of 1."""

    rank: int = 0
    world_size: int = 1
    local_rank: int = 0
    initialised: bool = False

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def is_distributed(self) -> bool:
        return self.world_size > 1


def _env_int(env: Mapping[str, str], name: str, default: int) -> int:
    text = env.get(name)
    if text is None or text == "":
        return default
    try:
        return int(text)
    except ValueError as exc:
        raise SettingError(f"environment variable {name}={text!r} must be a whole number (set by torchrun)") from exc


def context_from_env(env: Mapping[str, str] | None = None) -> DistContext:
    """Rank, world size and local rank from torchrun's environment (a world of 1 without it)."""
    env = os.environ if env is None else env
    world = _env_int(env, "WORLD_SIZE", 1)
    rank = _env_int(env, "RANK", 0)
    local = _env_int(env, "LOCAL_RANK", rank if world > 1 else 0)
    if world < 1 or not 0 <= rank < world or local < 0:
        raise SettingError(f"inconsistent torchrun environment: RANK={rank}, WORLD_SIZE={world}, LOCAL_RANK={local}")
    return DistContext(rank=rank, world_size=world, local_rank=local)


def init(backend: str = "gloo", *, timeout: datetime.timedelta = DEFAULT_TIMEOUT,
         env: Mapping[str, str] | None = None) -> DistContext:
    """Join the process group when started by torchrun with WORLD_SIZE > 1; else a world of 1.

    Idempotent: a process group that already exists is reused.
    """
    ctx = context_from_env(env)
    if not ctx.is_distributed:
        return ctx
    if backend not in BACKENDS:
        raise SettingError(f"unknown distributed backend {backend!r}; choose one of {', '.join(BACKENDS)}")
    import torch.distributed as dist

    if not dist.is_available():
        raise SettingError("this PyTorch build has no torch.distributed; run a single process instead")
    if backend == "nccl":
        if not torch.cuda.is_available():
            raise SettingError("the nccl backend needs CUDA GPUs; use --dist-backend gloo on CPU machines")
        torch.cuda.set_device(ctx.local_rank)
    if not dist.is_initialized():
        dist.init_process_group(backend=backend, timeout=timeout)
    return DistContext(rank=dist.get_rank(), world_size=dist.get_world_size(), local_rank=ctx.local_rank,
                       initialised=True)


def close(ctx: DistContext) -> None:
    """Leave the process group (no-op for a single process)."""
    if ctx.initialised:
        import torch.distributed as dist

        if dist.is_initialized():
            dist.destroy_process_group()


def device_for(ctx: DistContext, device: str) -> str:
    """The device this rank uses: ``cuda`` becomes ``cuda:LOCAL_RANK``; anything else as given.

    An explicit ``cuda:N`` under torchrun with several local ranks would put every rank on one
    GPU; it is refused with a message.
    """
    if device == "cuda":
        return f"cuda:{ctx.local_rank}" if ctx.is_distributed else "cuda"
    if device.startswith("cuda:") and ctx.is_distributed:
        raise SettingError(f"--device {device} under torchrun puts every rank on one GPU; pass --device cuda "
                         "(each rank then takes the GPU of its LOCAL_RANK)")
    return device


def shard(items: Sequence[T], ctx: DistContext) -> list[T]:
    """This rank's share: items r, r + W, r + 2W, ... (balanced when costs are alike)."""
    return list(items[ctx.rank::ctx.world_size])


def barrier(ctx: DistContext) -> None:
    """Wait until every rank arrives (no-op for a single process)."""
    if ctx.initialised:
        import torch.distributed as dist

        dist.barrier()


def broadcast(ctx: DistContext, value: Any) -> Any:
    """Rank 0's ``value`` (any picklable object) on every rank."""
    if not ctx.initialised:
        return value
    import torch.distributed as dist

    box = [value if ctx.is_main else None]
    dist.broadcast_object_list(box, src=0)
    return box[0]
