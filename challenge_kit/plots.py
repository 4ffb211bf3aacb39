"""Small PNG charts drawn with Pillow (already a dependency): lines with error bars, and bar charts.

Enough for a run report and an ablation table a person would rather look at than read; no plotting
library needed in the image.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path

from PIL import Image, ImageDraw, ImageFont

from challenge_kit.core.storage import atomic_write

WIDTH, HEIGHT = 900, 480
MARGIN = (80, 50, 30, 60)  # left, top, right, bottom
COLOURS = ["#1f77b4", "#d62728", "#2ca02c", "#ff7f0e", "#9467bd", "#8c564b", "#17becf", "#7f7f7f"]
GRID, AXIS, TEXT = "#e0e0e0", "#404040", "#202020"


@dataclass
class Series:
    name: str
    xs: list[float]
    ys: list[float]
    errors: list[float] | None = None  # +- half-widths drawn as error bars
    markers: bool = False
    width: int = 2


def _font(size: int):
    try:
        return ImageFont.load_default(size=size)
    except TypeError:  # Pillow without FreeType: the fixed bitmap font
        return ImageFont.load_default()


def nice_ticks(low: float, high: float, count: int = 6) -> list[float]:
    """Round tick values (1, 2, 5 x 10^k steps) from at or below ``low`` to at or above ``high``."""
    if not math.isfinite(low) or not math.isfinite(high):
        return [0.0, 1.0]
    if high <= low:
        high = low + (abs(low) or 1.0)
    raw = (high - low) / max(1, count - 1)
    power = 10 ** math.floor(math.log10(raw))
    step = next(m * power for m in (1, 2, 5, 10) if m * power >= raw)
    first, last = math.floor(low / step + 1e-9), math.ceil(high / step - 1e-9)
    return [round(k * step, 12) for k in range(first, last + 1)]


def _label(value: float, log: bool = False) -> str:
    if log:
        return f"{10 ** value:.2g}"
    if value == 0:
        return "0"
    if abs(value) >= 1e4 or abs(value) < 1e-3:
        return f"{value:.0e}"
    return f"{value:g}"


class Canvas:
    """A plot area with linear axes mapped onto an image."""

    def __init__(self, title: str, xlabel: str, ylabel: str, xticks: list[float], yticks: list[float],
                 size: tuple[int, int] = (WIDTH, HEIGHT), margin: tuple[int, int, int, int] = MARGIN,
                 xlabels: bool = True, log_y: bool = False) -> None:
        self.image = Image.new("RGB", size, "white")
        self.draw = ImageDraw.Draw(self.image)
        self.size = size
        self.xticks, self.yticks = xticks, yticks
        left, top, right, bottom = margin
        self.box = (left, top, size[0] - right, size[1] - bottom)
        self.log_y = log_y
        self._frame(title, xlabel, ylabel, xlabels)

    def x(self, value: float) -> float:
        lo, hi = self.xticks[0], self.xticks[-1]
        return self.box[0] + (value - lo) / ((hi - lo) or 1) * (self.box[2] - self.box[0])

    def y(self, value: float) -> float:
        lo, hi = self.yticks[0], self.yticks[-1]
        return self.box[3] - (value - lo) / ((hi - lo) or 1) * (self.box[3] - self.box[1])

    def _frame(self, title: str, xlabel: str, ylabel: str, xlabels: bool) -> None:
        d, (x0, y0, x1, y1) = self.draw, self.box
        small, big = _font(13), _font(17)
        for t in self.yticks:
            d.line([(x0, self.y(t)), (x1, self.y(t))], fill=GRID)
            d.text((x0 - 8, self.y(t)), _label(t, self.log_y), fill=TEXT, font=small, anchor="rm")
        for t in self.xticks if xlabels else []:
            d.line([(self.x(t), y0), (self.x(t), y1)], fill=GRID)
            d.text((self.x(t), y1 + 8), _label(t), fill=TEXT, font=small, anchor="mt")
        d.rectangle([x0, y0, x1, y1], outline=AXIS)
        d.text(((x0 + x1) / 2, 14), title, fill=TEXT, font=big, anchor="mt")
        d.text(((x0 + x1) / 2, self.size[1] - 18), xlabel, fill=TEXT, font=small, anchor="mb")
        label = Image.new("RGBA", (y1 - y0, 20), (255, 255, 255, 0))
        ImageDraw.Draw(label).text(((y1 - y0) / 2, 10), ylabel, fill=TEXT, font=small, anchor="mm")
        self.image.paste(label.rotate(90, expand=True), (8, y0), label.rotate(90, expand=True))

    def legend(self, names: list[str]) -> None:
        font = _font(13)
        x, y = self.box[0] + 10, self.box[1] + 8
        for i, name in enumerate(names):
            colour = COLOURS[i % len(COLOURS)]
            self.draw.line([(x, y + 7), (x + 22, y + 7)], fill=colour, width=3)
            self.draw.text((x + 28, y), name, fill=TEXT, font=font)
            y += 18

    def save(self, path: str | Path) -> Path:
        return atomic_write(path, lambda tmp: self.image.save(tmp, format="png"))


def line_chart(path: str | Path, title: str, xlabel: str, ylabel: str, series: list[Series],
               log_y: bool = False) -> Path:
    """Lines (or markers) with optional error bars; ``log_y`` plots log10 of positive values."""
    def tf(v: float) -> float:
        return math.log10(v) if log_y else v

    points = [(x, y, e) for s in series for x, y, e in zip(s.xs, s.ys, s.errors or [0.0] * len(s.ys), strict=True)
              if math.isfinite(y) and (not log_y or y > 0)]
    xs = [p[0] for p in points] or [0.0, 1.0]
    lows = [tf(y - e) if not log_y else tf(y) for _, y, e in points] or [0.0]
    highs = [tf(y + e) if not log_y else tf(y) for _, y, e in points] or [1.0]
    low, high = min(lows), max(highs)
    yticks = list(range(math.floor(low), math.ceil(high) + 1)) if log_y and high - low >= 1 else \
        nice_ticks(low, high)
    canvas = Canvas(title, xlabel, ylabel + (" (log scale)" if log_y else ""), nice_ticks(min(xs), max(xs)),
                    [float(t) for t in yticks], log_y=log_y)
    for i, s in enumerate(series):
        colour = COLOURS[i % len(COLOURS)]
        pts = [(canvas.x(x), canvas.y(tf(y))) for x, y in zip(s.xs, s.ys, strict=True)
               if math.isfinite(y) and (not log_y or y > 0)]
        if len(pts) > 1 and not s.markers:
            canvas.draw.line(pts, fill=colour, width=s.width)
        for j, (px, py) in enumerate(pts):
            if s.markers:
                canvas.draw.ellipse([px - 4, py - 4, px + 4, py + 4], fill=colour)
            if s.errors and not log_y:
                e = s.errors[j]
                top, bottom = canvas.y(s.ys[j] + e), canvas.y(s.ys[j] - e)
                canvas.draw.line([(px, top), (px, bottom)], fill=colour, width=2)
                canvas.draw.line([(px - 5, top), (px + 5, top)], fill=colour, width=2)
                canvas.draw.line([(px - 5, bottom), (px + 5, bottom)], fill=colour, width=2)
    if len(series) > 1:
        canvas.legend([s.name for s in series])
    return canvas.save(path)


def bar_chart(path: str | Path, title: str, ylabel: str, labels: list[str], values: list[float],
              errors: list[float] | None = None, highlight: set[int] | None = None) -> Path:
    """Vertical bars (highlighted ones in red) with optional error bars; labels under the bars."""
    errors = errors or [0.0] * len(values)
    low = min([0.0] + [v - e for v, e in zip(values, errors, strict=True)])
    high = max([0.0] + [v + e for v, e in zip(values, errors, strict=True)])
    n = max(1, len(values))
    width = max(WIDTH, 60 + 28 * n)
    canvas = Canvas(title, "", ylabel, [0.0, float(n)], nice_ticks(low, high), size=(width, HEIGHT + 60),
                    margin=(MARGIN[0], MARGIN[1], MARGIN[2], 150), xlabels=False)
    font = _font(12 if n <= 40 else 9)
    slot = (canvas.box[2] - canvas.box[0]) / n
    for i, (v, e) in enumerate(zip(values, errors, strict=True)):
        x0, x1 = canvas.box[0] + slot * (i + 0.15), canvas.box[0] + slot * (i + 0.85)
        colour = COLOURS[1] if highlight and i in highlight else COLOURS[0]
        canvas.draw.rectangle([x0, min(canvas.y(v), canvas.y(0)), x1, max(canvas.y(v), canvas.y(0))], fill=colour)
        cx = (x0 + x1) / 2
        if e:
            canvas.draw.line([(cx, canvas.y(v + e)), (cx, canvas.y(v - e))], fill=AXIS, width=2)
            canvas.draw.line([(cx - 6, canvas.y(v + e)), (cx + 6, canvas.y(v + e))], fill=AXIS, width=2)
            canvas.draw.line([(cx - 6, canvas.y(v - e)), (cx + 6, canvas.y(v - e))], fill=AXIS, width=2)
        text = Image.new("RGBA", (170, 16), (255, 255, 255, 0))
        ImageDraw.Draw(text).text((168, 8), labels[i][:26], fill=TEXT, font=font, anchor="rm")
        turned = text.rotate(45, expand=True)
        canvas.image.paste(turned, (int(cx - turned.width + 8), int(canvas.box[3] + 4)), turned)
    return canvas.save(path)
