"""Draw a demo picture (a cake on a table) so the demo needs no downloaded image."""

from __future__ import annotations

import sys
from pathlib import Path

from PIL import Image, ImageDraw


def draw(path: Path, size: tuple[int, int] = (800, 600)) -> Path:
    img = Image.new("RGB", size, (235, 225, 205))
    d = ImageDraw.Draw(img)
    w, h = size
    d.rectangle([0, int(h * 0.7), w, h], fill=(150, 100, 60))  # table
    d.ellipse([w * 0.25, h * 0.62, w * 0.75, h * 0.78], fill=(250, 250, 250))  # plate
    d.rectangle([w * 0.32, h * 0.4, w * 0.68, h * 0.7], fill=(120, 70, 40))  # cake
    d.rectangle([w * 0.32, h * 0.38, w * 0.68, h * 0.45], fill=(255, 240, 245))  # icing
    for i in range(5):  # strawberries
        x = w * (0.36 + 0.07 * i)
        d.ellipse([x, h * 0.32, x + w * 0.04, h * 0.39], fill=(210, 30, 40))
    path.parent.mkdir(parents=True, exist_ok=True)
    img.save(path)
    return path


if __name__ == "__main__":
    draw(Path(sys.argv[1]))
