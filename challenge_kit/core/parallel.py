"""Scale-out over ``torchrun``: joining the process group, and sharding a batch across its ranks.

Expert training only needs rank and world size (experts are independent). Distillation shards each inner
step's synthetic mini-batch: every rank holds the same parameters, computes its shard's share of the
step's gradient, and one all-reduce makes the full-batch gradient on every rank. A single process is a
world of one, where every collective is the identity: one code path for both.
"""

from __future__ import annotations

import datetime
import os
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Generic, TypeVar

import torch
import torch.distributed as dist


@dataclass(frozen=True)
class Shard:
    """This process's place in the job: rank ``rank`` of ``world``."""

    rank: int = 0
    world: int = 1

    def part(self, n: int) -> slice:
        """Contiguous, near-equal chunks of ``n`` items (the first ``n % world`` ranks get one more)."""
        size, extra = divmod(n, self.world)
        start = self.rank * size + min(self.rank, extra)
        return slice(start, start + size + (self.rank < extra))

    def sum(self, tensor: torch.Tensor) -> torch.Tensor:
        """Sum over ranks, in place (no autograd); the identity in a single process."""
        if self.world > 1:
            dist.all_reduce(tensor)
        return tensor

    def gather(self, obj) -> list:
        """Every rank's ``obj``, in rank order, on every rank."""
        if self.world == 1:
            return [obj]
        out = [None] * self.world
        dist.all_gather_object(out, obj)
        return out

    def barrier(self) -> None:
        if self.world > 1:
            dist.barrier()

    @property
    def leader(self) -> bool:
        """Rank 0 writes files and prints."""
        return self.rank == 0


LOCAL = Shard()
T = TypeVar("T")


@dataclass(frozen=True)
class RankZero(Generic[T]):
    """What a job run on every rank gives back: rank 0's result (the other ranks of a torchrun job do not make
    it, and ``held`` says so). Callers show it with ``report`` or read ``value``, never test for None."""

    held: bool
    _value: T | None = None

    @classmethod
    def make(cls, shard: Shard, work: Callable[[], T]) -> RankZero[T]:
        """``work``'s result on rank 0; the other ranks skip it."""
        return cls(True, work()) if shard.leader else cls(False)

    @property
    def value(self) -> T:
        if not self.held:
            raise RuntimeError("only rank 0 holds this result")
        return self._value

    def report(self, show: Callable[[T], object]) -> None:
        """``show`` the result where it is held (rank 0, or the only process)."""
        if self.held:
            show(self._value)


class _Replicated(torch.autograd.Function):
    """Enter a rank's share of the work with a replicated tensor: forward identity, backward sum over ranks
    (each rank's share adds its own part of the gradient of the replicated value)."""

    @staticmethod
    def forward(ctx, tensor):
        return tensor.view_as(tensor)

    @staticmethod
    def backward(ctx, grad):
        grad = grad.clone()
        dist.all_reduce(grad)
        return grad


class _Summed(torch.autograd.Function):
    """Leave a rank's share of the work: forward sum over ranks (a replicated result), backward identity."""

    @staticmethod
    def forward(ctx, tensor):
        out = tensor.clone()
        dist.all_reduce(out)
        return out

    @staticmethod
    def backward(ctx, grad):
        return grad


def replicated(tensor: torch.Tensor, shard: Shard) -> torch.Tensor:
    """Mark where a replicated tensor enters per-rank work, so autograd sums its gradient over ranks."""
    return _Replicated.apply(tensor) if shard.world > 1 else tensor


def summed(tensor: torch.Tensor, shard: Shard) -> torch.Tensor:
    """Sum per-rank contributions into a replicated tensor, differentiably."""
    return _Summed.apply(tensor) if shard.world > 1 else tensor


def rank_indices(num: int, rank: int, world: int) -> list[int]:
    """Rank ``r`` of ``K`` takes items r, r + K, r + 2K, ... (experts, scorer rounds)."""
    return list(range(rank, num, world))


def launched() -> bool:
    """Whether this process was started by torchrun (or another env:// launcher)."""
    return "RANK" in os.environ and "WORLD_SIZE" in os.environ


@contextmanager
def process_group(device: str | torch.device, timeout_days: float = 7) -> Iterator[tuple[Shard, torch.device]]:
    """Join the torchrun job (env://) with NCCL on GPUs, gloo on CPUs; yields (shard, this rank's device).

    Outside torchrun it yields a world of one and joins nothing. The long timeout lets ranks that finish
    hours apart (experts) meet at the final barrier.
    """
    device = torch.device(device)
    if not launched():
        yield LOCAL, device
        return
    if device.type == "cuda":
        device = torch.device("cuda", int(os.environ.get("LOCAL_RANK", 0)))
        torch.cuda.set_device(device)
    dist.init_process_group("nccl" if device.type == "cuda" else "gloo",
                            timeout=datetime.timedelta(days=timeout_days))
    try:
        yield Shard(dist.get_rank(), dist.get_world_size()), device
        dist.barrier()
    finally:
        dist.destroy_process_group()
