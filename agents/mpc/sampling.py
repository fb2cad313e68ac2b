"""Distributions over action sequences that respect each action space (CEM and MPPI share them).

=================  ===============================  ==========================================
space              distribution per (step, comp.)   fit to weighted samples
=================  ===============================  ==========================================
``Box``            Gaussian ``N(loc, scale)``,      weighted mean and standard deviation
                   samples clipped to the bounds    (std floored at ``min_std`` x half range)
``MultiBinary``    Bernoulli with logits ``loc``    weighted button frequency p, clipped to
                   (``scale`` unused)               [min_prob, 1 - min_prob], as logits
=================  ===============================  ==========================================

Each sampler starts its search (and every step a receding horizon appends) from an initial
distribution: the centre of the space by default, or an :class:`ActionPrior`, e.g. the actions of
the world model's training data (:func:`~astra_gym.agents.mpc.world_model.behaviour_prior`).
Every draw takes the caller's ``numpy.random.Generator``.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Protocol

import gymnasium as gym
import numpy as np

__all__ = [
    "ActionPrior",
    "SequenceParams",
    "ActionSampler",
    "BoxSampler",
    "BernoulliSampler",
    "make_sampler",
    "with_scale",
]


@dataclass(frozen=True)
class SequenceParams:
    """Parameters of a distribution over H-step action sequences.

    Attributes:
        loc: [H, *action_shape] Box means, or Bernoulli logits for MultiBinary.
        scale: [H, *action_shape] Box standard deviations (zeros for MultiBinary).
    """

    loc: np.ndarray
    scale: np.ndarray

    @property
    def horizon(self) -> int:
        """Steps H."""
        return self.loc.shape[0]


@dataclass(frozen=True)
class ActionPrior:
    """Where a planner starts searching, per action component, in native units.

    Attributes:
        loc: [*action_shape] Box means, or MultiBinary press probabilities.
        scale: [*action_shape] Box standard deviations (unused for MultiBinary).
    """

    loc: np.ndarray
    scale: np.ndarray


class ActionSampler(Protocol):
    """Samples, fits and shifts :class:`SequenceParams` for one action space."""

    def initial(self, horizon: int) -> SequenceParams:
        """The broad starting distribution."""

    def sample(self, params: SequenceParams, n: int, rng: np.random.Generator) -> np.ndarray:
        """n sequences [n, H, *action_shape] inside the space."""

    def fit(self, samples: np.ndarray, weights: np.ndarray) -> SequenceParams:
        """Maximum-likelihood parameters of weighted samples (weights sum to 1)."""

    def mode(self, params: SequenceParams) -> np.ndarray:
        """The most likely sequence [H, *action_shape] (what is executed)."""

    def shift(self, params: SequenceParams) -> SequenceParams:
        """Warm start of the next control step: drop step 0, append an initial step."""


def _shift(params: SequenceParams, last: SequenceParams) -> SequenceParams:
    return SequenceParams(
        loc=np.concatenate([params.loc[1:], last.loc]), scale=np.concatenate([params.scale[1:], last.scale])
    )


class BoxSampler:
    """Clipped Gaussians for a ``Box`` space.

    Args:
        space: The action space.
        init_std: Initial standard deviation as a fraction of each component's half range
            (without a prior).
        min_std: Floor of the fitted standard deviation, same unit (keeps exploring).
        prior: Initial means and standard deviations (means clipped to the box, standard
            deviations floored at ``min_std``); None: the centre of the box with ``init_std``.
    """

    def __init__(
        self, space: gym.spaces.Box, init_std: float = 0.5, min_std: float = 0.05, prior: ActionPrior | None = None
    ) -> None:
        if not np.all(np.isfinite(space.low)) or not np.all(np.isfinite(space.high)):
            raise ValueError(f"MPC needs a bounded Box action space, got {space}")
        self.space = space
        self.low, self.high = space.low.astype(np.float64), space.high.astype(np.float64)
        self.half_range = (self.high - self.low) / 2
        self.init_std, self.min_std = init_std, min_std
        if prior is None:
            self._loc, self._scale = (self.low + self.high) / 2, init_std * self.half_range
        else:
            _check_prior(prior, space.shape)
            self._loc = np.clip(np.asarray(prior.loc, np.float64), self.low, self.high)
            self._scale = np.maximum(np.asarray(prior.scale, np.float64), min_std * self.half_range)

    def initial(self, horizon: int) -> SequenceParams:
        """The prior's Gaussian (default: centred in the box with ``init_std`` x half range) at every step."""
        shape = (horizon, *self.space.shape)
        return SequenceParams(np.broadcast_to(self._loc, shape).copy(), np.broadcast_to(self._scale, shape).copy())

    def sample(self, params: SequenceParams, n: int, rng: np.random.Generator) -> np.ndarray:
        """Gaussian draws clipped to the bounds, in the space's dtype."""
        noise = rng.standard_normal((n, *params.loc.shape))
        return np.clip(params.loc + params.scale * noise, self.low, self.high).astype(self.space.dtype)

    def fit(self, samples: np.ndarray, weights: np.ndarray) -> SequenceParams:
        """Weighted mean and std per (step, component)."""
        values = samples.astype(np.float64)
        w = weights.reshape(-1, *([1] * (values.ndim - 1)))
        loc = (w * values).sum(axis=0)
        std = np.sqrt((w * (values - loc) ** 2).sum(axis=0))
        return SequenceParams(loc, np.maximum(std, self.min_std * self.half_range))

    def mode(self, params: SequenceParams) -> np.ndarray:
        """The means, clipped to the bounds."""
        return np.clip(params.loc, self.low, self.high).astype(self.space.dtype)

    def shift(self, params: SequenceParams) -> SequenceParams:
        """Receding horizon: the plan moves one step earlier, the new last step starts broad."""
        return _shift(params, self.initial(1))


