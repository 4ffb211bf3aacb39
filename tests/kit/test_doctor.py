"""``ddkit doctor``: the machine, the data roots and the shipped recipes as a run will meet them, read against what
Python, torch and the file system say themselves; a missing data root or a broken recipe fails it."""

from __future__ import annotations

import json
import os
import platform
import shutil

import torch
from fakes import write_tiny
from typer.testing import CliRunner

from challenge_kit import doctor
from challenge_kit.cli import app


def checkup(*argv) -> tuple[int, dict]:
    done = CliRunner().invoke(app, ["doctor", *map(str, argv), "--json"])
    return done.exit_code, {row["name"]: row for row in json.loads(done.stdout)["checks"]}


def test_doctor_says_what_this_machine_has_and_what_its_data_holds(tmp_path):
    write_tiny(tmp_path / "tiny")
    files = sum(len(os.listdir(tmp_path / "tiny" / "train" / w / "images")) for w in os.listdir(tmp_path / "tiny" /
                                                                                                "train"))
    code, rows = checkup("--data-root", tmp_path / "tiny", "--cache-dir", tmp_path / "cache")
    assert code == 0 and all(r["status"] != "fail" for r in rows.values())
    assert rows["Python"]["found"].startswith(platform.python_version())
    assert rows["torch"]["found"] == torch.__version__
    assert (rows["CUDA"]["found"].startswith(torch.version.cuda) if torch.version.cuda else
            rows["CUDA"]["found"].startswith("none"))
    assert f"{os.cpu_count() if not hasattr(os, 'sched_getaffinity') else len(os.sched_getaffinity(0))} cores" in \
        rows["cpu"]["found"]
    assert ("cuda:0" in rows) == torch.cuda.is_available()
    assert rows["torch.compile"]["status"] == "warn"  # the tests turn compiling off (DDKIT_NO_COMPILE)
    free = shutil.disk_usage(tmp_path).free
    assert str(tmp_path / "cache") in rows["cache"]["found"] and "will be made" in rows["cache"]["found"]
    assert abs(float(rows["cache"]["found"].split(", ")[1].split()[0]) - free / 2 ** 30) < 0.2 * free / 2 ** 30 + 1
    data = rows[f"data {tmp_path / 'tiny'}"]
    assert data["status"] == "ok" and "3 classes" in data["found"] and f" {files} training images" in data["found"]
    assert rows["recipes"]["status"] == "ok"


def test_doctor_fails_on_a_missing_data_root_and_a_recipe_that_does_not_load(tmp_path):
    code, rows = checkup("--data-root", tmp_path / "nowhere")
    assert code == 1 and rows[f"data {tmp_path / 'nowhere'}"] == {"name": f"data {tmp_path / 'nowhere'}",
                                                                   "status": "fail", "found": "not found"}
    table = CliRunner().invoke(app, ["doctor", "--data-root", str(tmp_path / "nowhere")], env={"COLUMNS": "200"})
    assert table.exit_code == 1 and "1 check(s) would stop a run" in table.stdout
    shutil.copytree(doctor.RECIPE_DIR, tmp_path / "recipes")
    (tmp_path / "recipes" / "research" / "pad.toml").write_text('method = "PAD"\n[distill]\nmask = "dep"\n')
    result = doctor.checkup(recipe_dir=tmp_path / "recipes")
    failed = [r for r in result.rows if r.status == "fail"]
    assert result.exit_code == 1 and {r.name for r in failed} == {"recipe pad"}
    assert all("mask" in r.found for r in failed) and len(failed) == 5  # each dataset profile: full, quick, mini
