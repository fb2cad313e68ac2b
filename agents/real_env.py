"""The real simulator behind an Astra variant, made to look exactly like the Astra env.

Agents trained inside the world model are judged in the simulator the model imitates. For that
to be a fair test the simulator must present the same interface as the imagined env:

=================  ====================================================================
same as Astra      how
=================  ====================================================================
observation        ``Box(0, 255, (64, 64, 3), uint8)``: the simulator's frame through the
                   recording preprocessing of :mod:`astra_gym.data.sims` (the frames the
                   world model was trained on), last frame of the step
action space       the variant's (:func:`astra_gym.envs.spaces.action_space`), validated
                   the same way (out-of-space actions raise a ``ValueError``)
frame skip         the simulator's recorded frame skip (CarRacing 2, FetchPush 1,
                   ViZDoom 4); ``frames_per_step`` recorded steps per env step, like the
                   Astra env's chunk (1 for our models)
``info["frames"]`` uint8 [frames_per_step, 64, 64, 3], oldest first
episode length     the variant's ``max_episode_steps`` (``TimeLimit``)
=================  ====================================================================

What differs, on purpose: rewards and episode ends are the simulator's own (the ground truth
the reward model regresses) or, with ``task=``, a dense task's computed from the simulator's poses
(:mod:`astra_gym.data.tasks`), and ``info["sim_seed"]`` is the simulator's reset seed::

    env = make_real_env("Astra-Drive-v0")       # CarRacing-v3 behind the Astra-Drive-v0 interface
    obs, info = env.reset(seed=3)               # CarRacing track 3

The simulator is set up like the world model's training data: ``checkpoint=`` (default: the variant's
model) supplies its recorded settings, e.g. the FetchPush camera of a model trained on front-camera data.
"""

from __future__ import annotations

from typing import Any

import gymnasium as gym
import numpy as np

from astra_gym.envs.core import model_sim_config
from astra_gym.envs.spaces import action_space, check_actions
from astra_gym.envs.variants import variant

__all__ = ["RealSimEnv", "make_real_env"]

_SEED_LIMIT = 2**31  # ViZDoom takes 32-bit seeds; CarRacing and MuJoCo take any


