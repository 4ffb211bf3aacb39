"""The PNG figures of a run, an ablation and a comparison: line and bar charts (matplotlib), the image grid
(torchvision).

matplotlib and torchvision are imported inside the functions that draw: commands that draw nothing do not pay for
them. Figures go through ``Figure`` + ``FigureCanvasAgg`` rather than pyplot, so no global backend is chosen for
whoever else imports matplotlib, and every PNG is saved without metadata at a fixed size and dpi: the same data
gives the same bytes.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from challenge_kit.core.contract import DatasetSpec, denormalize
from challenge_kit.core.storage import atomic_write

if TYPE_CHECKING:
    import torch

DPI = 100
WIDTH, HEIGHT = 900, 480  # pixels of a line chart, and of a bar chart with few bars
BLUE, RED, GREEN, GREY = "#1f77b4", "#d62728", "#2ca02c", "#9e9e9e"
DECADES = 10.0  # ``log_y=None`` picks a log axis when the largest positive value is this many times the smallest
MAX_COLUMNS = 40  # more bars than this are drawn horizontally, one labelled row each
ROW_INCHES = 0.2  # height of one horizontal bar's row
PREVIEW_CLASSES = 10
LABEL_WIDTH = 220  # pixels left of an image grid for its rows' class names
CELL = 64  # an image's side in a grid figure, in pixels: CIFAR's 32 px drawn twice as large
TITLE_HEIGHT = 30  # pixels above an image grid for its title


@dataclass
class Series:
    name: str
    xs: list[float]
    ys: list[float]
    errors: list[float] | None = None  # +- half-widths drawn as error bars
    style: str = "-"  # matplotlib format: "-" line, "--" dashed, "o" markers only, "o-" both
    width: float = 2.0
    alpha: float = 1.0


def _figure(width: int, height: int):
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    # a quarter pixel over: matplotlib truncates inches x dpi, and older ones let float error cut a pixel (113 to 112)
    figure = Figure(figsize=((width + 0.25) / DPI, (height + 0.25) / DPI), dpi=DPI, layout="constrained")
    FigureCanvasAgg(figure)
    return figure


def _save(figure, path: str | Path) -> Path:
    """PNG at the figure's own size (no tight bbox), with no Software or other text chunks."""
    return atomic_write(path, lambda tmp: figure.savefig(tmp, format="png", dpi=DPI, metadata={"Software": None}))


def spans_decades(values: list[float], ratio: float = DECADES) -> bool:
    """Whether the positive finite values spread over at least ``ratio`` (worth a log axis)."""
    positive = [v for v in values if math.isfinite(v) and v > 0]
    return bool(positive) and max(positive) >= ratio * min(positive)


def line_chart(path: str | Path, title: str, xlabel: str, ylabel: str, series: list[Series],
               log_y: bool | None = None) -> Path:
    """Lines or markers with optional error bars over a count (iterations: integer ticks).

    ``log_y=None`` takes a log axis when the values span decades; within one a linear axis reads better.
    """
    from matplotlib.ticker import MaxNLocator

    figure = _figure(WIDTH, HEIGHT)
    ax = figure.add_subplot()
    if log_y is None:
        log_y = spans_decades([y for s in series for y in s.ys])
    for s in series:
        ys = [y if math.isfinite(y) and (not log_y or y > 0) else math.nan for y in s.ys]
        ax.errorbar(s.xs, ys, yerr=s.errors, fmt=s.style, label=s.name, linewidth=s.width, alpha=s.alpha,
                    markersize=6 if len(ys) <= 50 else 3, capsize=4 if s.errors else 0)
    if log_y:
        ax.set_yscale("log")
    ax.set_title(title)
    ax.set_xlabel(xlabel)
    ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    ax.set_ylabel(ylabel + (" (log scale)" if log_y else ""))
    ax.grid(True, which="major", color="#e0e0e0")
    if len(series) > 1:
        ax.legend(loc="best")
    return _save(figure, path)


def bar_chart(path: str | Path, title: str, ylabel: str, labels: list[str], values: list[float],
              errors: list[float] | None = None, highlight: set[int] | None = None,
              highlight_name: str = "highlighted") -> Path:
    """Bars (``highlight`` ones and their labels in red, named in the legend) with optional error bars.

    Up to ``MAX_COLUMNS`` bars stand side by side, their labels turned upright when they would not fit flat;
    more bars lie horizontally, one row each, so that many class names never overlap.
    """
    highlight = highlight or set()
    n = len(values)
    colours = [RED if i in highlight else BLUE for i in range(n)]
    labels = [label[:26] for label in labels]
    horizontal = n > MAX_COLUMNS
    if horizontal:
        figure = _figure(WIDTH, max(HEIGHT, int(DPI * (1.5 + ROW_INCHES * n))))
        ax = figure.add_subplot()
        ax.barh(range(n), values, xerr=errors, color=colours, capsize=3)
        ax.set_yticks(range(n), labels, fontsize=8)
        ax.set_ylim(n - 0.5, -0.5)  # first label on top, as read
        ax.set_xlabel(ylabel)
        ax.tick_params(axis="x", labeltop=True)  # a tall chart: its scale at both ends
        ax.grid(True, axis="x", color="#e0e0e0")
    else:
        flat = n * max([len(label) for label in labels] + [1]) <= 100
        figure = _figure(max(WIDTH, 60 + 28 * n), HEIGHT if flat else HEIGHT + 100)
        ax = figure.add_subplot()
        ax.bar(range(n), values, yerr=errors, color=colours, capsize=4)
        ax.set_xticks(range(n), labels, rotation=0 if flat else 90, fontsize=10 if n <= 20 else 8)
        ax.set_xlim(-0.6, n - 0.4)
        ax.set_ylabel(ylabel)
        ax.grid(True, axis="y", color="#e0e0e0")
    ticks = ax.get_yticklabels() if horizontal else ax.get_xticklabels()
    for i in highlight:
        ticks[i].set_color(RED)  # a highlighted bar near zero is still found by its label
    ax.set_axisbelow(True)
    ax.set_title(title)
    if highlight:
        from matplotlib.patches import Patch

        ax.legend(handles=[Patch(color=RED, label=highlight_name), Patch(color=BLUE, label="others")], loc="best")
    return _save(figure, path)


