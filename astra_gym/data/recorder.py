"""Turns a simulator plus a behaviour policy into :class:`~astra_gym.data.episodes.Episode` objects.

The recorder is simulator-agnostic: anything implementing
:class:`~astra_gym.data.sims.base.Simulator` works, including
:class:`~astra_gym.data.sims.base.GymSimulator` for any Gymnasium env with
``render_mode="rgb_array"``. One env is built lazily and reused across episodes (every episode
starts from ``reset(seed)``, which is all replay needs).

Example::

    sim = make_simulator("drive")
    with Recorder(sim, make_policy("mix", "drive")) as rec:
        ep = rec.record(seed=0, steps=200, policy_seed=1)
"""

from __future__ import annotations

from typing import Any

import gymnasium as gym
import numpy as np

from astra_gym.data.episodes import Episode
from astra_gym.data.policies import Policy
from astra_gym.data.sims.base import Simulator

__all__ = ["Recorder", "StepLog", "default_action_dtype"]


def default_action_dtype(space: gym.Space) -> np.dtype:
    """Stored action dtype of a space: float32 for Box, int8 for MultiBinary / Discrete / others."""
    return np.dtype(np.float32) if isinstance(space, gym.spaces.Box) else np.dtype(np.int8)


class StepLog:
    """Accumulates what one episode produces; ``to_episode`` stacks it into an :class:`Episode`."""

    def __init__(self, sim: Simulator, env: gym.Env, action_dtype: np.dtype) -> None:
        self.sim = sim
        self.env = env
        self.action_dtype = np.dtype(action_dtype)
        self.frames: list[np.ndarray] = []
        self.actions: list[np.ndarray] = []
        self.rewards: list[float] = []
        self.terminated: list[bool] = []
        self.truncated: list[bool] = []
        self.step_index: list[int] = []
        self.poses: dict[str, list[np.ndarray]] = {}

    def observe(self) -> None:
        """Appends the current frame, pose and step index."""
        self.frames.append(self.sim.frame(self.env))
        self.step_index.append(self.sim.step_index(self.env))
        for key, value in self.sim.pose(self.env).items():
            self.poses.setdefault(key, []).append(value)

    def step(self, action: Any) -> tuple[Any, bool]:
        """Steps the env with ``action``, logs the transition and the new state; returns (obs, done).

        The action is cast to the stored dtype *before* stepping, so replaying the stored
        actions sends the simulator exactly the same values.
        """
        action = np.asarray(action, self.action_dtype)
        obs, reward, terminated, truncated, _ = self.env.step(action)
        self.actions.append(action)
        self.rewards.append(float(reward))
        self.terminated.append(bool(terminated))
        self.truncated.append(bool(truncated))
        self.observe()
        return obs, bool(terminated or truncated)

    def to_episode(self, seed: int, attrs: dict) -> Episode:
        """Stacks the log into an episode."""
        shape = tuple(self.env.action_space.shape or ())
        empty = np.zeros((0, *shape), self.action_dtype)
        actions = np.stack(self.actions) if self.actions else empty
        return Episode(
            scenario=self.sim.scenario,
            env_id=self.sim.env_id,
            seed=seed,
            frames=np.stack(self.frames),
            actions=actions,
            rewards=np.array(self.rewards, np.float32),
            terminated=np.array(self.terminated, bool),
            truncated=np.array(self.truncated, bool),
            step_index=np.array(self.step_index, np.int64),
            poses={k: np.stack(v) for k, v in self.poses.items()},
            attrs=attrs,
        )


class Recorder:
    """Records episodes of ``sim`` driven by ``policy``.

    Args:
        sim: The simulator (resolution, camera, frame skip are its config).
        policy: Behaviour policy; reset with a fresh generator every episode.
        action_dtype: Stored action dtype (default: float32 for Box spaces, int8 otherwise).
    """

    def __init__(self, sim: Simulator, policy: Policy, action_dtype: np.dtype | None = None) -> None:
        self.sim = sim
        self.policy = policy
        self.action_dtype = action_dtype
        self._env: gym.Env | None = None

    @property
    def env(self) -> gym.Env:
        """The live env (built on first use)."""
        if self._env is None:
            self._env = self.sim.make_env()
        return self._env

    def record(self, seed: int, steps: int, policy_seed: int | None = None) -> Episode:
        """Records one episode of at most ``steps`` actions from ``reset(seed)``.

        The episode ends early when the simulator terminates or truncates it; otherwise its
        last step is marked truncated (the step budget is the time limit).

        Args:
            seed: Simulator seed (fixes the track / block and goal / spawn point).
            steps: Maximum number of actions T.
            policy_seed: Seed of the policy's generator (default: ``seed``).
        """
        if steps < 1:
            raise ValueError(f"steps={steps} must be >= 1")
        policy_seed = seed if policy_seed is None else int(policy_seed)
        env = self.env
        obs, _ = self.sim.reset(env, seed)
        self.policy.reset(env, np.random.default_rng(policy_seed))
        log = StepLog(self.sim, env, self._dtype(env.action_space))
        log.observe()
        for _ in range(steps):
            obs, done = log.step(self.policy.act(obs, env))
            if done:
                break
        if not (log.terminated[-1] or log.truncated[-1]):
            log.truncated[-1] = True
        attrs = {
            **self.sim.attrs(),
            "policy": self.policy.name,
            "policy_seed": policy_seed,
            "policy_trace": self.policy.trace(),
        }
        return log.to_episode(seed, attrs)

    def close(self) -> None:
        """Closes the env."""
        if self._env is not None:
            self._env.close()
            self._env = None

    def __enter__(self) -> Recorder:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _dtype(self, space: gym.Space) -> np.dtype:
        return default_action_dtype(space) if self.action_dtype is None else np.dtype(self.action_dtype)
