"""The simulator interface every scenario implements, and the generic Gymnasium implementation.

A :class:`Simulator` is everything the recorder and the replayer need to know about one simulator,
and nothing about behaviour policies:

* ``make_env()``: a live Gymnasium env, already frame-skipped (one env step = one recorded step);
* ``reset(env, seed)``: deterministic reset (the same seed always gives the same state);
* ``frame(env)``: the current RGB frame at the configured size;
* ``pose(env)``: the ground-truth pose arrays of the current state;
* ``step_index(env)``: the simulator's own step counter of the current state;
* ``attrs()``: what is stored with every episode (frame skip, camera, fps, the config for replay).

Configs are frozen dataclasses; ``config_dict()`` / :func:`astra_gym.data.sims.make_simulator`
round-trip them through an episode's ``attrs["sim_config"]``, which is how replay rebuilds the
exact simulator an episode was recorded with.
"""

from __future__ import annotations

import dataclasses
from abc import ABC, abstractmethod
from typing import Any, ClassVar

import cv2
import gymnasium as gym
import numpy as np

from astra_gym.data.sims.frame_skip import FrameSkip

__all__ = ["Simulator", "GymConfig", "GymSimulator", "resize_frame"]


def resize_frame(frame: np.ndarray, size: int | None) -> np.ndarray:
    """Resizes an RGB uint8 frame to ``size x size`` (area interpolation), or copies it if ``size`` is None.

    The full field of view is kept (no crop), so non-square sources are squashed; the source
    size is stored in the episode attrs (``native_size``).
    """
    if frame.dtype != np.uint8 or frame.ndim != 3 or frame.shape[2] != 3:
        raise ValueError(f"expected an RGB uint8 frame [H, W, 3], got {frame.dtype} {frame.shape}")
    if size is None or frame.shape[:2] == (size, size):
        return np.ascontiguousarray(frame)
    return cv2.resize(frame, (size, size), interpolation=cv2.INTER_AREA)


class Simulator(ABC):
    """One simulator with a fixed resolution, camera and frame skip (see the module docstring).

    Attributes:
        scenario: Scenario name stored in episodes ("drive", "manipulation", "explore", ...).
        config: The frozen config this simulator was built from.
        pose_keys: Names of the arrays :meth:`pose` returns.
    """

    scenario: ClassVar[str] = ""
    pose_keys: ClassVar[tuple[str, ...]] = ()

    def __init__(self, config: Any) -> None:
        self.config = config

    @property
    def env_id(self) -> str:
        """Identifier of the underlying simulator (Gymnasium id or scenario file)."""
        return self.config.env_id

    @property
    def size(self) -> int | None:
        """Stored frame side in pixels, None for the simulator's native size."""
        return self.config.size

    @abstractmethod
    def make_env(self) -> gym.Env:
        """Builds a live, frame-skipped env with ``render_mode="rgb_array"``."""

    def reset(self, env: gym.Env, seed: int) -> tuple[Any, dict]:
        """Resets ``env`` deterministically from ``seed`` (warm-up steps included)."""
        return env.reset(seed=int(seed))

    def frame(self, env: gym.Env) -> np.ndarray:
        """Current RGB frame [size, size, 3] uint8."""
        return resize_frame(np.asarray(env.render()), self.size)

    def pose(self, env: gym.Env) -> dict[str, np.ndarray]:
        """Ground-truth pose arrays (float64) of the current state; empty if the simulator has none."""
        return {}

    def step_index(self, env: gym.Env) -> int:
        """The simulator's own step counter for the current state (frame skip and warm-up included)."""
        return int(env.get_wrapper_attr("sim_steps"))

    def config_dict(self) -> dict:
        """JSON-able config; ``make_simulator(scenario, **config_dict())`` rebuilds this simulator."""
        return dataclasses.asdict(self.config)

    def attrs(self) -> dict:
        """Metadata stored in every episode recorded with this simulator."""
        return {
            "sim_config": self.config_dict(),
            "frame_skip": self.config.frame_skip,
            "warmup_steps": getattr(self.config, "warmup_steps", 0),
            "size": self.size,
            "frame_source": "render",
        }


@dataclasses.dataclass(frozen=True)
class GymConfig:
    """Config of a :class:`GymSimulator` (any Gymnasium env that renders ``rgb_array`` frames).

    Attributes:
        env_id: Registered Gymnasium id.
        size: Stored frame side in pixels (None keeps the render size).
        frame_skip: Simulator steps per recorded step (the action is repeated).
        warmup_steps: No-op simulator steps after reset, before the first recorded frame.
        env_kwargs: Extra keyword arguments of ``gym.make``.
        scenario: Scenario name stored in the episodes.
    """

    env_id: str
    size: int | None = 64
    frame_skip: int = 1
    warmup_steps: int = 0
    env_kwargs: dict = dataclasses.field(default_factory=dict)
    scenario: str = "gym"


class GymSimulator(Simulator):
    """Any registered Gymnasium env with ``render_mode="rgb_array"``; no poses, zero-action warm-up."""

    def __init__(self, config: GymConfig) -> None:
        super().__init__(config)
        self.scenario = config.scenario

    def make_env(self) -> gym.Env:
        env = gym.make(
            self.config.env_id,
            render_mode="rgb_array",
            max_episode_steps=-1,
            disable_env_checker=True,
            **self.config.env_kwargs,
        )
        warmup_action = _zero_action(env.action_space) if self.config.warmup_steps else None
        return FrameSkip(env, self.config.frame_skip, self.config.warmup_steps, warmup_action)

    def attrs(self) -> dict:
        return {**super().attrs(), "env_kwargs": dict(self.config.env_kwargs)}


def _zero_action(space: gym.Space) -> Any:
    """The all-zeros element of a Box / MultiBinary / Discrete space."""
    if isinstance(space, gym.spaces.Box):
        return np.clip(np.zeros(space.shape, space.dtype), space.low, space.high)
    if isinstance(space, gym.spaces.MultiBinary):
        return np.zeros(space.shape, space.dtype)
    if isinstance(space, gym.spaces.Discrete):
        return int(space.start)
    raise TypeError(f"no zero action for {space}; pass warmup_steps=0 or use a Box/MultiBinary/Discrete space")
