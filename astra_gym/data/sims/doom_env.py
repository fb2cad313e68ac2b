"""A minimal Gymnasium env around ViZDoom's ``DoomGame`` with button (multi-hot) actions.

We drive ``DoomGame`` directly rather than through ViZDoom's own Gymnasium wrapper so that
seeding (``set_seed`` before ``new_episode``), frame skip (``make_action(action, tics)``), the
button set and the tic counter are explicit; that is what makes replay exact.
"""

from __future__ import annotations

import os
import tempfile
from collections.abc import Sequence
from typing import Any

import gymnasium as gym
import numpy as np
import vizdoom as vzd

__all__ = ["DoomEnv", "DEFAULT_BUTTONS"]

#: WASD-style walking plus turning; every combination is a valid action.
DEFAULT_BUTTONS = ("MOVE_FORWARD", "MOVE_BACKWARD", "TURN_LEFT", "TURN_RIGHT", "MOVE_LEFT", "MOVE_RIGHT")

_SEED_LIMIT = 2**32  # DoomGame.set_seed takes an unsigned 32-bit int


class DoomEnv(gym.Env):
    """First-person ViZDoom scenario as a Gymnasium env.

    Observations are the RGB screen [H, W, 3] uint8; actions are multi-hot button states
    (``MultiBinary(len(buttons))``), held for ``frame_skip`` tics (35 tics = 1 s).
    ``terminated`` is the scenario ending (goal reached or death), ``truncated`` its timeout.
    When the game has ended ViZDoom has no screen any more, so the last screen is kept.

    Attributes:
        button_names: Names of the action components, in order.
        sim_steps: Tics since the episode started (``DoomGame.get_episode_time``).
        depth: Latest depth buffer [H, W] uint8 (None unless ``depth=True``); for policies.
    """

    metadata = {"render_modes": ["rgb_array"], "render_fps": 35}

    def __init__(
        self,
        scenario: str = "my_way_home",
        buttons: Sequence[str] = DEFAULT_BUTTONS,
        frame_skip: int = 4,
        resolution: str = "RES_160X120",
        depth: bool = True,
        episode_timeout: int | None = None,
        render_mode: str = "rgb_array",
    ) -> None:
        if render_mode != "rgb_array":
            raise ValueError(f"DoomEnv renders only 'rgb_array', got render_mode={render_mode!r}")
        if frame_skip < 1:
            raise ValueError(f"frame_skip={frame_skip} must be >= 1")
        self.render_mode = render_mode
        self.frame_skip = frame_skip
        self.button_names = tuple(buttons)
        self.game = make_game(scenario, self.button_names, resolution, depth, episode_timeout)
        height, width = self.game.get_screen_height(), self.game.get_screen_width()
        self.observation_space = gym.spaces.Box(0, 255, (height, width, 3), np.uint8)
        self.action_space = gym.spaces.MultiBinary(len(self.button_names))
        self._screen = np.zeros((height, width, 3), np.uint8)
        self.depth: np.ndarray | None = None

    @property
    def sim_steps(self) -> int:
        """Tics since the episode started."""
        return int(self.game.get_episode_time())

    def reset(self, *, seed: int | None = None, options: dict | None = None) -> tuple[np.ndarray, dict]:
        super().reset(seed=seed)
        if seed is None:
            seed = int(self.np_random.integers(_SEED_LIMIT))
        if not 0 <= seed < _SEED_LIMIT:
            raise ValueError(f"ViZDoom seeds must be in [0, 2**32), got {seed}")
        self.game.set_seed(int(seed))
        self.game.new_episode()
        self._grab()
        return self._screen.copy(), {}

    def step(self, action: Any) -> tuple[np.ndarray, float, bool, bool, dict]:
        buttons = np.asarray(action).reshape(-1)
        if buttons.shape != (len(self.button_names),):
            raise ValueError(f"expected {len(self.button_names)} button states {self.button_names}, got {buttons}")
        if self.game.is_episode_finished():
            raise RuntimeError("the ViZDoom episode has ended; call reset()")
        reward = self.game.make_action([int(b != 0) for b in buttons], self.frame_skip)
        finished = self.game.is_episode_finished()
        truncated = finished and self.game.is_episode_timeout_reached()
        if not finished:
            self._grab()
        return self._screen.copy(), float(reward), finished and not truncated, truncated, {}

    def render(self) -> np.ndarray:
        return self._screen.copy()

    def game_variable(self, name: str) -> float:
        """Current value of a ViZDoom ``GameVariable`` (e.g. ``"POSITION_X"``)."""
        return float(self.game.get_game_variable(getattr(vzd.GameVariable, name)))

    def close(self) -> None:
        self.game.close()

    def _grab(self) -> None:
        state = self.game.get_state()
        self._screen = np.array(state.screen_buffer, np.uint8)
        self.depth = None if state.depth_buffer is None else np.array(state.depth_buffer)


def make_game(
    scenario: str,
    buttons: Sequence[str],
    resolution: str,
    depth: bool,
    episode_timeout: int | None,
    map_info: bool = False,
) -> vzd.DoomGame:
    """A hidden-window, RGB24 DoomGame for one of the scenarios shipped in the vizdoom wheel.

    ``map_info`` also reports the map's sectors (walls) and objects in every state.
    """
    config = os.path.join(vzd.scenarios_path, f"{scenario}.cfg")
    if not os.path.isfile(config):
        shipped = sorted(f[:-4] for f in os.listdir(vzd.scenarios_path) if f.endswith(".cfg"))
        raise ValueError(f"unknown ViZDoom scenario {scenario!r}; the wheel ships {shipped}")
    unknown = [b for b in buttons if not hasattr(vzd.Button, b)]
    if unknown:
        raise ValueError(f"unknown ViZDoom buttons {unknown}; see vizdoom.Button for the names")
    game = vzd.DoomGame()
    game.load_config(config)
    game.set_window_visible(False)
    game.set_doom_config_path(_ini_path())  # else ViZDoom writes _vizdoom.ini into the working directory
    game.set_mode(vzd.Mode.PLAYER)
    game.set_screen_resolution(getattr(vzd.ScreenResolution, resolution))
    game.set_screen_format(vzd.ScreenFormat.RGB24)
    game.set_depth_buffer_enabled(depth)
    game.set_available_buttons([getattr(vzd.Button, b) for b in buttons])
    if episode_timeout is not None:
        game.set_episode_timeout(episode_timeout)
    game.set_sectors_info_enabled(map_info)
    game.set_objects_info_enabled(map_info)
    game.init()
    return game


def _ini_path() -> str:
    """Per-user location of ViZDoom's settings file, outside the working directory."""
    folder = os.path.join(tempfile.gettempdir(), f"astra_gym_vizdoom_{os.getuid() if hasattr(os, 'getuid') else 0}")
    os.makedirs(folder, exist_ok=True)
    return os.path.join(folder, "_vizdoom.ini")
