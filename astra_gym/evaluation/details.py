"""The few-pixel details agents read, found by colour in fixed regions of 64x64 frames.

A VAE or world model can score a high PSNR while erasing the objects that define a task: CarRacing's
ego car (about 8 red pixels at 64x64) and its dashboard bars, FetchPush's red goal marker. These
checks find each detail by colour in the real frame and in the model's frame, so a benchmark can
say whether it survived:

=================  ==============  ====================================================================
scenario           detail          how it is found (pixels of uint8 RGB frames)
=================  ==============  ====================================================================
drive              ``car``         red (R > 150, G < 100, B < 100) in rows 40-53, cols 26-37: the car
                                   sits there in every CarRacing frame
drive              ``speed``       white (all > 150) in the dashboard (rows 56-63), cols 8-11
drive              ``abs``         blue (B > 150, R, G < 120) in the dashboard, cols 11-20
drive              ``steering``    green (G > 150, R, B < 120) in the dashboard
drive              ``gyro``        red in the dashboard
manipulation       ``goal``        red anywhere (the goal marker; the block is dark, the arm blue)
manipulation       ``block``       near-black (all < 50) anywhere, except static scenery (below)
manipulation       ``arm``         blue (B > 150, R < 120)
explore            (none)          ViZDoom's doors and vest have no unique colour at 64x64: the
                                   generic detail PSNR below covers them
=================  ==============  ====================================================================

Near-black also matches fixed scenery: from the stock FetchPush camera a diagonal of about 27 pixels
at the table's left edge is dark in most frames, so every frame "had the block". A detail marked
``moves`` (the block) therefore leaves out, when :func:`detail_report` is given ``static_share``,
the pixels where its rule holds in at least that share of the real frames: over frames from many
episodes the block stands elsewhere in each, and only scenery is dark that often. (Measured on 12
held-out episodes of the recorded mix, 2,412 frames: stock camera 27 static pixels at any share
from 0.2 to 0.5 and the block in 0.84 of the frames instead of 1.00; front camera 2 pixels, 0.90
instead of 0.99.)

Every scenario also gets ``detail_psnr``: the PSNR over the 10 % of pixels with the highest local
contrast in the real frame (edges and small objects), where plain PSNR is dominated by flat areas.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

__all__ = ["Detail", "DETAILS", "detail_mask", "car_present", "detail_report", "detail_psnr"]

ColourRule = Callable[[np.ndarray, np.ndarray, np.ndarray], np.ndarray]


def _red(r: np.ndarray, g: np.ndarray, b: np.ndarray) -> np.ndarray:
    return (r > 150) & (g < 100) & (b < 100)


def _white(r: np.ndarray, g: np.ndarray, b: np.ndarray) -> np.ndarray:
    return (r > 150) & (g > 150) & (b > 150)


def _blue(r: np.ndarray, g: np.ndarray, b: np.ndarray) -> np.ndarray:
    return (b > 150) & (r < 120) & (g < 120)


def _green(r: np.ndarray, g: np.ndarray, b: np.ndarray) -> np.ndarray:
    return (g > 150) & (r < 120) & (b < 120)


def _arm_blue(r: np.ndarray, g: np.ndarray, b: np.ndarray) -> np.ndarray:
    return (b > 150) & (r < 120)


def _black(r: np.ndarray, g: np.ndarray, b: np.ndarray) -> np.ndarray:
    return (r < 50) & (g < 50) & (b < 50)


@dataclass(frozen=True)
class Detail:
    """One detail: a colour rule inside a region of a 64x64 frame.

    Attributes:
        name: Short name (``car``, ``goal``, ...).
        rule: Colour test on the R, G, B int arrays of the region.
        rows: Row range [start, stop) of the region.
        cols: Column range [start, stop) of the region.
        min_pixels: Pixels of the colour that count as "present".
        moves: The detail moves between episodes while scenery of its colour stays put
            (:func:`detail_report`'s ``static_share`` leaves that scenery out).
    """

    name: str
    rule: ColourRule
    rows: tuple[int, int] = (0, 64)
    cols: tuple[int, int] = (0, 64)
    min_pixels: int = 1
    moves: bool = False


_DASH = (56, 64)
DETAILS: dict[str, tuple[Detail, ...]] = {
    "drive": (
        Detail("car", _red, (40, 54), (26, 38), min_pixels=3),
        Detail("speed", _white, _DASH, (8, 11)),
        Detail("abs", _blue, _DASH, (11, 21)),
        Detail("steering", _green, _DASH),
        Detail("gyro", _red, _DASH),
    ),
    "manipulation": (
        Detail("goal", _red, min_pixels=2),
        Detail("block", _black, min_pixels=2, moves=True),
        Detail("arm", _arm_blue, min_pixels=4),
    ),
    "explore": (),
}


def detail_mask(frames: np.ndarray, detail: Detail) -> np.ndarray:
    """Pixels of ``detail`` in each frame.

    Args:
        frames: uint8 [..., 64, 64, 3] RGB frames.
        detail: What to look for.

    Returns:
        bool [..., rows, cols]: the colour test over the detail's region.
    """
    if frames.dtype != np.uint8 or frames.shape[-3:] != (64, 64, 3):
        raise ValueError(f"details are defined on uint8 [..., 64, 64, 3] frames, got {frames.dtype} {frames.shape}")
    region = frames[..., slice(*detail.rows), slice(*detail.cols), :].astype(np.int16)
    return detail.rule(region[..., 0], region[..., 1], region[..., 2])


def car_present(frames: np.ndarray) -> np.ndarray:
    """Whether CarRacing's ego car is visible: bool [...] for uint8 [..., 64, 64, 3] frames."""
    car = DETAILS["drive"][0]
    return detail_mask(frames, car).sum(axis=(-2, -1)) >= car.min_pixels


def _local_contrast(frames: np.ndarray) -> np.ndarray:
    """[N, H, W] sum over channels of |pixel - mean of its 5x5 neighbourhood| (edges: replicated)."""
    x = frames.astype(np.float32)
    padded = np.pad(x, ((0, 0), (2, 2), (2, 2), (0, 0)), mode="edge")
    h, w = x.shape[1:3]
    local = sum(padded[:, i : i + h, j : j + w] for i in range(5) for j in range(5)) / 25.0
    return np.abs(x - local).sum(axis=-1)


def detail_psnr(real: np.ndarray, other: np.ndarray, share: float = 0.1) -> float:
    """PSNR (dB, peak 255) over the ``share`` of pixels with the highest local contrast in ``real``.

    Args:
        real: uint8 [N, H, W, 3] reference frames.
        other: uint8 [N, H, W, 3] frames to score.
        share: Fraction of each frame's pixels scored.
    """
    real, other = real.reshape(-1, *real.shape[-3:]), other.reshape(-1, *other.shape[-3:])
    contrast = _local_contrast(real).reshape(len(real), -1)
    keep = max(1, int(round(share * contrast.shape[1])))
    index = np.argsort(-contrast, axis=1)[:, :keep]  # [N, k]
    diff = (real.astype(np.float64) - other.astype(np.float64)).reshape(len(real), -1, 3)
    err = np.take_along_axis(diff, index[..., None], axis=1) ** 2
    mse = float(err.mean())
    return float("inf") if mse == 0 else 10.0 * np.log10(255.0**2 / mse)


def detail_report(
    real: np.ndarray, other: np.ndarray, scenario: str, static_share: float | None = None
) -> dict[str, float]:
    """How well ``other`` keeps the details of ``real`` (same frames, e.g. VAE reconstructions).

    Args:
        real: uint8 [N, 64, 64, 3] real frames.
        other: uint8 [N, 64, 64, 3] the model's version of the same frames.
        scenario: Which details to check (:data:`DETAILS`).
        static_share: For details that move (the block): pixels where the rule holds in at least this
            share of the ``real`` frames are scenery and are left out of both masks (module docstring).
            Give it only for frames spread over many episodes; None keeps every pixel.

    Returns:
        Per detail ``<name>_real`` (share of real frames that have it), ``<name>_kept`` (share of
        those where ``other`` has it too), ``<name>_iou`` (mean IoU of the colour masks over frames
        where either has it); plus ``detail_psnr`` and ``frames``.
    """
    if real.shape != other.shape:
        raise ValueError(f"real and other frames differ in shape: {real.shape} vs {other.shape}")
    if static_share is not None and not 0 < static_share <= 1:
        raise ValueError(f"static_share={static_share}: give a share in (0, 1], or None to keep every pixel")
    report: dict[str, float] = {"frames": float(len(real)), "detail_psnr": detail_psnr(real, other)}
    for detail in DETAILS[scenario]:
        a, b = detail_mask(real, detail), detail_mask(other, detail)
        if detail.moves and static_share is not None:
            scenery = a.reshape(-1, *a.shape[-2:]).mean(axis=0) >= static_share  # [rows, cols]
            a, b = a & ~scenery, b & ~scenery
            report[f"{detail.name}_static_pixels"] = float(scenery.sum())
        has_a = a.sum(axis=(-2, -1)) >= detail.min_pixels
        has_b = b.sum(axis=(-2, -1)) >= detail.min_pixels
        union = (a | b).sum(axis=(-2, -1))
        inter = (a & b).sum(axis=(-2, -1))
        report[f"{detail.name}_real"] = float(has_a.mean())
        report[f"{detail.name}_kept"] = float(has_b[has_a].mean()) if has_a.any() else float("nan")
        report[f"{detail.name}_iou"] = (
            float((inter[union > 0] / union[union > 0]).mean()) if (union > 0).any() else 1.0
        )
    return report
