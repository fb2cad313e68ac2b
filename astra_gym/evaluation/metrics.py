"""Frame fidelity and action-following metrics: PSNR, SSIM, delta-PSNR and per-chunk aggregation.

Every function takes channels-last frames ``[..., H, W, C]`` (any number of leading axes: time,
batch, ...) and returns one value per frame, shape ``[...]``, as float64. Two input kinds are
accepted, and both frames of a pair must be of the same kind:

* ``uint8`` frames in [0, 255] (data range L = 255), as the simulators and the rollout engine
  produce them;
* floating-point frames in [0, 1] (L = 1).

PSNR
----
``PSNR = 10 log10(L² / MSE)`` with the MSE over every pixel and channel of the frame. Identical
frames have MSE 0 and PSNR ``+inf``. Aggregates (:func:`summarize`) therefore report two means:
``mean`` (``inf`` as soon as one frame is exact, which is the honest value) and ``mean_capped``,
the mean of ``min(PSNR, cap)`` with ``cap`` = :data:`PSNR_CAP_DB` (100 dB) by default. 100 dB is
above any finite uint8 PSNR of the frame sizes we use (one grey level off in one channel of one
pixel of a 64x64 RGB frame is 89 dB), so capping changes only the exact frames. ``num_inf``
counts them. :func:`delta_psnr` uses capped values so that the difference stays finite.

SSIM
----
Wang, Bovik, Sheikh and Simoncelli (2004), "Image quality assessment: from error visibility to
structural similarity", with the paper's constants: an 11x11 circular-symmetric Gaussian window
with σ = 1.5 (normalised to sum 1), K1 = 0.01, K2 = 0.03, C1 = (K1 L)², C2 = (K2 L)²::

    μx = w * x          σx² = w * x² - μx²          σxy = w * (x y) - μx μy
    SSIM map = (2 μx μy + C1)(2 σxy + C2) / ((μx² + μy² + C1)(σx² + σy² + C2))

``*`` is a "valid" correlation (only window positions fully inside the frame, as in the authors'
reference code), so frames must be at least 11x11. The frame's SSIM is the mean of the map over
positions and channels (RGB: the average of the three per-channel SSIMs). SSIM(x, x) = 1 exactly.

delta-PSNR (Genie, Bruce et al. 2024)
-------------------------------------
``ΔPSNR = PSNR(real, gen(true actions)) - PSNR(real, gen(random actions))``: how much closer to the
real continuation the model gets when it is given the actions that produced it. Positive means
the model follows the actions; about 0 means it ignores them.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import numpy as np

__all__ = [
    "PSNR_CAP_DB",
    "SSIM_WINDOW",
    "SSIM_SIGMA",
    "SSIM_K1",
    "SSIM_K2",
    "data_range",
    "mse",
    "psnr",
    "ssim",
    "gaussian_window",
    "delta_psnr",
    "summarize",
    "chunk_means",
    "per_chunk_summary",
]

PSNR_CAP_DB = 100.0
SSIM_WINDOW = 11
SSIM_SIGMA = 1.5
SSIM_K1 = 0.01
SSIM_K2 = 0.03


# ------------------------------------------------------------------------------------------------
# Inputs
# ------------------------------------------------------------------------------------------------


def data_range(frames: np.ndarray) -> float:
    """The data range L of a frame array: 255 for uint8, 1 for floating-point [0, 1] frames.

    Raises:
        ValueError: Another dtype (e.g. int64 or uint16), or float values outside [0, 1].
    """
    frames = np.asarray(frames)
    if frames.dtype == np.uint8:
        return 255.0
    if not np.issubdtype(frames.dtype, np.floating):
        raise ValueError(
            f"frames must be uint8 in [0, 255] or float in [0, 1], got dtype {frames.dtype}; "
            "convert with frames.astype(np.uint8) or frames / 255.0"
        )
    if frames.size and (float(np.nanmin(frames)) < 0.0 or float(np.nanmax(frames)) > 1.0):
        raise ValueError(
            f"float frames must lie in [0, 1], got values in [{np.nanmin(frames):.3g}, {np.nanmax(frames):.3g}]; "
            "pass uint8 frames or rescale (e.g. (x + 1) / 2 for [-1, 1] pixels)"
        )
    return 1.0


def _pair(a: np.ndarray, b: np.ndarray) -> tuple[np.ndarray, np.ndarray, float]:
    """Validated float64 copies of a frame pair and their common data range."""
    a, b = np.asarray(a), np.asarray(b)
    if a.shape != b.shape:
        raise ValueError(f"frame arrays must have the same shape, got {a.shape} and {b.shape}")
    if a.ndim < 3:
        raise ValueError(f"frames must be [..., H, W, C] (channels last), got shape {a.shape}")
    range_a, range_b = data_range(a), data_range(b)
    if range_a != range_b:
        raise ValueError(
            f"cannot compare {a.dtype} with {b.dtype} frames; convert both to uint8 or both to float in [0, 1]"
        )
    return a.astype(np.float64), b.astype(np.float64), range_a


# ------------------------------------------------------------------------------------------------
# PSNR
# ------------------------------------------------------------------------------------------------


def mse(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Per-frame mean squared error, in the frames' own units.

    Args:
        a, b: [..., H, W, C] uint8 or float [0, 1] frames of the same shape and kind.

    Returns:
        [...] float64.
    """
    x, y, _ = _pair(a, b)
    return np.mean((x - y) ** 2, axis=(-3, -2, -1))


