"""Sharding over ranks: a 2-process gloo job computes the same matching gradients as one process."""

import faulthandler
import io
import json
import os
import socket
from contextlib import contextmanager, redirect_stdout
from pathlib import Path

import pytest
import torch
import torch.multiprocessing as mp
from fakes import TINY, coloured, write_folder
from helpers import SPEC, _problem, _real, _recipe, _run

from challenge_kit.core.parallel import RankZero, Shard, process_group
from challenge_kit.experts.training import train_experts
from challenge_kit.matching import match
from challenge_kit.recipes import ExpertConfig
from challenge_kit.runs import read_history
from evaluator import evaluate, scorer
from evaluator.evaluate import main

EVALUATOR_FLAGS = ["--epochs", "1", "--rounds", "3", "--seed", "5", "--device", "cpu"]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@contextmanager
def _joined(rank: int, world: int, port: int, logs: Path):
    """Join as a torchrun rank would (env://), through the kit's own process_group and its teardown.

    A native crash of the rank (gloo aborts in C++) leaves every thread's Python stack in ``logs``; the
    handler stays on for the rank's whole life, its exit included (an empty file: it died after Python).
    """
    faulthandler.enable(open(logs / f"crash.{rank}", "w"), all_threads=True)
    os.environ.update(RANK=str(rank), LOCAL_RANK=str(rank), WORLD_SIZE=str(world),
                      MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    torch.set_num_threads(1)
    with process_group("cpu") as (shard, _):
        yield shard


def _spawn(worker, logs: Path, *args) -> None:
    """Run ``worker`` on 2 ranks; a rank that dies by a signal fails the test with the stacks it left."""
    try:
        mp.spawn(worker, args=(2, free_port(), logs, *args), nprocs=2, join=True)
    except mp.ProcessExitedException as e:
        stacks = "\n".join(f"{p.name}:\n{p.read_text()}" for p in sorted(logs.glob("crash.*")))
        raise AssertionError(f"{e}\n{stacks}") from e


def _worker(rank, world, port, logs, batch_syn, soft, mode):
    with _joined(rank, world, port, logs) as shard:
        res = match(*_problem(batch_syn=batch_syn, soft=soft), mode=mode, shard=shard)
        torch.save({"loss": res.loss, "x": res.grad_images, "lr": res.grad_lr, "y": res.grad_labels},
                   logs / f"res.{rank}")


def test_shards_are_contiguous_near_equal_and_cover_the_batch():
    parts = [Shard(r, 3).part(7) for r in range(3)]
    assert [(p.start, p.stop) for p in parts] == [(0, 3), (3, 5), (5, 7)]
    assert [Shard(r, 3).part(1).stop - Shard(r, 3).part(1).start for r in range(3)] == [1, 0, 0]


@pytest.mark.parametrize("mode,batch_syn,soft", [("exact", 5, True), ("unrolled", 5, True), ("exact", 1, False),
                                                ("unrolled", 1, False)])
def test_two_gloo_ranks_give_the_single_process_gradients(tmp_path, mode, batch_syn, soft):
    """Uneven shards (5 images over 2 ranks: 3 + 2), and more ranks than images (batch 1: rank 1 sees none), in
    both gradient modes."""
    _spawn(_worker, tmp_path, batch_syn, soft, mode)
    single = match(*_problem(batch_syn=batch_syn, soft=soft), mode=mode)
    for rank in range(2):
        got = torch.load(tmp_path / f"res.{rank}", weights_only=True)
        assert got["loss"].item() == pytest.approx(single.loss.item(), rel=1e-10)
        for key, ref in (("x", single.grad_images), ("lr", single.grad_lr), ("y", single.grad_labels)):
            if ref is None:
                assert got[key] is None
                continue
            assert ((got[key] - ref).norm() / ref.norm()).item() < 1e-10, (rank, key)


def _distill_worker(rank, world, port, logs, store, out, mode):
    trained = []  # the selection rounds' seeds this rank trained
    train_rounds = scorer.train_rounds
    scorer.train_rounds = lambda images, labels, seeds, **kw: trained.extend(seeds) or train_rounds(images, labels,
                                                                                                    seeds, **kw)
    with _joined(rank, world, port, logs) as shard:
        _run(_recipe(grad=mode, batch_syn=5, every=2, iterations=4), store, out, shard=shard)
    (logs / f"trained.{rank}.json").write_text(json.dumps(trained))


@pytest.mark.parametrize("mode", ["exact", "unrolled"])
def test_two_gloo_ranks_distill_like_one_process(tmp_path, mode):
    """Uneven shards (5 images per step over 2 ranks), selection rounds split over ranks, rank 0 writes."""
    experts = tmp_path / "experts"
    x, y = _real()
    tx, ty = _real(4, seed=1)
    train_experts(x, y, tx, ty, SPEC, ExpertConfig(num_experts=2, epochs=3, batch_size=16), experts)
    _spawn(_distill_worker, tmp_path, experts, tmp_path / "two", mode)
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # the ranks' thread count: the same reduction order
    try:
        one = _run(_recipe(grad=mode, batch_syn=5, every=2, iterations=4), experts, tmp_path / "one")
    finally:
        torch.set_num_threads(threads)
    two = torch.load(tmp_path / "two" / "checkpoint.pt", weights_only=True)["state"]
    rel = lambda a, b: ((a - b).norm() / b.norm()).item()  # noqa: E731
    assert rel(two["images"], one.images) < 1e-5 and rel(two["lr"], one.lr) < 1e-5
    losses = [(h["loss"], g["loss"]) for h, g in zip(read_history(tmp_path / "two"), read_history(tmp_path / "one"),
                                                     strict=True)]
    assert len(losses) == 4 and all(abs(a - b) <= 1e-5 * abs(b) for a, b in losses)
    assert [c["iteration"] for c in two["candidates"]] == [0, 2, 4]
    assert [c["seeds"] for c in two["candidates"]] == [c["seeds"] for c in one.candidates]
    mine, theirs = (json.loads((tmp_path / f"trained.{rank}.json").read_text()) for rank in range(2))
    assert mine and theirs and not set(mine) & set(theirs)  # each selection round trained on one rank only
    assert two["decision"]["export"] == one.decision["export"]


def _evaluator_worker(rank, world, port, logs, folder, out):
    """``python -m evaluator`` as a torchrun rank runs it: the environment only (it joins the job itself)."""
    faulthandler.enable(open(logs / f"crash.{rank}", "w"), all_threads=True)
    os.environ.update(RANK=str(rank), LOCAL_RANK=str(rank), WORLD_SIZE=str(world),
                      MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    torch.set_num_threads(1)
    trained, wrote = [], []  # the round seeds this rank trained, and the folders it wrote scores into
    train_rounds, write_scores = scorer.train_rounds, evaluate.write_scores
    scorer.train_rounds = lambda images, labels, seeds, **kw: trained.extend(seeds) or train_rounds(images, labels,
                                                                                                    seeds, **kw)
    evaluate.write_scores = lambda summary, where: wrote.append(str(where)) or write_scores(summary, where)
    with open(logs / f"stdout.{rank}", "w") as printed, redirect_stdout(printed):
        assert main([str(folder), str(out), *EVALUATOR_FLAGS], specs=[TINY]) == 0
    (logs / f"work.{rank}.json").write_text(json.dumps({"trained": trained, "wrote": wrote}))


def test_the_evaluator_spreads_rounds_over_ranks_and_rank_0_alone_prints_and_writes(tmp_path):
    images, _ = coloured(2, 0)
    write_folder(tmp_path / "in", images, *coloured(4, 1))
    _spawn(_evaluator_worker, tmp_path, tmp_path / "in", tmp_path / "two")
    printed = [(tmp_path / f"stdout.{rank}").read_text() for rank in range(2)]
    assert "correct: " in printed[0] and "shortened run" in printed[0] and printed[1] == ""
    work = [json.loads((tmp_path / f"work.{rank}.json").read_text()) for rank in range(2)]
    assert [w["wrote"] for w in work] == [[str(tmp_path / "two")], []]  # rank 0 alone writes
    assert [len(w["trained"]) for w in work] == [2, 1]  # 3 rounds: r, r + 2, ... on rank r, each once
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # the ranks' thread count
    try:
        with redirect_stdout(io.StringIO()):
            assert main([str(tmp_path / "in"), str(tmp_path / "one"), *EVALUATOR_FLAGS], specs=[TINY]) == 0
    finally:
        torch.set_num_threads(threads)
    two, one = (json.loads((tmp_path / name / "scores.json").read_text())["datasets"]["cifar100"]
                for name in ("two", "one"))
    assert two["seeds"] == one["seeds"] and len(two["rounds"]) == 3 and two["rounds"] == one["rounds"]
    assert sorted(work[0]["trained"] + work[1]["trained"]) == sorted(one["seeds"])
    assert (tmp_path / "two" / "scores.txt").read_text() == (tmp_path / "one" / "scores.txt").read_text()


def test_only_rank_zero_makes_its_result_and_only_it_reports():
    """What a job gives back on every rank: rank 0 makes and reports it; another rank neither, and says so."""
    made = []
    mine, theirs = (RankZero.make(Shard(rank, 2), lambda: made.append("export") or {"file": "x.pt"}) for rank in (0, 1))
    assert made == ["export"] and mine.held and not theirs.held and mine.value == {"file": "x.pt"}
    mine.report(made.append)
    theirs.report(made.append)
    assert made == ["export", {"file": "x.pt"}]
    with pytest.raises(RuntimeError, match="only rank 0 holds this result"):
        theirs.value  # noqa: B018
