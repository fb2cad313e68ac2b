"""Model-predictive path integral (MPPI) planning: a return-weighted average of noisy candidates.

Williams et al. (2017), "Information theoretic MPC for model-based reinforcement learning". Per call::

    params = warm start (the previous plan shifted) or the initial distribution
    repeat iterations:
        candidates = sample(params, num_candidates)                [n, H, *action_shape]
        returns    = imagine_returns(dynamics, state, candidates)  one batched rollout of n rows
        weights    = softmax(returns / temperature)
        params.loc = weighted average of the candidates            (exploration noise stays fixed)
    execute mode(params)[0]

Box actions: the nominal sequence plus Gaussian noise of fixed ``noise_std``, clipped to the bounds
(the weighted average of clipped samples stays inside them). MultiBinary buttons: Bernoulli
logits set to the weighted press frequencies.
"""

from __future__ import annotations

from dataclasses import dataclass

import gymnasium as gym
import numpy as np

from astra_gym.agents.mpc.planner import Dynamics, PlanResult, refine
from astra_gym.agents.mpc.sampling import ActionPrior, SequenceParams, make_sampler, with_scale

__all__ = ["MPPIConfig", "MPPIPlanner", "softmax_weights"]


@dataclass(frozen=True)
class MPPIConfig:
    """MPPI settings.

    Attributes:
        horizon: Imagined steps H per candidate.
        num_candidates: Candidates n per iteration (the batch of one imagined rollout).
        iterations: Weighted updates per planning call (1 is classic MPPI).
        temperature: lambda of the softmax weights, in return units (smaller = greedier).
        noise_std: Box: std of the exploration noise as a fraction of each half range (fixed).
        discount: Per-step discount of the imagined rewards.
        min_prob: MultiBinary: press probabilities stay in [min_prob, 1 - min_prob].
    """

    horizon: int = 8
    num_candidates: int = 64
    iterations: int = 1
    temperature: float = 1.0
    noise_std: float = 0.3
    discount: float = 0.99
    min_prob: float = 0.05

    def __post_init__(self) -> None:
        if min(self.horizon, self.num_candidates, self.iterations) < 1:
            raise ValueError(f"MPPIConfig sizes must be >= 1, got {self}")
        if self.temperature <= 0:
            raise ValueError(f"temperature={self.temperature} must be > 0")


def softmax_weights(returns: np.ndarray, temperature: float) -> np.ndarray:
    """``softmax(returns / temperature)`` computed stably (weights sum to 1)."""
    logits = (returns - returns.max()) / temperature
    weights = np.exp(logits)
    return weights / weights.sum()


class MPPIPlanner:
    """MPPI over action sequences of one action space (see the module docstring).

    Args:
        action_space: Box or MultiBinary space of the env.
        config: MPPI settings.
        prior: Where the search starts (its means; the exploration noise stays ``noise_std``);
            None: the space's centre.
    """

    def __init__(
        self, action_space: gym.Space, config: MPPIConfig | None = None, prior: ActionPrior | None = None
    ) -> None:
        self.config = config or MPPIConfig()
        cfg = self.config
        self.sampler = make_sampler(action_space, init_std=cfg.noise_std, min_prob=cfg.min_prob, prior=prior)
        self._noise = make_sampler(action_space, init_std=cfg.noise_std, min_prob=cfg.min_prob).initial(1).scale
        self.horizon = cfg.horizon

    def plan(
        self,
        dynamics: Dynamics,
        state: object,
        rng: np.random.Generator,
        warm_start: SequenceParams | None = None,
    ) -> PlanResult:
        """Plans from the batch-1 ``state`` (see :class:`~astra_gym.agents.mpc.planner.Planner`)."""
        cfg = self.config
        noise = np.repeat(self._noise, cfg.horizon, axis=0)  # fixed exploration noise
        params = warm_start if warm_start is not None else self.sampler.initial(cfg.horizon)
        params = with_scale(params, noise)

        def refit(candidates: np.ndarray, returns: np.ndarray) -> SequenceParams:
            return with_scale(self.sampler.fit(candidates, softmax_weights(returns, cfg.temperature)), noise)

        result = refine(self.sampler, dynamics, state, rng, params, cfg, refit)
        weights = softmax_weights(result.returns, cfg.temperature)
        result.diagnostics["effective_samples"] = float(1.0 / np.sum(weights**2))
        return result
