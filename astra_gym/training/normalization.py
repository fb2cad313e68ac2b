"""Action-row normalisation shared by the trainers and the envs: ``row / scale`` per column.

Each feature's rows (:data:`~astra_gym.data.action_codecs.FEATURES`) are divided column-wise by
the root mean square of that column over the non-null rows of the training data::

    scale_j = sqrt(mean_j ** 2 + std_j ** 2)      (1 where that is below 1e-8)
    normalised_row = row / scale

Why scale-only (no mean subtraction): the all-zero row is the null action (action dropout,
action-free guidance, the first latent of an episode) and must stay all-zero, and the constant
"present" columns of the command features (vehicle col 3, keyboard col 15) must stay non-zero so
that "coast" and "no button" remain distinguishable from "no action". Dividing by the RMS keeps
both and still brings pose features in metres or Box2D units to unit scale; the modality
projector's bias absorbs any remaining offset. The flag column is appended after normalisation
and is never scaled.

The statistics come from a latent cache's ``index.json`` (``features[name]["stats"]``, computed
over non-null rows) or from raw rows; the resulting :class:`ActionNormalizer` is stored in every
checkpoint's metadata (:meth:`ActionNormalizer.to_dict`) so an env applies exactly the same map.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from torch import Tensor

__all__ = ["ActionNormalizer", "normalizers_to_dict", "normalizers_from_dict"]

_MIN_SCALE = 1e-8


@dataclass(frozen=True)
class ActionNormalizer:
    """Column-wise ``row / scale`` of one action feature.

    Attributes:
        feature: Feature name (e.g. ``"vehicle_command"``).
        scale: Per-column divisor (> 0), one per feature column (without the flag).
        mean: Column means the scale was computed from (informative).
        std: Column standard deviations the scale was computed from (informative).
    """

    feature: str
    scale: tuple[float, ...]
    mean: tuple[float, ...] = ()
    std: tuple[float, ...] = ()

    def __post_init__(self) -> None:
        if not self.scale or any(not np.isfinite(s) or s <= 0 for s in self.scale):
            raise ValueError(f"ActionNormalizer({self.feature!r}): scale={self.scale} must be finite and > 0")

    @property
    def dim(self) -> int:
        """Feature width d (columns without the flag)."""
        return len(self.scale)

    @classmethod
    def identity(cls, feature: str, dim: int) -> ActionNormalizer:
        """The no-op normaliser (scale 1 everywhere)."""
        return cls(feature, (1.0,) * dim)

    @classmethod
    def from_stats(cls, feature: str, stats: Mapping[str, Any] | Sequence[Mapping[str, Any]]) -> ActionNormalizer:
        """From latent-cache statistics ``features[feature]["stats"]`` (``count``, ``mean``, ``std``).

        Several caches' statistics (a list) are pooled exactly: the scale only needs each column's
        mean square, ``sum_i count_i (mean_i^2 + std_i^2) / sum_i count_i``.

        Raises:
            ValueError: The stats hold no rows (``count`` 0 everywhere).
        """
        parts = [stats] if isinstance(stats, Mapping) else list(stats)
        parts = [p for p in parts if p.get("count")]
        if not parts:
            raise ValueError(
                f"the cache holds no non-null rows of feature {feature!r}, so it cannot be normalised; "
                "record longer episodes or train with --action-norm none"
            )
        counts = np.array([p["count"] for p in parts], np.float64)[:, None]  # [K, 1]
        means = np.array([p["mean"] for p in parts], np.float64)  # [K, d]
        stds = np.array([p["std"] for p in parts], np.float64)
        mean = (counts * means).sum(0) / counts.sum()
        square = (counts * (means**2 + stds**2)).sum(0) / counts.sum()
        return cls._from_moments(feature, mean, np.sqrt(np.maximum(square - mean**2, 0.0)))

    @classmethod
    def from_rows(cls, feature: str, rows: np.ndarray | Tensor) -> ActionNormalizer:
        """From raw rows [N, d] (e.g. every env step of the training episodes)."""
        rows = np.asarray(rows, np.float64)
        if rows.ndim != 2 or len(rows) == 0:
            raise ValueError(f"rows of feature {feature!r} must be a non-empty [N, d] array, got shape {rows.shape}")
        return cls._from_moments(feature, rows.mean(0), rows.std(0))

    @classmethod
    def _from_moments(cls, feature: str, mean: np.ndarray, std: np.ndarray) -> ActionNormalizer:
        rms = np.sqrt(mean**2 + std**2)
        scale = np.where(rms < _MIN_SCALE, 1.0, rms)
        return cls(feature, _floats(scale), _floats(mean), _floats(std))

    def apply(self, rows: Tensor) -> Tensor:
        """Normalises rows [..., d] (any float dtype/device); all-zero rows stay all-zero."""
        if rows.shape[-1] != self.dim:
            raise ValueError(
                f"{self.feature} rows have {rows.shape[-1]} columns but the normaliser expects {self.dim}"
            )
        return rows / torch.tensor(self.scale, dtype=rows.dtype, device=rows.device)

    def invert(self, rows: Tensor) -> Tensor:
        """Inverse of :meth:`apply`."""
        return rows * torch.tensor(self.scale, dtype=rows.dtype, device=rows.device)

    def to_dict(self) -> dict[str, Any]:
        """JSON form (stored in checkpoint metadata), with the formula spelled out for readers."""
        return {
            "feature": self.feature,
            "formula": "normalised = row / scale (per column, before the flag is appended)",
            "scale": list(self.scale),
            "mean": list(self.mean),
            "std": list(self.std),
        }

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> ActionNormalizer:
        """Inverse of :meth:`to_dict`."""
        return cls(
            str(data["feature"]),
            _floats(data["scale"]),
            _floats(data.get("mean", ())),
            _floats(data.get("std", ())),
        )


def _floats(values: Sequence[float] | np.ndarray) -> tuple[float, ...]:
    return tuple(float(v) for v in np.asarray(values, np.float64).reshape(-1))


def normalizers_to_dict(normalizers: Mapping[str, ActionNormalizer]) -> dict[str, dict[str, Any]]:
    """``{scenario: normaliser}`` -> JSON form."""
    return {scenario: norm.to_dict() for scenario, norm in normalizers.items()}


def normalizers_from_dict(data: Mapping[str, Mapping[str, Any]]) -> dict[str, ActionNormalizer]:
    """Inverse of :func:`normalizers_to_dict`."""
    return {scenario: ActionNormalizer.from_dict(entry) for scenario, entry in data.items()}
