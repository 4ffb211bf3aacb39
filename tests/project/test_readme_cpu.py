"""The README's CPU path, followed as written: from a folder in the full Tiny ImageNet layout (200 classes) through
``ddkit subset`` and ``make-submission --profile quick`` to ``ddkit verify`` passing on the export.

The block is read from README.md (the fenced bash block after ``<!-- cpu-path -->``). The data root (the
download) and the output paths change, to this test's folders; download lines (curl, unzip) are skipped, and so is
the mini profile's line (about 40 minutes). As written, the quick profile on 20 classes x 100 images takes the best
part of an hour on two busy CPU cores (one expert epoch over those 1,800 64-px images alone took 213 s), so by
default the test also takes ``TRAIN_PER_CLASS`` images per class and gives make-submission a smaller budget
(``BUDGET``: one expert epoch, one iteration): the same commands and code path, seconds of work. That iteration
matches a one-step expert on copies of two images per class, far above DATM's threshold of 1, and a run that skips
all its iterations stops: the budget raises the threshold, and lowers the image lr so that the update leaves a set
verify accepts.
``DDKIT_README_AS_WRITTEN=1`` runs the block's own counts and budget (a fast machine, or patience).
"""

import json
import os
import shlex
from pathlib import Path

import pytest
from fakes import write_tiny
from typer.testing import CliRunner

from challenge_kit.cli import app
from challenge_kit.core.reading import load_torch

README = Path(__file__).resolve().parents[2] / "README.md"
MARKER = "<!-- cpu-path -->"
DOWNLOADS = ("curl", "wget", "unzip", "tar")
AS_WRITTEN = bool(os.environ.get("DDKIT_README_AS_WRITTEN"))
TRAIN_PER_CLASS = "20"  # 10 held out for selection, 10 left: one image per class for IPC 10
BUDGET = ["--set", "experts.num_experts=1", "--set", "experts.epochs=1", "--set", "experts.objective=sgd",
          "--set", "distill.iterations=1", "--set", "distill.syn_steps=1", "--set", "distill.expert_epochs=1",
          "--set", "distill.max_start_epoch=0", "--set", "distill.batch_syn=10", "--set", "eval.every=0",
          "--set", "distill.threshold=100", "--set", "distill.lr_img=1"]


def cpu_block(text: str) -> list[list[str]]:
    """The commands of the fenced bash block after the marker line, each as its words (comments dropped)."""
    lines = text.splitlines()
    start = lines.index(MARKER) + 1
    assert lines[start].strip() == "```bash", f"{MARKER} must sit on the line before a ```bash fence"
    end = next(i for i in range(start + 1, len(lines)) if lines[i].strip() == "```")
    commands = []
    for line in lines[start + 1:end]:
        words = shlex.split(line, comments=True)
        while words:  # `a && b` is two commands
            cut = words.index("&&") if "&&" in words else len(words)
            commands.append(words[:cut])
            words = words[cut + 1:]
    return commands


def full_tiny(root: Path) -> Path:
    """The full layout's shape: 200 wnids, 100 training images each (hardlinks of a few JPEGs: cheap), val/."""
    wnids = tuple(f"n{i:08d}" for i in range(200))
    write_tiny(root, wnids=wnids, per_class=2)  # val: two images of every other class, chosen ones included
    for wnid in wnids:
        images = root / "train" / wnid / "images"
        for k in range(2, 100):
            os.link(images / f"{wnid}_{k % 2}.JPEG", images / f"{wnid}_{k}.JPEG")
    return root


def under(word: str, path: str) -> bool:
    return word == path or word.startswith(path.rstrip("/") + "/")


def localize(words: list[str], paths: dict[str, Path]) -> list[str]:
    """Each word that is a mapped path (or lies under one) points into this test's folders instead."""
    out = []
    for word in words:
        base = next((p for p in paths if under(word, p)), None)
        out.append(word if base is None else str(paths[base] / word[len(base):].lstrip("/")))
    return out


@pytest.mark.slow
def test_the_readme_cpu_path_runs_from_the_full_layout_to_a_verified_export(tmp_path, monkeypatch):
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    commands = cpu_block(README.read_text())
    ran, paths, skipped = [], {}, []
    for words in commands:
        if words[0] in DOWNLOADS:
            continue
        assert words[0] == "ddkit", f"the CPU block runs ddkit and download tools only: {shlex.join(words)}"
        args = words[1:]
        if "--profile" in args and args[args.index("--profile") + 1] == "mini":
            skipped.append(args[args.index("--out") + 1])  # and what reads its output (its verify)
            continue
        if any(under(word, out) for word in args for out in skipped):
            continue
        if args[0] == "subset" and not paths:  # its data root is the download
            paths[args[args.index("--data-root") + 1]] = full_tiny(tmp_path / "download" / "tiny-imagenet-200")
        if "--out" in args:
            paths.setdefault(args[args.index("--out") + 1], tmp_path / "work" / args[args.index("--out") + 1])
        args = localize(args, paths)
        if not AS_WRITTEN and args[0] == "subset":
            args[args.index("--train-per-class") + 1] = TRAIN_PER_CLASS
        if not AS_WRITTEN and args[0] == "make-submission":
            args += BUDGET
        result = CliRunner().invoke(app, args)
        assert result.exit_code == 0, f"{shlex.join(words)}\n{result.output}"
        ran.append((args[0], args, result))
    assert [name for name, _, _ in ran] == ["subset", "make-submission", "verify"]

    subset_args = ran[0][1]
    subset = Path(subset_args[subset_args.index("--out") + 1])
    manifest = json.loads((subset / "ddkit-subset.json").read_text())
    per_class = int(subset_args[subset_args.index("--train-per-class") + 1])
    assert manifest["classes"] == [f"n{i:08d}" for i in range(0, 200, 10)]
    assert manifest["train_images"] == 20 * per_class
    verified = Path(ran[2][1][1])
    assert tuple(load_torch(verified).shape) == (200, 3, 64, 64)
    assert "PASS" in ran[2][2].output


@pytest.mark.parametrize("missing", ["marker", "fence"])
def test_the_block_must_be_marked(missing):
    text = "intro\n<!-- cpu-path -->\n```bash\nddkit verify x.pt\n```\n"
    assert cpu_block(text) == [["ddkit", "verify", "x.pt"]]
    broken = text.replace(MARKER, "") if missing == "marker" else text.replace("```bash", "```sh")
    with pytest.raises((ValueError, AssertionError)):
        cpu_block(broken)