def psnr(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Per-frame peak signal-to-noise ratio in dB (``+inf`` for identical frames).

    Args:
        a, b: [..., H, W, C] uint8 or float [0, 1] frames of the same shape and kind.

    Returns:
        [...] float64 PSNR; use :func:`summarize` to average (it handles ``inf``).
    """
    _, _, peak = _pair(a, b)
    error = mse(a, b)
    with np.errstate(divide="ignore"):
        return np.where(error > 0, 10.0 * np.log10(peak**2 / np.maximum(error, 1e-300)), np.inf)


# ------------------------------------------------------------------------------------------------
# SSIM
# ------------------------------------------------------------------------------------------------


def gaussian_window(size: int = SSIM_WINDOW, sigma: float = SSIM_SIGMA) -> np.ndarray:
    """The 1-D Gaussian whose outer product is SSIM's 2-D window, normalised to sum 1.

    Args:
        size: Window length (odd).
        sigma: Standard deviation in pixels.

    Returns:
        [size] float64; ``np.outer(g, g)`` is the 2-D window (also sums to 1).
    """
    if size < 1 or size % 2 == 0 or not sigma > 0:
        raise ValueError(f"gaussian_window needs an odd size >= 1 and sigma > 0, got size={size}, sigma={sigma}")
    offsets = np.arange(size, dtype=np.float64) - (size - 1) / 2
    weights = np.exp(-(offsets**2) / (2.0 * sigma**2))
    return weights / weights.sum()


def _filter_valid(image: np.ndarray, window: np.ndarray) -> np.ndarray:
    """Separable 'valid' correlation of [..., H, W, C] with ``outer(window, window)`` over H and W."""
    size = len(window)
    rows = np.lib.stride_tricks.sliding_window_view(image, size, axis=-3)  # [..., H-s+1, W, C, s]
    image = rows @ window
    cols = np.lib.stride_tricks.sliding_window_view(image, size, axis=-2)  # [..., H-s+1, W-s+1, C, s]
    return cols @ window


def ssim(a: np.ndarray, b: np.ndarray, window: int = SSIM_WINDOW, sigma: float = SSIM_SIGMA) -> np.ndarray:
    """Per-frame structural similarity (Wang et al. 2004; see the module docstring).

    Args:
        a, b: [..., H, W, C] uint8 or float [0, 1] frames of the same shape and kind, H, W >= ``window``.
        window: Gaussian window size (11 in the paper).
        sigma: Gaussian standard deviation (1.5 in the paper).

    Returns:
        [...] float64 in [-1, 1]; 1 for identical frames.
    """
    x, y, peak = _pair(a, b)
    if min(x.shape[-3:-1]) < window:
        raise ValueError(
            f"SSIM needs frames of at least {window}x{window} pixels (its Gaussian window), got "
            f"{x.shape[-3]}x{x.shape[-2]}; compare larger frames or pass a smaller window="
        )
    w = gaussian_window(window, sigma)
    c1, c2 = (SSIM_K1 * peak) ** 2, (SSIM_K2 * peak) ** 2
    mu_x, mu_y = _filter_valid(x, w), _filter_valid(y, w)
    var_x = _filter_valid(x * x, w) - mu_x**2
    var_y = _filter_valid(y * y, w) - mu_y**2
    cov = _filter_valid(x * y, w) - mu_x * mu_y
    numerator = (2.0 * mu_x * mu_y + c1) * (2.0 * cov + c2)
    denominator = (mu_x**2 + mu_y**2 + c1) * (var_x + var_y + c2)
    return np.mean(numerator / denominator, axis=(-3, -2, -1))


# ------------------------------------------------------------------------------------------------
# Action following and aggregation
# ------------------------------------------------------------------------------------------------


def delta_psnr(real: np.ndarray, gen_true: np.ndarray, gen_random: np.ndarray, cap: float = PSNR_CAP_DB) -> np.ndarray:
    """Per-frame ``min(PSNR(real, gen_true), cap) - min(PSNR(real, gen_random), cap)`` in dB.

    Args:
        real: [..., H, W, C] the simulator's continuation under the true actions.
        gen_true: Same shape, the model's rollout under the true actions.
        gen_random: Same shape, the model's rollout from the same start under random actions.
        cap: PSNR cap (keeps the difference finite when a rollout is exact).

    Returns:
        [...] float64; > 0 where the true actions bring the rollout closer to reality.
    """
    return np.minimum(psnr(real, gen_true), cap) - np.minimum(psnr(real, gen_random), cap)


def _json_float(value: float) -> float | str:
    """A float, or "inf"/"-inf"/"nan" for non-finite values (strict JSON has no infinities)."""
    return float(value) if math.isfinite(value) else str(value)


def summarize(values: np.ndarray | Sequence[float], cap: float | None = None) -> dict[str, Any]:
    """Mean and spread of per-frame (or per-rollout) values, safe for ``inf``.

    Args:
        values: Any shape; every element is one observation.
        cap: Upper cap for ``mean_capped`` / ``std_capped`` (:data:`PSNR_CAP_DB` for PSNR); None
            means no cap (then ``mean_capped`` equals ``mean``).

    Returns:
        JSON-ready dict: ``count``, ``mean`` (may be the string ``"inf"``), ``mean_capped``,
        ``std_capped``, ``num_inf`` (elements that are +inf). Empty input gives ``count`` 0 and
        None for the statistics.
    """
    flat = np.asarray(values, dtype=np.float64).reshape(-1)
    if flat.size == 0:
        return {"count": 0, "mean": None, "mean_capped": None, "std_capped": None, "num_inf": 0}
    capped = flat if cap is None else np.minimum(flat, cap)
    return {
        "count": int(flat.size),
        "mean": _json_float(float(np.mean(flat))),
        "mean_capped": _json_float(float(np.mean(capped))),
        "std_capped": _json_float(float(np.std(capped))),
        "num_inf": int(np.sum(np.isposinf(flat))),
    }


def chunk_means(values: np.ndarray, frames_per_chunk: int, cap: float | None = None) -> np.ndarray:
    """Averages per-frame values within each chunk of a rollout.

    Args:
        values: [N, K * P] per-frame values of N rollouts of K chunks of P frames each (frame 0 is
            the first generated frame).
        frames_per_chunk: P.
        cap: Optional upper cap applied before averaging (e.g. :data:`PSNR_CAP_DB` for PSNR).

    Returns:
        [N, K] float64 per-chunk means.
    """
    values = np.asarray(values, dtype=np.float64)
    if values.ndim != 2 or frames_per_chunk < 1 or values.shape[1] % frames_per_chunk:
        raise ValueError(
            f"chunk_means needs [N, K * P] values with P={frames_per_chunk} >= 1 dividing the frame count, "
            f"got shape {values.shape}"
        )
    if cap is not None:
        values = np.minimum(values, cap)
    return values.reshape(values.shape[0], -1, frames_per_chunk).mean(axis=2)


def per_chunk_summary(values: np.ndarray, frames_per_chunk: int, cap: float | None = None) -> list[dict[str, Any]]:
    """:func:`summarize` of every chunk index over all rollouts and the frames of that chunk.

    Args:
        values: [N, K * P] per-frame values (see :func:`chunk_means`).
        frames_per_chunk: P.
        cap: As in :func:`summarize`.

    Returns:
        K dicts, entry k-1 for chunk k, each with ``"chunk": k`` added.
    """
    values = np.asarray(values, dtype=np.float64)
    chunk_means(values, frames_per_chunk)  # validates the shape
    chunks = values.reshape(values.shape[0], -1, frames_per_chunk)
    return [{"chunk": k + 1, **summarize(chunks[:, k], cap)} for k in range(chunks.shape[1])]