class BernoulliSampler:
    """Independent Bernoulli buttons for a ``MultiBinary`` space.

    Args:
        space: The action space.
        min_prob: Fitted press probabilities are kept in [min_prob, 1 - min_prob].
        prior: Initial press probabilities (``loc``, kept in the same range); None: 1/2 each.
    """

    def __init__(
        self, space: gym.spaces.MultiBinary, min_prob: float = 0.05, prior: ActionPrior | None = None
    ) -> None:
        if not 0.0 < min_prob < 0.5:
            raise ValueError(f"min_prob={min_prob} must be in (0, 0.5)")
        self.space = space
        self.min_prob = min_prob
        probs = np.full(space.shape, 0.5)
        if prior is not None:
            _check_prior(prior, space.shape)
            probs = np.clip(np.asarray(prior.loc, np.float64), min_prob, 1.0 - min_prob)
        self._logits = np.log(probs) - np.log1p(-probs)

    def initial(self, horizon: int) -> SequenceParams:
        """The prior's press probabilities (default 1/2: logits 0) at every step."""
        loc = np.broadcast_to(self._logits, (horizon, *self.space.shape)).copy()
        return SequenceParams(loc, np.zeros_like(loc))

    def sample(self, params: SequenceParams, n: int, rng: np.random.Generator) -> np.ndarray:
        """0/1 button states (int8)."""
        probs = 1.0 / (1.0 + np.exp(-params.loc))
        return (rng.random((n, *params.loc.shape)) < probs).astype(self.space.dtype)

    def fit(self, samples: np.ndarray, weights: np.ndarray) -> SequenceParams:
        """Weighted press frequency per (step, button), as clipped logits."""
        w = weights.reshape(-1, *([1] * (samples.ndim - 1)))
        probs = np.clip((w * samples.astype(np.float64)).sum(axis=0), self.min_prob, 1.0 - self.min_prob)
        loc = np.log(probs) - np.log1p(-probs)
        return SequenceParams(loc, np.zeros_like(loc))

    def mode(self, params: SequenceParams) -> np.ndarray:
        """Buttons pressed where the probability exceeds 1/2."""
        return (params.loc > 0).astype(self.space.dtype)

    def shift(self, params: SequenceParams) -> SequenceParams:
        """Receding horizon (see :meth:`BoxSampler.shift`)."""
        return _shift(params, self.initial(1))


def _check_prior(prior: ActionPrior, shape: tuple[int, ...]) -> None:
    for name in ("loc", "scale"):
        value = np.asarray(getattr(prior, name))
        if value.shape != tuple(shape) or not np.all(np.isfinite(value)):
            raise ValueError(f"ActionPrior.{name} must be finite with the action shape {tuple(shape)}, got {value}")


def make_sampler(
    space: gym.Space,
    init_std: float = 0.5,
    min_std: float = 0.05,
    min_prob: float = 0.05,
    prior: ActionPrior | None = None,
) -> BoxSampler | BernoulliSampler:
    """The sampler of ``space`` (Box or MultiBinary) starting from ``prior``; other spaces raise a ValueError."""
    if isinstance(space, gym.spaces.Box):
        return BoxSampler(space, init_std, min_std, prior)
    if isinstance(space, gym.spaces.MultiBinary):
        return BernoulliSampler(space, min_prob, prior)
    raise ValueError(f"MPC samples Box and MultiBinary action spaces, got {space}")


def with_scale(params: SequenceParams, scale: np.ndarray) -> SequenceParams:
    """``params`` with another ``scale`` (MPPI keeps its exploration noise fixed)."""
    return dataclasses.replace(params, scale=scale)