class RealSimEnv(gym.Env):
    """A scenario's ground-truth simulator with the observation and action spaces of its Astra variant.

    Args:
        scenario: ``"drive"``, ``"manipulation"`` or ``"explore"``.
        frames_per_step: Recorded simulator steps per env step (the action is held); set it to the
            world model's ``frames_per_step`` (``env.unwrapped.engine.frames_per_step``), 1 for ours.
        frame_size: Side of the square frames (the world model's frame size, 64).
        render_mode: None or ``"rgb_array"`` (the last frame).
        task: The agent's task (:mod:`astra_gym.data.tasks`); None = the simulator's own reward.
        **sim_config: Overrides of the simulator config (:func:`astra_gym.data.sims.make_simulator`).

    Seeding: ``reset(seed=s)`` resets the simulator with seed ``s`` (``info["sim_seed"]``);
    ``reset()`` draws the next simulator seed from the env's ``np_random``.
    """

    metadata = {"render_modes": ["rgb_array"], "render_fps": 25}

    def __init__(
        self,
        scenario: str,
        frames_per_step: int = 1,
        frame_size: int = 64,
        render_mode: str | None = None,
        task: str | None = None,
        **sim_config: Any,
    ) -> None:
        from astra_gym.data.sims import make_simulator  # imports the simulator packages
        from astra_gym.data.tasks import get_task

        if frames_per_step < 1:
            raise ValueError(f"frames_per_step={frames_per_step} must be >= 1")
        if render_mode not in (None, "rgb_array"):
            raise ValueError(f"render_mode={render_mode!r} must be None or 'rgb_array'")
        self.scenario = scenario
        self.task = get_task(scenario, task)
        self.sim = make_simulator(scenario, **{"size": frame_size, **sim_config})
        self.frames_per_step = frames_per_step
        self.render_mode = render_mode
        self.metadata = {**type(self).metadata, "render_fps": float(self.sim.attrs().get("fps", 25))}
        self.action_space = action_space(scenario)
        self.observation_space = gym.spaces.Box(0, 255, (frame_size, frame_size, 3), np.uint8)
        self._env = self.sim.make_env()
        self._frame: np.ndarray | None = None
        self._pose: dict[str, np.ndarray] | None = None  # poses of the current state (dense tasks only)

    def reset(self, *, seed: int | None = None, options: dict[str, Any] | None = None) -> tuple[np.ndarray, dict]:
        """Resets the simulator (warm-up included) and returns its first frame.

        Returns:
            (frame uint8 [64, 64, 3], info with ``frames`` [1, 64, 64, 3] and ``sim_seed``).
        """
        if options:
            raise ValueError(f"RealSimEnv takes no reset options, got {sorted(options)}")
        super().reset(seed=seed)
        sim_seed = int(seed) if seed is not None else int(self.np_random.integers(_SEED_LIMIT))
        self.sim.reset(self._env, sim_seed)
        self._frame = self.sim.frame(self._env)
        self._pose = None if self.task.native else self.sim.pose(self._env)
        return self._frame.copy(), {"frames": self._frame[None].copy(), "sim_seed": sim_seed}

    def step(self, action: Any) -> tuple[np.ndarray, float, bool, bool, dict]:
        """Holds ``action`` for ``frames_per_step`` recorded steps (stopping when the simulator ends)."""
        if self._frame is None:
            raise gym.error.ResetNeeded("call env.reset() before env.step()")
        native = self._native(action)
        frames, total = [], 0.0
        terminated = truncated = False
        for _ in range(self.frames_per_step):
            _, reward, terminated, truncated, _ = self._env.step(native)
            if self._pose is None:
                total += float(reward)
            else:  # the task's reward: each pose is read once, after the step that reached it
                before, self._pose = self._pose, self.sim.pose(self._env)
                total += self.task(before, self._pose, reward)
            frames.append(self.sim.frame(self._env))
            if terminated or truncated:
                break
        self._frame = frames[-1]
        return self._frame.copy(), total, bool(terminated), bool(truncated), {"frames": np.stack(frames)}

    def _native(self, action: Any) -> np.ndarray:
        """The validated action in the simulator's dtype (same checks as the Astra env)."""
        values = check_actions(self.scenario, self.action_space, action)[0]
        return values.astype(self.action_space.dtype)

    def render(self) -> np.ndarray | None:
        """``rgb_array``: the last frame (uint8 [64, 64, 3]); None before reset or without render mode."""
        if self.render_mode != "rgb_array" or self._frame is None:
            return None
        return self._frame.copy()

    def close(self) -> None:
        """Closes the simulator."""
        self._env.close()


def make_real_env(
    env_id: str,
    max_episode_steps: int | None = None,
    frames_per_step: int = 1,
    render_mode: str | None = None,
    task: str | None = None,
    checkpoint: Any = None,
    **sim_config: Any,
) -> gym.Env:
    """The real simulator of a registered Astra id, wrapped like ``gym.make(env_id)``.

    Args:
        env_id: An Astra id (``"Astra-Drive-v0"``, ...); its scenario picks the simulator.
            ``Astra-Debug-v0`` has no simulator of its own and maps to CarRacing (its actions).
        max_episode_steps: Truncation length; None = the variant's (``TimeLimit``, as ``gym.make``).
        checkpoint: The world model whose training data the simulator is set up like (its bundle's
            simulator settings, e.g. a FetchPush camera: :func:`~astra_gym.envs.core.model_sim_config`);
            None = the variant's model.
        frames_per_step, render_mode, task, **sim_config: See :class:`RealSimEnv` (``sim_config`` overrides
            the checkpoint's settings).
    """
    spec = variant(env_id)
    sim_config = {**model_sim_config(checkpoint or spec.checkpoint, spec.scenario), **sim_config}
    env = RealSimEnv(spec.scenario, frames_per_step, render_mode=render_mode, task=task, **sim_config)
    return gym.wrappers.TimeLimit(env, max_episode_steps or spec.max_episode_steps)
