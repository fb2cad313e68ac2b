"""Exploration: ViZDoom ``my_way_home`` (a maze of rooms, first person), button actions.

Choices (see ``astra_gym/data/README.md`` for the measurements):

* ``my_way_home`` rather than ``health_gathering``: its rooms and corridors are what a walking
  policy explores, and the player does not die from poison after a few seconds. The spawn room
  and orientation depend on the seed.
* ``frame_skip=4`` (the usual ViZDoom setting): 35 tics/s gives 8.75 fps; a held turn rotates
  7-14 degrees per step and walking moves ~10 map units per step, clearly visible yet
  continuous; an episode of 200 steps covers several rooms.
* Screen ``RES_160X120`` RGB24, squashed to ``size x size``; no HUD (the scenario's setting).
* Buttons :data:`DEFAULT_BUTTONS` (forward/back, turn left/right, strafe left/right); the stored
  actions are their multi-hot states, names in ``attrs["button_names"]``.
* The scenario timeout (2100 tics = 525 steps) is kept; reaching the goal ends the episode.

Poses (ViZDoom map units, not SI; radians): ``camera_pos`` = POSITION_X/Y/Z (Z is the player's
feet), ``camera_yaw`` = ANGLE (0 = east, counter-clockwise), ``camera_pitch`` = PITCH (ViZDoom's
sign; always 0 here, as the button set has no look up/down).
"""

from __future__ import annotations

import dataclasses

import numpy as np

from astra_gym.data.sims.base import Simulator
from astra_gym.data.sims.doom_env import DEFAULT_BUTTONS, DoomEnv

__all__ = ["ExploreConfig", "ExploreSimulator"]

_TICS_PER_SECOND = 35
_NATIVE = {"RES_160X120": [120, 160], "RES_320X240": [240, 320], "RES_640X480": [480, 640]}


@dataclasses.dataclass(frozen=True)
class ExploreConfig:
    """ViZDoom settings.

    Attributes:
        scenario_name: A scenario shipped in the vizdoom wheel (``my_way_home``, ``health_gathering``, ...).
        size: Stored frame side (None: the native screen resolution).
        frame_skip: Tics per recorded step.
        resolution: ``vizdoom.ScreenResolution`` name.
        buttons: ``vizdoom.Button`` names, in action order.
        depth: Keep the depth buffer for policies (wall avoidance); not stored.
        episode_timeout: Tics before truncation (None: the scenario's own).
    """

    scenario_name: str = "my_way_home"
    size: int | None = 64
    frame_skip: int = 4
    resolution: str = "RES_160X120"
    buttons: tuple[str, ...] = DEFAULT_BUTTONS
    depth: bool = True
    episode_timeout: int | None = None

    def __post_init__(self) -> None:
        object.__setattr__(self, "buttons", tuple(self.buttons))  # lists come back from JSON


class ExploreSimulator(Simulator):
    """ViZDoom with the settings of :class:`ExploreConfig`."""

    scenario = "explore"
    pose_keys = ("camera_pos", "camera_yaw", "camera_pitch")

    def __init__(self, config: ExploreConfig | None = None) -> None:
        super().__init__(config or ExploreConfig())

    @property
    def env_id(self) -> str:
        return f"vizdoom/{self.config.scenario_name}"

    def make_env(self) -> DoomEnv:
        cfg = self.config
        return DoomEnv(cfg.scenario_name, cfg.buttons, cfg.frame_skip, cfg.resolution, cfg.depth, cfg.episode_timeout)

    def pose(self, env: DoomEnv) -> dict[str, np.ndarray]:
        doom = env.unwrapped
        names = ("POSITION_X", "POSITION_Y", "POSITION_Z")
        return {
            "camera_pos": np.array([doom.game_variable(n) for n in names], np.float64),
            "camera_yaw": np.float64(np.deg2rad(doom.game_variable("ANGLE"))),
            "camera_pitch": np.float64(np.deg2rad(doom.game_variable("PITCH"))),
        }

    def attrs(self) -> dict:
        return {
            **super().attrs(),
            "fps": _TICS_PER_SECOND / self.config.frame_skip,
            "native_size": _NATIVE.get(self.config.resolution),
            "button_names": list(self.config.buttons),
            "action_names": list(self.config.buttons),
            "camera": "first person (player view), no HUD",
        }
