"""Every file the kit writes (exports, expert stores, the scorer's results) gets the mode a plain ``open`` would
give it under the caller's umask, though each is written to a temporary file and renamed."""

import os
import stat

import pytest
import torch
from fakes import write_run

import evaluator.evaluate
from challenge_kit.core.contract import CIFAR100
from challenge_kit.core.models import ModelConfig
from challenge_kit.experts import training
from challenge_kit.experts.store import expert_path
from challenge_kit.export import export_run
from challenge_kit.recipes import ExpertConfig

SUBSET = CIFAR100.subset(5)
STORE_MODEL = ModelConfig.for_spec(CIFAR100, width=8)  # the challenge's classes, a narrow net: quick to train


@pytest.mark.parametrize("umask", [0o022, 0o027])
def test_written_files_get_the_mode_of_a_plain_open(tmp_path, umask):
    old = os.umask(umask)
    try:
        export_run(write_run(tmp_path / "run", SUBSET), tmp_path / "out")
        images = torch.randn(8, 3, 32, 32)
        training.train_experts(images, torch.arange(8), images, torch.arange(8), CIFAR100,
                         ExpertConfig(num_experts=1, epochs=1, batch_size=8), tmp_path / "store", model=STORE_MODEL)
        small = CIFAR100.subset(5, ipc=2)
        (tmp_path / "in" / "res").mkdir(parents=True)
        (tmp_path / "in" / "ref").mkdir()
        torch.save(torch.randn(small.shape), tmp_path / "in" / "res" / "cifar100.pt")
        torch.save({"images_val": torch.randn(10, 3, 32, 32), "labels_val": torch.arange(10) % 5},
                   tmp_path / "in" / "ref" / "cifar100_test.pt")
        assert evaluator.evaluate.main([str(tmp_path / "in"), str(tmp_path / "scores"), "--epochs", "1",
                                        "--rounds", "1", "--device", "cpu"], specs=[small]) == 0
    finally:
        os.umask(old)
    written = [tmp_path / "out" / n for n in ("cifar100.pt", "manifest.json", "preview.png")] + \
        [expert_path(tmp_path / "store", 0), tmp_path / "scores" / "scores.txt", tmp_path / "scores" / "scores.json"]
    assert {p.name: oct(stat.S_IMODE(p.stat().st_mode)) for p in written} == \
        {p.name: oct(0o666 & ~umask) for p in written}
