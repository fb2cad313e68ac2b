"""Plots are written as palette PNGs (they are kept in git) that still show every series."""

import numpy as np
from PIL import Image

from astra_gym.agents.plots import save_bars, save_curves


def test_curves_and_bars_are_palette_pngs(tmp_path):
    path = save_curves({"a": ([0, 1, 2], [0.0, 1.0, 0.5], [0.1, 0.2, 0.1]), "b": ([0, 2], [1.0, 0.0], None)},
                       tmp_path / "c.png", "x", "y", "t")  # fmt: skip
    image = Image.open(path)
    assert image.format == "PNG" and image.mode == "P" and image.size == (650, 400)
    rgb = np.asarray(image.convert("RGB")).reshape(-1, 3)
    assert np.abs(rgb - [31, 119, 180]).sum(axis=1).min() < 30  # tab:blue, the first series
    assert np.abs(rgb - [255, 127, 14]).sum(axis=1).min() < 30  # tab:orange, the second series
    bars = Image.open(save_bars(["p", "q"], [1.0, 2.0], [0.1, 0.3], tmp_path / "b.png", "return", "t", 1.5, "ref"))
    assert bars.mode == "P" and sorted(p.name for p in tmp_path.iterdir()) == ["b.png", "c.png"]  # no temp files left
