"""Episode loops shared by the training script, the MPC runner and the benchmarks.

A :class:`Policy` sees what a Gymnasium env returns (observation and info, so an MPC policy can
read ``info["frames"]``) and is told when an episode starts. Three implementations cover the
benchmark's agents: :class:`RandomPolicy`, :class:`SB3Policy` (any trained SB3 model) and
:class:`~astra_gym.agents.mpc.controller.MPCController`. :func:`evaluate` runs them for one
episode per seed, so every agent is judged on the same episodes::

    env = make_real_env("Astra-Drive-v0")
    stats = evaluate(env, SB3Policy(PPO.load("runs/.../final_model.zip")), seeds=[1000, 1001])
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol

import gymnasium as gym
import numpy as np
import torch

__all__ = ["Policy", "RandomPolicy", "SB3Policy", "EvalResult", "run_episode", "evaluate"]


class Policy(Protocol):
    """What the episode loop calls (see the module docstring)."""

    def reset(self, obs: np.ndarray, info: dict) -> None:
        """A new episode starts with ``obs`` / ``info`` (from ``env.reset``)."""

    def act(self, obs: np.ndarray, info: dict) -> Any:
        """The action for the current observation (``info`` of the last ``reset`` or ``step``)."""


class RandomPolicy:
    """Uniform random actions from the action space, seeded.

    Args:
        space: The action space to sample.
        seed: Seeds the space's generator (every draw comes from it).
    """

    def __init__(self, space: gym.Space, seed: int) -> None:
        self.space = space
        self.space.seed(seed)

    def reset(self, obs: np.ndarray, info: dict) -> None:
        """Nothing to reset."""

    def act(self, obs: np.ndarray, info: dict) -> Any:
        """A uniform sample of the action space."""
        return self.space.sample()


class SB3Policy:
    """A trained Stable-Baselines3 model as a :class:`Policy` (``model.predict`` on one observation).

    Args:
        model: Any SB3 algorithm (or object with SB3's ``predict``).
        deterministic: Use the mode of the action distribution (SB3's evaluation default); False
            samples it, as during training.
        seed: With ``deterministic=False``: episode ``k`` reseeds torch's global generator, which SB3
            samples from (it takes no generator), with ``seed + k``, so evaluations repeat exactly.
    """

    def __init__(self, model: Any, deterministic: bool = True, seed: int = 0) -> None:
        self.model = model
        self.deterministic = deterministic
        self.seed = seed
        self.episodes = 0

    def reset(self, obs: np.ndarray, info: dict) -> None:
        """Counts episodes; a sampling policy reseeds torch's generator (the policies are feed-forward)."""
        if not self.deterministic:
            torch.manual_seed(self.seed + self.episodes)
        self.episodes += 1

    def act(self, obs: np.ndarray, info: dict) -> Any:
        """``model.predict(obs)``; SB3 transposes HWC images and clips Box actions itself."""
        action, _ = self.model.predict(obs, deterministic=self.deterministic)
        return action


@dataclass
class EvalResult:
    """Returns of one policy over a list of seeded episodes.

    Attributes:
        seeds: Reset seed of each episode.
        returns: Undiscounted return of each episode.
        lengths: Env steps of each episode.
        seconds: Wall-clock time of all episodes (policy included).
    """

    seeds: list[int] = field(default_factory=list)
    returns: list[float] = field(default_factory=list)
    lengths: list[int] = field(default_factory=list)
    seconds: float = 0.0

    @property
    def mean_return(self) -> float:
        """Mean return (NaN without episodes)."""
        return float(np.mean(self.returns)) if self.returns else float("nan")

    @property
    def std_return(self) -> float:
        """Standard deviation of the returns (0 for one episode)."""
        return float(np.std(self.returns)) if self.returns else float("nan")

    def to_dict(self) -> dict:
        """JSON-able summary (per-episode values included)."""
        return {
            "mean_return": self.mean_return,
            "std_return": self.std_return,
            "returns": list(self.returns),
            "lengths": list(self.lengths),
            "seeds": list(self.seeds),
            "env_steps": int(sum(self.lengths)),
            "seconds": self.seconds,
        }


def run_episode(env: gym.Env, policy: Policy, seed: int) -> tuple[float, int]:
    """Runs one episode to termination or truncation.

    Returns:
        (undiscounted return, number of steps).
    """
    obs, info = env.reset(seed=seed)
    policy.reset(obs, info)
    total, steps, done = 0.0, 0, False
    while not done:
        obs, reward, terminated, truncated, info = env.step(policy.act(obs, info))
        total += float(reward)
        steps += 1
        done = terminated or truncated
    return total, steps


def evaluate(
    env: gym.Env,
    policy: Policy,
    seeds: Sequence[int],
    on_episode: Callable[[EvalResult], object] | None = None,
) -> EvalResult:
    """One episode of ``policy`` per seed in ``env`` (e.g. :func:`~astra_gym.agents.real_env.make_real_env`).

    ``on_episode`` is called with the result so far after every episode (progress, partial saves).
    """
    result = EvalResult()
    start = time.perf_counter()
    for seed in seeds:
        total, steps = run_episode(env, policy, int(seed))
        result.seeds.append(int(seed))
        result.returns.append(total)
        result.lengths.append(steps)
        if on_episode is not None:
            result.seconds = time.perf_counter() - start
            on_episode(result)
    result.seconds = time.perf_counter() - start
    return result
