"""Ground-truth replay: rebuild any recorded state from (seed, action prefix), then branch off it.

All three simulators are deterministic given the reset seed and the action sequence (CarRacing:
Box2D; FetchPush: MuJoCo; ViZDoom: ``set_seed`` before ``new_episode``), so a recorded state is
reproduced by resetting with the episode's seed and re-sending its first k actions. The live env
can then be continued with *different* actions, which is the ground truth a world model's
counterfactual rollout is measured against.

Example::

    ep = load_episode("data/drive/episode_000000.hdf5")
    with replay(ep, 50) as session:            # the state before ep.actions[50]
        branch = session.continue_with(my_actions)
    branch.frames[0] == ep.frames[50]           # and branch.frames[1:] follow my_actions
"""

from __future__ import annotations

from typing import Any

import gymnasium as gym
import numpy as np

from astra_gym.data.episodes import Episode
from astra_gym.data.recorder import StepLog, default_action_dtype
from astra_gym.data.sims import SCENARIOS, Simulator, make_simulator

__all__ = ["ReplaySession", "replay"]


class ReplaySession:
    """A live simulator positioned after an action prefix.

    Attributes:
        sim: The simulator (same config as the recording).
        env: The live env; stepping it directly is allowed but bypasses ``actions_done``.
        seed: Reset seed.
        actions_done: Actions applied since reset (the prefix, then every continuation).
    """

    def __init__(self, sim: Simulator, env: gym.Env, seed: int, obs: Any, action_dtype: np.dtype) -> None:
        self.sim = sim
        self.env = env
        self.seed = seed
        self.obs = obs
        self.action_dtype = np.dtype(action_dtype)
        self.actions_done: list[np.ndarray] = []
        self.done = False

    @property
    def step(self) -> int:
        """Number of actions applied since reset."""
        return len(self.actions_done)

    def frame(self) -> np.ndarray:
        """Current frame [size, size, 3] uint8."""
        return self.sim.frame(self.env)

    def pose(self) -> dict[str, np.ndarray]:
        """Current ground-truth pose."""
        return self.sim.pose(self.env)

    def advance(self, actions: np.ndarray) -> None:
        """Applies ``actions`` without rendering (fast-forward).

        Raises:
            RuntimeError: The episode ended before all actions were applied.
        """
        for i, action in enumerate(np.asarray(actions, self.action_dtype)):
            self._check_live(f"action {i} of {len(actions)}")
            self.obs, _, terminated, truncated, _ = self.env.step(action)
            self.actions_done.append(action)
            self.done = bool(terminated or truncated)

    def continue_with(self, actions: np.ndarray) -> Episode:
        """Applies ``actions`` and returns what happened, in the episode format.

        The result's ``frames[0]`` / ``poses[k][0]`` / ``step_index[0]`` are the current state
        and ``frames[t+1]`` the state after ``actions[t]``. If the simulator ends the episode,
        the result stops there (fewer actions than given).
        """
        self._check_live("continue_with")
        log = StepLog(self.sim, self.env, self.action_dtype)
        log.observe()
        start = self.step
        for action in np.asarray(actions, self.action_dtype):
            self.obs, self.done = log.step(action)
            self.actions_done.append(log.actions[-1])
            if self.done:
                break
        attrs = {**self.sim.attrs(), "policy": "replay", "replay_prefix_steps": start}
        return log.to_episode(self.seed, attrs)

    def close(self) -> None:
        """Closes the env."""
        self.env.close()

    def __enter__(self) -> ReplaySession:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _check_live(self, what: str) -> None:
        if self.done:
            raise RuntimeError(f"the episode ended after {self.step} actions; cannot apply {what}")


def replay(
    episode_or_seed: Episode | int,
    actions_prefix: np.ndarray | int | None = None,
    *,
    sim: Simulator | None = None,
    scenario: str | None = None,
    **config: object,
) -> ReplaySession:
    """Rebuilds the simulator state after ``actions_prefix`` from a reset with the episode's seed.

    Args:
        episode_or_seed: A recorded :class:`Episode` (its seed and simulator config are used) or a
            simulator seed (then give ``sim`` or ``scenario``).
        actions_prefix: The actions to re-apply: an array, or an int k meaning the episode's first
            k actions; None means no action (the reset state).
        sim: Simulator to use (default: rebuilt from the episode's ``attrs["sim_config"]``, or
            ``make_simulator(scenario, **config)`` for a bare seed).
        scenario: Scenario name when ``episode_or_seed`` is a seed.
        **config: Simulator config overrides when building from ``scenario``.

    Returns:
        A live :class:`ReplaySession`; close it (or use it as a context manager) when done.
    """
    seed, prefix, sim, dtype = _resolve(episode_or_seed, actions_prefix, sim, scenario, config)
    env = sim.make_env()
    try:
        obs, _ = sim.reset(env, seed)
        session = ReplaySession(sim, env, seed, obs, dtype or default_action_dtype(env.action_space))
        session.advance(prefix if prefix is not None else np.zeros((0,)))
    except BaseException:
        env.close()
        raise
    return session


def _resolve(
    source: Episode | int, prefix: np.ndarray | int | None, sim: Simulator | None, scenario: str | None, config: dict
) -> tuple[int, np.ndarray | None, Simulator, np.dtype | None]:
    """(seed, prefix actions, simulator, action dtype) from replay()'s arguments."""
    if isinstance(source, Episode):
        if isinstance(prefix, (int, np.integer)):
            if not 0 <= prefix <= source.num_steps:
                raise ValueError(f"prefix of {prefix} actions is outside the episode's 0..{source.num_steps}")
            prefix = source.actions[:prefix]
        if sim is None:
            if "sim_config" not in source.attrs or source.scenario not in SCENARIOS:
                raise ValueError(
                    f"cannot rebuild the simulator of this {source.scenario!r} episode from its attrs; "
                    "pass the simulator it was recorded with as sim=..."
                )
            sim = make_simulator(source.scenario, **{**source.attrs["sim_config"], **config})
        return source.seed, prefix, sim, source.actions.dtype
    if isinstance(prefix, (int, np.integer)):
        raise TypeError("an int prefix needs an Episode; with a bare seed pass the actions themselves")
    if sim is None:
        if scenario is None:
            raise ValueError("replay from a bare seed needs sim=... or scenario=...")
        sim = make_simulator(scenario, **config)
    return int(source), prefix, sim, None