VERDICT_COLOURS = {"better": GREEN, "worse": RED}  # any other verdict: not told apart, grey


def means_and_differences(path: str | Path, title: str, means: list[tuple[str, float, float]],
                          differences: list[tuple[str, float, float, str]], tells: float = 2.0) -> Path:
    """Two panels of horizontal bars, one row per name: ``(name, mean, error)`` on the left, ``(name, difference,
    error, verdict)`` on the right around a zero line, a difference named ``A - B`` and coloured by its verdict,
    each verdict drawn named in the legend (the means alone when there are no differences)."""
    rows = max(len(means), len(differences))
    figure = _figure(WIDTH + 300, max(HEIGHT, int(DPI * (1.5 + 2 * ROW_INCHES * rows))))
    axes = figure.subplots(1, 2 if differences else 1, squeeze=False)[0]
    panels = [(axes[0], [(n, v, e, BLUE) for n, v, e in means], "accuracy (mean +- s.e.)")]
    if differences:
        panels.append((axes[1], [(n, v, e, VERDICT_COLOURS.get(verdict, GREY)) for n, v, e, verdict in differences],
                       f"paired difference A - B (+- {tells:g} s.e.)"))
    for ax, bars, label in panels:
        names, values, errors, colours = zip(*bars, strict=True)
        ax.barh(range(len(bars)), values, xerr=errors, color=list(colours), capsize=4)  # a list: one colour a bar
        ax.set_yticks(range(len(bars)), [n if len(n) <= 48 else n[:45] + "..." for n in names], fontsize=8)
        ax.set_ylim(len(bars) - 0.5, -0.5)  # first row on top, as in the table
        ax.set_xlabel(label)
        ax.grid(True, axis="x", color="#e0e0e0")
        ax.set_axisbelow(True)
    if differences:
        from matplotlib.patches import Patch
        from matplotlib.ticker import MaxNLocator

        axes[1].axvline(0, color="black", linewidth=1)
        axes[1].xaxis.set_major_locator(MaxNLocator(nbins=5))
        verdicts = dict.fromkeys(verdict for *_, verdict in differences)
        axes[1].legend(handles=[Patch(color=VERDICT_COLOURS.get(v, GREY), label=f"A {v} than B" if v in VERDICT_COLOURS
                                      else f"{v} (within {tells:g} s.e.)") for v in verdicts],
                       loc="upper center", bbox_to_anchor=(0.5, -0.12), fontsize=8, title="verdict",
                       title_fontsize=8)  # below the bars, never over one
    figure.suptitle(title)
    return _save(figure, path)


def preview_grid(images: torch.Tensor, spec: DatasetSpec, classes: int = PREVIEW_CLASSES) -> torch.Tensor:
    """One row per class (the first ``classes`` classes), denormalized to pixels in [0, 1]: (3, H, W).

    torchvision is imported here: importing it pulls in torch's compiler stack (seconds), which every command
    that reaches this module (a recipe typo included) would otherwise pay before its first check.
    """
    from torchvision.utils import make_grid

    rows = min(classes, spec.num_classes)
    pixels = denormalize(images[: rows * spec.ipc].detach().float().cpu(), spec).clamp(0, 1)
    return make_grid(pixels, nrow=spec.ipc, padding=2, pad_value=1.0)


def row_labels(spec: DatasetSpec, classes: int = PREVIEW_CLASSES, names: Sequence[str] | None = None) -> list[str]:
    """A grid row's label: the class index and its name (``names``: the dataset's words, else the spec's class
    names: wnids, CIFAR's names; else the index alone)."""
    names = names or spec.class_names
    return [f"{c}: {names[c]}" if names else f"class {c}" for c in range(min(classes, spec.num_classes))]


def write_preview(images: torch.Tensor, spec: DatasetSpec, path: str | Path, classes: int = PREVIEW_CLASSES,
                  names: Sequence[str] | None = None) -> Path:
    """The preview grid as a PNG, each row (one class, its IPC images) named by ``row_labels``."""
    grid = preview_grid(images, spec, classes)
    labels = row_labels(spec, classes, names)
    scale = max(1, CELL // spec.image_size)
    height, width = (n * scale for n in grid.shape[1:])
    title = TITLE_HEIGHT
    figure = _figure(LABEL_WIDTH + width, height + title)
    figure.set_layout_engine("none")  # the grid at its own pixels: one image pixel is ``scale`` figure pixels
    ax = figure.add_axes((LABEL_WIDTH / (LABEL_WIDTH + width), 0, width / (LABEL_WIDTH + width),
                          height / (height + title)))
    ax.imshow(grid.permute(1, 2, 0).numpy(), interpolation="nearest")
    step = spec.image_size + 2  # make_grid's padding
    ax.set_yticks([2 + r * step + spec.image_size / 2 for r in range(len(labels))],
                  [label if len(label) <= 30 else label[:27] + "..." for label in labels], fontsize=9)
    ax.set_xticks([])
    for side in ax.spines.values():
        side.set_visible(False)
    figure.suptitle(f"{spec.name}: {len(labels)} of {spec.num_classes} classes, {spec.ipc} images each (one row a "
                    "class)", fontsize=10, y=1 - 8 / (height + title), va="top")
    return _save(figure, path)
