"""The PNG figures of a run, an ablation and a comparison: line and bar charts (matplotlib), the image grid
(torchvision).

matplotlib and torchvision are imported inside the functions that draw: commands that draw nothing do not pay for
them. Figures go through ``Figure`` + ``FigureCanvasAgg`` rather than pyplot, so no global backend is chosen for
whoever else imports matplotlib, and every PNG is saved without metadata at a fixed size and dpi: the same data
gives the same bytes.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from challenge_kit.core.contract import DatasetSpec, denormalize
from challenge_kit.core.storage import atomic_write

if TYPE_CHECKING:
    import torch

DPI = 100
WIDTH, HEIGHT = 900, 480  # pixels of a line chart, and of a bar chart with few bars
BLUE, RED = "#1f77b4", "#d62728"
DECADES = 10.0  # ``log_y=None`` picks a log axis when the largest positive value is this many times the smallest
MAX_COLUMNS = 40  # more bars than this are drawn horizontally, one labelled row each
ROW_INCHES = 0.2  # height of one horizontal bar's row
PREVIEW_CLASSES = 10


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

    figure = Figure(figsize=(width / DPI, height / DPI), dpi=DPI, layout="constrained")
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


def means_and_differences(path: str | Path, title: str, means: list[tuple[str, float, float]],
                          differences: list[tuple[str, float, float, str]]) -> Path:
    """Two panels of horizontal bars, one row per name: ``(name, mean, error)`` on the left, ``(name, difference,
    error, verdict)`` on the right around a zero line, in red where the verdict is not "better" or "worse" (the
    means alone when there are no differences)."""
    rows = max(len(means), len(differences))
    figure = _figure(WIDTH + 300, max(HEIGHT, int(DPI * (1.5 + 2 * ROW_INCHES * rows))))
    axes = figure.subplots(1, 2 if differences else 1, squeeze=False)[0]
    panels = [(axes[0], [(n, v, e, BLUE) for n, v, e in means], "accuracy (mean +- s.e.)")]
    if differences:
        panels.append((axes[1], [(n, v, e, BLUE if verdict in ("better", "worse") else RED)
                                 for n, v, e, verdict in differences], "paired difference (+- 2 s.e.)"))
    for ax, bars, label in panels:
        names, values, errors, colours = zip(*bars, strict=True)
        ax.barh(range(len(bars)), values, xerr=errors, color=colours, capsize=4)
        ax.set_yticks(range(len(bars)), [n if len(n) <= 40 else "..." + n[-37:] for n in names], fontsize=8)
        ax.set_ylim(len(bars) - 0.5, -0.5)  # first row on top, as in the table
        ax.set_xlabel(label)
        ax.grid(True, axis="x", color="#e0e0e0")
        ax.set_axisbelow(True)
    if differences:
        from matplotlib.patches import Patch

        axes[1].axvline(0, color="black", linewidth=1)
        axes[1].legend(handles=[Patch(color=BLUE, label="told apart"),
                                Patch(color=RED, label="not distinguishable")], loc="best", fontsize=8)
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


def write_preview(images: torch.Tensor, spec: DatasetSpec, path: str | Path,
                  classes: int = PREVIEW_CLASSES) -> Path:
    """The preview grid as a PNG."""
    from torchvision.utils import save_image

    grid = preview_grid(images, spec, classes)
    return atomic_write(path, lambda tmp: save_image(grid, tmp, format="png"))
