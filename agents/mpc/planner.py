"""What every MPC planner shares: the ``Dynamics`` it imagines with, the ``Planner`` protocol,
``PlanResult``, and the batched scoring of candidate action sequences.

A planner never steps a real environment. Given a batch-1 ``state`` of some :class:`Dynamics`
(the world model through :class:`~astra_gym.agents.mpc.world_model.WorldModelDynamics`, or a toy
model in the tests), it forks the state once per candidate and imagines all candidates together::

    children = dynamics.fork(state, n)                    # n copies of the root state
    for t in range(horizon):                              # one batched step per plan step
        children = dynamics.step(children, actions[:, t])
        reward, logit = dynamics.score(children, actions[:, t])
        returns += alive * discount**t * reward
        alive *= 1 - sigmoid(logit)                       # soft termination

``alive`` is the predicted probability that the episode is still running, so rewards imagined
after a likely termination count less; with a termination logit of -inf it stays 1. Dynamics with
a ``terminal_value(state) -> [B]`` method (optional) add ``alive * discount**H * value`` at the
horizon (:mod:`astra_gym.agents.mpc.value`).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Protocol, TypeVar

import numpy as np

from astra_gym.agents.mpc.sampling import ActionSampler, SequenceParams

__all__ = ["Dynamics", "Planner", "PlanResult", "imagine_returns", "refine"]

State = TypeVar("State")


class Dynamics(Protocol[State]):
    """Batched, functional dynamics with a reward model, in native actions.

    States are never modified in place; every method returns a new one.
    """

    def fork(self, state: State, n: int) -> State:
        """Repeats every row ``n`` times (row b -> rows b*n .. b*n + n - 1)."""

    def step(self, state: State, actions: np.ndarray) -> State:
        """Advances every row by one env step under ``actions`` [B, *action_shape]."""

    def score(self, state: State, actions: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """(reward [B], termination logit [B]) of the step that led to ``state``."""

    # Optional: ``terminal_value(state) -> [B]``, the value of each row's state at the horizon.


@dataclass(frozen=True)
class PlanResult:
    """One planning call.

    Attributes:
        action: The first action of the plan (native, inside the space): execute this one.
        plan: [H, *action_shape] the executable sequence (mode of the final distribution).
        params: The final distribution over sequences.
        warm_start: ``params`` shifted by one step: pass it to the next ``plan`` call.
        returns: [n] imagined returns of the last iteration's candidates.
        best_return: Highest imagined return over all iterations.
        diagnostics: ``iterations``, ``candidates``, ``imagined_steps`` (rows x steps imagined),
            ``mean_return`` / ``max_return`` per iteration.
    """

    action: np.ndarray
    plan: np.ndarray
    params: SequenceParams
    warm_start: SequenceParams
    returns: np.ndarray
    best_return: float
    diagnostics: dict[str, Any] = field(default_factory=dict)


class Planner(Protocol):
    """A sampling-based planner (CEM, MPPI): one call plans from one root state."""

    horizon: int
    sampler: ActionSampler

    def plan(
        self,
        dynamics: Dynamics,
        state: Any,
        rng: np.random.Generator,
        warm_start: SequenceParams | None = None,
    ) -> PlanResult:
        """Plans from the batch-1 ``state``; every random draw comes from ``rng``."""


def _sigmoid(x: np.ndarray) -> np.ndarray:
    """Overflow-free logistic function (exact 0 and 1 at -inf and +inf)."""
    return 0.5 * (1.0 + np.tanh(0.5 * x))


def imagine_returns(dynamics: Dynamics, state: Any, actions: np.ndarray, discount: float = 1.0) -> np.ndarray:
    """Discounted imagined returns of n candidate sequences from one root state.

    Args:
        dynamics: The model to imagine with.
        state: A batch-1 state (not modified).
        actions: [n, H, *action_shape] candidate sequences (inside the action space).
        discount: Per-step discount.

    Returns:
        float64 [n] returns (soft termination, see the module docstring).
    """
    count, horizon = actions.shape[:2]
    children = dynamics.fork(state, count)
    returns = np.zeros(count)
    alive = np.ones(count)
    for t in range(horizon):
        children = dynamics.step(children, actions[:, t])
        reward, logit = dynamics.score(children, actions[:, t])
        returns += alive * discount**t * np.asarray(reward, np.float64)
        alive *= 1.0 - _sigmoid(np.asarray(logit, np.float64))
    terminal_value = getattr(dynamics, "terminal_value", None)
    if terminal_value is not None:
        returns += alive * discount**horizon * np.asarray(terminal_value(children), np.float64)
    return returns


def refine(
    sampler: ActionSampler,
    dynamics: Dynamics,
    state: Any,
    rng: np.random.Generator,
    params: SequenceParams,
    cfg: Any,
    refit: Callable[[np.ndarray, np.ndarray], SequenceParams],
) -> PlanResult:
    """The loop CEM and MPPI share: ``cfg.iterations`` rounds of sample, imagine, refit.

    Args:
        sampler: Distribution family of the action space.
        dynamics: The model to imagine with.
        state: A batch-1 state (not modified).
        rng: Source of every draw.
        params: The starting distribution.
        cfg: Planner settings with ``horizon``, ``num_candidates``, ``iterations`` and ``discount``.
        refit: ``(candidates [n, H, ...], returns [n]) -> params``: the planner's update rule.

    Returns:
        The plan of the final distribution (its mode), with the per-iteration diagnostics.
    """
    means, maxima = [], []
    for _ in range(cfg.iterations):
        candidates = sampler.sample(params, cfg.num_candidates, rng)
        returns = imagine_returns(dynamics, state, candidates, cfg.discount)
        params = refit(candidates, returns)
        means.append(float(returns.mean()))
        maxima.append(float(returns.max()))
    plan = sampler.mode(params)
    return PlanResult(
        action=plan[0],
        plan=plan,
        params=params,
        warm_start=sampler.shift(params),
        returns=returns,
        best_return=max(maxima),
        diagnostics={
            "iterations": cfg.iterations,
            "candidates": cfg.num_candidates,
            "imagined_steps": cfg.iterations * cfg.num_candidates * cfg.horizon,
            "mean_return": means,
            "max_return": maxima,
        },
    )
