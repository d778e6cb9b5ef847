"""A line chart as a PNG with Pillow alone (no plotting library in the project's dependencies)."""

from __future__ import annotations

from pathlib import Path

from PIL import Image, ImageDraw

COLOURS = ["#1f77b4", "#d62728", "#2ca02c", "#ff7f0e", "#9467bd", "#8c564b"]


def line_chart(series: list[tuple[str, list[float], list[float]]], path: Path, *, title: str, x_label: str,
               y_label: str, y_max: float = 1.0, hlines: tuple[tuple[str, float], ...] = (),
               size: tuple[int, int] = (900, 520)) -> Path:
    """series: (label, xs, ys). hlines: (label, y) drawn dashed (targets, base rates)."""
    width, height = size
    left, right, top, bottom = 70, 230, 40, 60
    image = Image.new("RGB", size, "white")
    draw = ImageDraw.Draw(image)
    x_max = max((max(xs) for _, xs, _ in series if xs), default=1) or 1

    def at(x: float, y: float) -> tuple[float, float]:
        return (left + x / x_max * (width - left - right), height - bottom - y / y_max * (height - top - bottom))

    draw.rectangle([left, top, width - right, height - bottom], outline="black")
    for i in range(6):
        y = y_max * i / 5
        px, py = at(0, y)
        draw.line([px - 4, py, px, py], fill="black")
        draw.text((px - 40, py - 6), f"{y:.1f}", fill="black")
        draw.line([left, py, width - right, py], fill="#eeeeee")
        x = x_max * i / 5
        qx, qy = at(x, 0)
        draw.line([qx, qy, qx, qy + 4], fill="black")
        draw.text((qx - 12, qy + 8), f"{x:g}", fill="black")
    for label, y in hlines:
        _, py = at(0, y)
        for start in range(left, width - right, 12):
            draw.line([start, py, min(start + 6, width - right), py], fill="#888888")
        draw.text((width - right + 8, py - 6), label, fill="#555555")
    for index, (label, xs, ys) in enumerate(series):
        colour = COLOURS[index % len(COLOURS)]
        points = [at(x, y) for x, y in zip(xs, ys)]
        if len(points) > 1:
            draw.line(points, fill=colour, width=2)
        for px, py in points:
            draw.ellipse([px - 3, py - 3, px + 3, py + 3], fill=colour)
        draw.rectangle([width - right + 8, top + 10 + index * 18, width - right + 20, top + 20 + index * 18], fill=colour)
        draw.text((width - right + 26, top + 8 + index * 18), label, fill="black")
    draw.text((left, 12), title, fill="black")
    draw.text(((left + width - right) / 2 - 40, height - 25), x_label, fill="black")
    draw.text((8, top - 20), y_label, fill="black")
    path.parent.mkdir(parents=True, exist_ok=True)
    image.save(path)
    return path
