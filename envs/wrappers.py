"""Gymnasium wrappers that change what ``render()`` shows, so ``RecordVideo`` records it.

* :class:`ActionHud`: the frame enlarged with a strip that shows the action that produced it
  (:func:`~astra_gym.envs.recording.draw_action_hud`).
* :class:`SideBySide`: the world model's frame next to the real simulator's, run from the same
  start (the env's frame-bank context) under the same actions.
* :class:`Enlarge`: the frame enlarged (nearest neighbour), nothing drawn.

They stack (``ActionHud(SideBySide(env))`` draws the HUD under both panels) and need
``render_mode="rgb_array"``::

    from gymnasium.wrappers import RecordVideo

    env = gym.make("Astra-Drive-v0", render_mode="rgb_array")
    env = RecordVideo(ActionHud(SideBySide(env)), "videos", episode_trigger=lambda e: True)

``render()`` shows the last frame of a step. An env that makes several frames per step
(``frames_per_step > 1``) returns them in ``info["frames"]``; :meth:`FrameView.views` composes each
of them (``astra-gym rollout`` writes them all).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import gymnasium as gym
import numpy as np

from astra_gym.envs.recording import HUD_SIZE, draw_action_hud, side_by_side
from astra_gym.envs.render import upscale
from astra_gym.envs.spaces import ACTION_NAMES

__all__ = [
    "ActionHud",
    "Enlarge",
    "FrameView",
    "SideBySide",
    "SideBySideUnavailable",
    "action_labels",
    "wrapper_attr",
    "zero_action",
]


class SideBySideUnavailable(ValueError):
    """The episode has no real simulator state behind its start (or the simulator is not installed)."""


def zero_action(action_space: gym.Space) -> np.ndarray:
    """The all-zero action of ``action_space`` (clipped into a Box; ``start`` of a Discrete)."""
    if isinstance(action_space, gym.spaces.Discrete):
        return np.asarray(action_space.start, dtype=action_space.dtype)
    zero = np.zeros(action_space.shape, dtype=action_space.dtype)
    if isinstance(action_space, gym.spaces.Box):
        zero = np.clip(zero, action_space.low, action_space.high).astype(action_space.dtype)
    return zero


def action_labels(env: gym.Env) -> list[str] | None:
    """Names of the action components: the Astra scenario's, else the env's ``button_names``, else None."""
    core = wrapper_attr(env, "core")
    scenario = getattr(core, "scenario", None)
    if core is not None and scenario in ACTION_NAMES:
        return list(ACTION_NAMES[scenario])
    labels = wrapper_attr(env, "button_names")
    return None if labels is None else [str(label) for label in labels]


def wrapper_attr(env: gym.Env, name: str) -> Any:
    """``env.get_wrapper_attr(name)`` through any wrappers, or None where no layer has it."""
    try:
        return env.get_wrapper_attr(name)
    except AttributeError:
        return None


class FrameView(gym.Wrapper):
    """Base of the wrappers that compose what ``render()`` returns; subclasses implement :meth:`compose`.

    Raises:
        ValueError: The env does not render RGB arrays (make it with ``render_mode="rgb_array"``).
    """

    def __init__(self, env: gym.Env) -> None:
        if env.render_mode != "rgb_array":
            raise ValueError(
                f"{type(self).__name__} composes rendered frames, but the env's render_mode is {env.render_mode!r}; "
                'make it with gym.make(..., render_mode="rgb_array")'
            )
        super().__init__(env)

    def compose(self, frame: np.ndarray, index: int) -> np.ndarray:
        """This wrapper's view of ``frame``, the ``index``-th frame of the last step (-1: the last one).

        Args:
            frame: uint8 [H, W, 3], the inner view.
            index: Position of the frame in the last step's frames.

        Returns:
            uint8 [H', W', 3].
        """
        raise NotImplementedError

    def views(self, frames: Sequence[np.ndarray]) -> list[np.ndarray]:
        """Every frame of the last step (``info["frames"]``, or ``[obs]``) as this stack of wrappers shows it."""
        inner = self.env.views(frames) if isinstance(self.env, FrameView) else [np.asarray(f) for f in frames]
        return [self.compose(view, index) for index, view in enumerate(inner)]

    def render(self) -> np.ndarray:
        """The composed view of the current frame: uint8 [H', W', 3]."""
        return self.compose(self.env.render(), -1)


class Enlarge(FrameView):
    """Enlarges rendered frames by an integer factor (nearest neighbour) to at least ``size`` pixels high."""

    def __init__(self, env: gym.Env, size: int = HUD_SIZE) -> None:
        super().__init__(env)
        self.size = int(size)

    def compose(self, frame: np.ndarray, index: int) -> np.ndarray:
        return upscale(frame, max(1, -(-self.size // frame.shape[0])))


class ActionHud(FrameView):
    """Draws the action that produced each frame under it (zero after a reset).

    Args:
        env: An env with ``render_mode="rgb_array"``.
        labels: Names of the action components; default: the Astra scenario's or the env's buttons.
        size: Height the frame is enlarged to (64x64 -> 256x256).
        placement: ``"strip"`` (under the frame) or ``"overlay"`` (on a darkened band, same size).
    """

    def __init__(
        self, env: gym.Env, labels: Sequence[str] | None = None, size: int = HUD_SIZE, placement: str = "strip"
    ) -> None:
        super().__init__(env)
        self.labels = list(labels) if labels is not None else action_labels(env)
        self.size = int(size)
        self.placement = placement
        self.action = zero_action(env.action_space)

    def reset(self, **kwargs: Any) -> tuple[Any, dict]:
        self.action = zero_action(self.action_space)
        return self.env.reset(**kwargs)

    def step(self, action: Any) -> tuple[Any, float, bool, bool, dict]:
        result = self.env.step(action)
        self.action = action
        return result

    def compose(self, frame: np.ndarray, index: int) -> np.ndarray:
        return draw_action_hud(
            frame, self.action, self.action_space, self.labels, size=self.size, placement=self.placement
        )


class SideBySide(FrameView):
    """Shows the real simulator next to the model: same start state (replayed), same actions.

    At every reset the simulator replays the seed and action prefix of the frame-bank context the
    episode starts from; each step applies the action once per model frame. After the simulator's
    episode ends its last frame is held.

    Args:
        env: An Astra env (its ``core.bank`` and ``info["bank_index"]`` say where it started), with
            ``render_mode="rgb_array"``.
        labels: Captions of the (model, simulator) panels.
        size: Panel height in pixels.

    Raises:
        SideBySideUnavailable: At reset, when the start has no simulator behind it (user frames,
            synthetic bank) or the simulator is not installed.
    """

    def __init__(
        self, env: gym.Env, labels: Sequence[str] = ("Astra (model)", "simulator"), size: int = HUD_SIZE
    ) -> None:
        super().__init__(env)
        self.labels = tuple(labels)
        self.size = int(size)
        self.session = None
        self.real_frames: list[np.ndarray] = []

    def reset(self, **kwargs: Any) -> tuple[Any, dict]:
        obs, info = self.env.reset(**kwargs)
        self._close_session()
        bank, index = self._start(info)
        from astra_gym.data.replay import replay

        try:
            self.session = replay(
                int(bank.seeds[index]), bank.prefix(index), scenario=bank.scenario, **bank.sim_config
            )
        except ImportError as err:
            raise SideBySideUnavailable(f"it needs the real simulator: {err}") from err
        context = info.get("frames")
        self.real_frames = [np.asarray(f) for f in context] if context is not None else [self.session.frame()]
        return obs, info

    def step(self, action: Any) -> tuple[Any, float, bool, bool, dict]:
        obs, reward, terminated, truncated, info = self.env.step(action)
        count = len(info["frames"]) if isinstance(info, dict) and info.get("frames") is not None else 1
        self.real_frames = []
        for _ in range(count):
            if not self.session.done:
                self.session.advance(np.asarray(action)[None])
            self.real_frames.append(self.session.frame())
        return obs, reward, terminated, truncated, info

    def compose(self, frame: np.ndarray, index: int) -> np.ndarray:
        return side_by_side(frame, self.real_frames[index], self.labels, size=self.size)

    def close(self) -> None:
        self._close_session()
        super().close()

    def _close_session(self) -> None:
        if self.session is not None:
            self.session.close()
            self.session = None

    def _start(self, info: dict) -> tuple[Any, int]:
        """(frame bank, context index) the episode started from, or :class:`SideBySideUnavailable` saying why not."""
        env_id = self.spec.id if self.spec else type(self.unwrapped).__name__
        bank = getattr(wrapper_attr(self.env, "core"), "bank", None)
        index = info.get("bank_index") if isinstance(info, dict) else None
        if bank is None or index is None:
            raise SideBySideUnavailable(f"{env_id} does not say which simulator state its episode started from.")
        if index < 0:
            raise SideBySideUnavailable("the start frames came from a user image or frames, not from a simulator.")
        if bank.scenario == "synthetic" or int(bank.seeds[index]) < 0:
            raise SideBySideUnavailable(
                f"{env_id} starts from synthetic frames with no simulator behind them; use a variant with a "
                "recorded frame bank, e.g. Astra-Drive-v0 (checkpoint='debug' runs anywhere)."
            )
        return bank, int(index)
