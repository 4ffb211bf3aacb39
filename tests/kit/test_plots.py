"""Figures: the same data gives the same PNG bytes at the size asked for, and nothing imports matplotlib early."""

import math
import subprocess
import sys

from fakes import MINI, distilled_images, needs_mini, write_tiny
from PIL import Image

from challenge_kit.core.contract import CIFAR100
from challenge_kit.data import class_words, dataset_spec
from challenge_kit.plots import (
    HEIGHT,
    LABEL_WIDTH,
    TITLE_HEIGHT,
    WIDTH,
    Series,
    bar_chart,
    line_chart,
    row_labels,
    spans_decades,
    write_preview,
)

ITS = list(range(1, 41))
SERIES = [Series("raw", ITS, [1.0 / i + 0.01 * (i % 3) for i in ITS], width=1, alpha=0.5),
          Series("candidates", ITS[::10], [0.1, 0.2, 0.25, 0.3], [0.01, 0.02, 0.01, 0.03], style="o-"),
          Series("flat", ITS, [0.5] * len(ITS), style="--")]


def _png(path):
    with Image.open(path) as png:
        png.load()
        return png.format, png.size, dict(png.info)


def test_the_same_figure_twice_gives_identical_bytes_of_a_png_at_the_fixed_size(tmp_path):
    first = line_chart(tmp_path / "a.png", "title", "iteration", "value", SERIES)
    second = line_chart(tmp_path / "b.png", "title", "iteration", "value", SERIES)
    assert first.read_bytes() == second.read_bytes()
    kind, size, info = _png(first)
    assert kind == "PNG" and size == (WIDTH, HEIGHT)
    assert not any(isinstance(v, str) for v in info.values()), info  # no Software (or other text) chunk
    bars = [bar_chart(tmp_path / f"{k}.png", "per class", "accuracy", [f"n0{i:07d}" for i in range(200)],
                      [(i % 7) / 7 for i in range(200)], highlight={3, 5}) for k in "cd"]
    assert bars[0].read_bytes() == bars[1].read_bytes()
    kind, size, _ = _png(bars[0])
    assert kind == "PNG" and size[0] == WIDTH and size[1] > 200 * 15  # many bars: one readable row each


def test_bars_with_errors_and_gaps_in_lines_still_draw(tmp_path):
    path = bar_chart(tmp_path / "few.png", "ablation", "accuracy", ["m-datm", "datm"], [0.2, 0.25], [0.01, 0.02])
    assert _png(path)[:2] == ("PNG", (WIDTH, HEIGHT))
    gaps = Series("gaps", [1, 2, 3], [math.nan, 0.0, 1e-3])
    assert _png(line_chart(tmp_path / "log.png", "t", "x", "y", [gaps], log_y=True))[0] == "PNG"


def test_a_log_axis_only_where_the_values_span_a_decade():
    assert spans_decades([0.001, 0.5]) and not spans_decades([0.3, 0.9, math.nan, -1.0]) and not spans_decades([])


def test_commands_that_draw_nothing_do_not_import_matplotlib():
    code = ("import sys, challenge_kit.cli, challenge_kit.report, challenge_kit.ablate; "
            "print('matplotlib' in sys.modules)")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert done.stdout.strip() == "False", done.stderr


def test_a_grid_row_is_named_by_the_class_in_the_dataset_words(tmp_path):
    write_tiny(tmp_path / "tiny")  # wnids n01000000, n02000000, n03000000
    (tmp_path / "tiny" / "words.txt").write_text("n02000000\tcentipede\nn01000000\tgoldfish, Carassius auratus\n")
    words = class_words("tinyimagenet", tmp_path / "tiny")
    assert words == ["goldfish", "centipede", "n03000000"]  # a wnid words.txt does not name keeps its wnid
    spec = dataset_spec("tinyimagenet", tmp_path / "tiny")
    assert row_labels(spec, 10, words) == ["0: goldfish", "1: centipede", "2: n03000000"]
    assert row_labels(CIFAR100, 2) == ["class 0", "class 1"]  # no names at hand: the index
    images = distilled_images(spec)
    first, second = (write_preview(images, spec, tmp_path / f"{k}.png", names=words) for k in "ab")
    assert first.read_bytes() == second.read_bytes()
    assert _png(first)[1] == (LABEL_WIDTH + 10 * 66 + 2, 3 * 66 + 2 + TITLE_HEIGHT)  # 64 px images at their size


@needs_mini
def test_the_shared_tiny_imagenet_classes_are_named_by_its_words_txt():
    wnids = sorted((MINI / "wnids.txt").read_text().split())
    listed = dict(line.split("\t", 1) for line in (MINI / "words.txt").read_text().splitlines())
    assert class_words("tinyimagenet", MINI) == [listed[w].split(",")[0].strip() for w in wnids]
