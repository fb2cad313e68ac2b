"""Driving: Gymnasium ``CarRacing-v3`` (Box2D), top-down view that follows the car.

Choices (see ``astra_gym/data/README.md`` for the measurements):

* ``frame_skip=2``: the physics runs at 50 Hz, so recorded frames are 25 fps; at racing speed the
  car moves a few pixels per 64x64 frame, enough to see motion, not so much that frames jump.
* ``warmup_steps=50``: the first second of every CarRacing episode is a camera zoom-in from the
  whole track to the car; it is skipped (zero action, the car stands still), so frame 0 already
  has the driving view.
* Frames are the env's 96x96 observation (the picture an RL agent sees: the view plus the
  dashboard bar) resized to ``size x size``. CarRacing renders that observation on every
  physics step anyway, so reusing it makes recording ~1.6x faster than an extra
  ``env.render()``; the only difference from ``render()`` (600x400, same view) is that the
  observation leaves out the tyre skid marks. ``size=None`` stores the 96x96 observation.

Poses (Box2D world units, radians): ``vehicle_xy`` hull position, ``vehicle_yaw`` ``hull.angle``
(0 = facing +y; the car's forward vector is ``(-sin yaw, cos yaw)``), ``vehicle_velocity`` hull
linear velocity in the world frame.
"""

from __future__ import annotations

import dataclasses

import gymnasium as gym
import numpy as np

from astra_gym.data.sims.base import Simulator, resize_frame
from astra_gym.data.sims.frame_skip import FrameSkip

__all__ = ["DriveConfig", "DriveSimulator"]


@dataclasses.dataclass(frozen=True)
class DriveConfig:
    """CarRacing settings.

    Attributes:
        env_id: Gymnasium id.
        size: Stored frame side (None: the native 96x96 observation).
        frame_skip: Physics steps (1/50 s each) per recorded step.
        warmup_steps: Zero-action physics steps after reset (skips the zoom-in).
        env_kwargs: Extra ``gym.make`` kwargs (e.g. ``{"domain_randomize": True}``).
    """

    env_id: str = "CarRacing-v3"
    size: int | None = 64
    frame_skip: int = 2
    warmup_steps: int = 50
    env_kwargs: dict = dataclasses.field(default_factory=dict)


class DriveSimulator(Simulator):
    """CarRacing with the settings of :class:`DriveConfig`."""

    scenario = "drive"
    pose_keys = ("vehicle_xy", "vehicle_yaw", "vehicle_velocity")
    physics_fps = 50

    def __init__(self, config: DriveConfig | None = None) -> None:
        super().__init__(config or DriveConfig())

    def make_env(self) -> gym.Env:
        env = gym.make(
            self.config.env_id,
            render_mode="rgb_array",
            max_episode_steps=-1,  # the recorder decides the length
            disable_env_checker=True,
            **self.config.env_kwargs,
        )
        zero = np.zeros(3, np.float32)
        return FrameSkip(env, self.config.frame_skip, self.config.warmup_steps, zero)

    def frame(self, env: gym.Env) -> np.ndarray:
        """The latest 96x96 observation, resized to ``size``."""
        return resize_frame(np.asarray(env.get_wrapper_attr("last_obs")), self.size)

    def pose(self, env: gym.Env) -> dict[str, np.ndarray]:
        hull = env.unwrapped.car.hull
        return {
            "vehicle_xy": np.array(hull.position, np.float64),
            "vehicle_yaw": np.float64(hull.angle),
            "vehicle_velocity": np.array(hull.linearVelocity, np.float64),
        }

    def attrs(self) -> dict:
        return {
            **super().attrs(),
            "env_kwargs": dict(self.config.env_kwargs),
            "fps": self.physics_fps / self.config.frame_skip,
            "native_size": [96, 96],
            "frame_source": "observation (state_pixels)",
            "action_names": ["steer", "gas", "brake"],
            "camera": "CarRacing's car-following top-down camera (zoom-in skipped by warm-up)",
        }
