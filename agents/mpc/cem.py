"""Cross-entropy method (CEM) planning: refit the sampling distribution to the elite candidates.

Rubinstein (1999); as an MPC planner over a learned model, PlaNet (Hafner et al. 2019). Per call::

    params = warm start or the broad initial distribution          (sampling.py, per action space)
    repeat iterations:
        candidates = sample(params, num_candidates)                [n, H, *action_shape]
        returns    = imagine_returns(dynamics, state, candidates)  one batched rollout of n rows
        params     = fit(top num_elites candidates, equal weights)
    execute mode(params)[0]

Box actions: Gaussian means and standard deviations per (step, component), samples clipped to
the bounds. MultiBinary buttons: Bernoulli logits refit to the elites' press frequencies.
"""

from __future__ import annotations

from dataclasses import dataclass

import gymnasium as gym
import numpy as np

from astra_gym.agents.mpc.planner import Dynamics, PlanResult, refine
from astra_gym.agents.mpc.sampling import ActionPrior, SequenceParams, make_sampler

__all__ = ["CEMConfig", "CEMPlanner"]


@dataclass(frozen=True)
class CEMConfig:
    """CEM settings.

    Attributes:
        horizon: Imagined steps H per candidate.
        num_candidates: Candidates n per iteration (the batch of one imagined rollout).
        num_elites: Best candidates the distribution is refit to.
        iterations: Refits per planning call.
        discount: Per-step discount of the imagined rewards.
        init_std: Box: initial std as a fraction of each component's half range.
        min_std: Box: floor of the refit std, same unit.
        min_prob: MultiBinary: press probabilities stay in [min_prob, 1 - min_prob].
    """

    horizon: int = 8
    num_candidates: int = 64
    num_elites: int = 8
    iterations: int = 3
    discount: float = 0.99
    init_std: float = 0.5
    min_std: float = 0.05
    min_prob: float = 0.05

    def __post_init__(self) -> None:
        if min(self.horizon, self.num_candidates, self.num_elites, self.iterations) < 1:
            raise ValueError(f"CEMConfig sizes must be >= 1, got {self}")
        if self.num_elites > self.num_candidates:
            raise ValueError(f"num_elites={self.num_elites} must be <= num_candidates={self.num_candidates}")


class CEMPlanner:
    """CEM over action sequences of one action space (see the module docstring).

    Args:
        action_space: Box or MultiBinary space of the env.
        config: CEM settings.
        prior: Where the search starts (and each new plan step with it); None: the space's centre
            with ``config.init_std``.
    """

    def __init__(
        self, action_space: gym.Space, config: CEMConfig | None = None, prior: ActionPrior | None = None
    ) -> None:
        self.config = config or CEMConfig()
        cfg = self.config
        self.sampler = make_sampler(action_space, cfg.init_std, cfg.min_std, cfg.min_prob, prior)
        self.horizon = self.config.horizon

    def plan(
        self,
        dynamics: Dynamics,
        state: object,
        rng: np.random.Generator,
        warm_start: SequenceParams | None = None,
    ) -> PlanResult:
        """Plans from the batch-1 ``state`` (see :class:`~astra_gym.agents.mpc.planner.Planner`)."""
        cfg = self.config
        params = warm_start if warm_start is not None else self.sampler.initial(cfg.horizon)
        uniform = np.full(cfg.num_elites, 1.0 / cfg.num_elites)

        def refit(candidates: np.ndarray, returns: np.ndarray) -> SequenceParams:
            elites = np.argsort(returns)[-cfg.num_elites :]
            return self.sampler.fit(candidates[elites], uniform)

        return refine(self.sampler, dynamics, state, rng, params, cfg, refit)
