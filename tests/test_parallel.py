"""Sharding over ranks: a 2-process gloo job computes the same matching gradients as one process."""

import socket

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from test_matching import _problem

from challenge_kit.matching import match
from challenge_kit.parallel import Shard


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _worker(rank, world, port, out, batch_syn, soft, mode):
    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=world)
    try:
        torch.set_num_threads(1)
        res = match(*_problem(batch_syn=batch_syn, soft=soft), mode=mode, shard=Shard(rank, world))
        torch.save({"loss": res.loss, "x": res.grad_images, "lr": res.grad_lr, "y": res.grad_labels},
                   f"{out}.{rank}")
    finally:
        dist.destroy_process_group()


def test_shards_are_contiguous_near_equal_and_cover_the_batch():
    parts = [Shard(r, 3).part(7) for r in range(3)]
    assert [(p.start, p.stop) for p in parts] == [(0, 3), (3, 5), (5, 7)]
    assert [Shard(r, 3).part(1).stop - Shard(r, 3).part(1).start for r in range(3)] == [1, 0, 0]


@pytest.mark.parametrize("mode,batch_syn,soft", [("exact", 5, True), ("unrolled", 5, True), ("exact", 1, False)])
def test_two_gloo_ranks_give_the_single_process_gradients(tmp_path, mode, batch_syn, soft):
    """Uneven shards (5 images over 2 ranks: 3 + 2), and more ranks than images (batch 1)."""
    out = str(tmp_path / "res")
    mp.spawn(_worker, args=(2, free_port(), out, batch_syn, soft, mode), nprocs=2, join=True)
    single = match(*_problem(batch_syn=batch_syn, soft=soft), mode=mode)
    for rank in range(2):
        got = torch.load(f"{out}.{rank}", weights_only=True)
        assert got["loss"].item() == pytest.approx(single.loss.item(), rel=1e-10)
        for key, ref in (("x", single.grad_images), ("lr", single.grad_lr), ("y", single.grad_labels)):
            if ref is None:
                assert got[key] is None
                continue
            assert ((got[key] - ref).norm() / ref.norm()).item() < 1e-10, (rank, key)
