"""bench/gpu_acceptance.py: a one-line refusal without CUDA, and every step end to end on the CPU at tiny sizes."""

import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from fakes import write_tiny

SCRIPT = Path(__file__).resolve().parents[2] / "bench" / "gpu_acceptance.py"
# the quick profile cut to seconds: one expert, two iterations of two inner steps, one selection point; threshold
# 100, as the matches of experts this short are above 1, and a run that skips all its iterations stops
SMALL = [a for o in ("eval.holdout_per_class=2", "experts.num_experts=1", "distill.iterations=2", "distill.syn_steps=2",
                     "distill.batch_syn=10", "eval.every=2", "eval.final_rounds=0", "distill.threshold=100")
         for a in ("--set", o)]


@pytest.mark.skipif(torch.cuda.is_available(), reason="platform: this machine has CUDA")
def test_without_cuda_it_refuses_in_one_line(tmp_path):
    done = subprocess.run([sys.executable, SCRIPT, "--data-root", tmp_path, "--out", tmp_path / "out"],
                          capture_output=True, text=True)
    assert done.returncode == 2 and done.stderr.count("\n") == 1 and "no CUDA device" in done.stderr
    assert not (tmp_path / "out").exists()


@pytest.mark.slow
def test_every_step_runs_on_the_cpu_at_tiny_sizes(tmp_path):
    write_tiny(tmp_path / "tiny", per_class=14)
    done = subprocess.run([sys.executable, SCRIPT, "--data-root", tmp_path / "tiny", "--out", tmp_path / "out",
                           "--device", "cpu", "--tiny", *SMALL],
                          capture_output=True, text=True)
    report = json.loads((tmp_path / "out" / "acceptance.json").read_text())
    assert done.returncode == 0, (done.stderr, report)
    steps = report["steps"]
    assert set(steps) == {"device tests", "no host syncs", "scorer throughput", "full-shape iteration",
                           "quick make-submission", "matching arithmetic"}
    assert "passed" in steps["device tests"]["summary"] and "failed" not in steps["device tests"]["summary"]
    assert steps["scorer throughput"]["kit_images_per_s"] > 0
    assert [r["dataset"] for r in steps["full-shape iteration"]["rows"]] == ["cifar100", "tinyimagenet"]
    assert (tmp_path / "out" / "quick" / "tinyimagenet.pt").is_file()
    rows = steps["matching arithmetic"]["rows"]  # strict float32 first, then bfloat16 where the CPU has it
    assert [r["arithmetic"] for r in rows if r["dataset"] == "cifar100"][0] == "float32"
    assert all(r["cos_images"] >= 0.99 and r["seconds"] > 0 for r in rows)
