"""Videos of rollouts: the action HUD, side-by-side panels and an atomic mp4 writer.

* :func:`draw_action_hud` upscales a frame (64x64 world-model frames become 256x256) and adds a
  strip that shows the action taken: a centred steering bar with gas and brake bars for driving,
  an x/y arrow, a z bar and a gripper glyph for manipulation, lit key caps for button actions.
* :func:`side_by_side` puts the world model's frame next to the real simulator's, each with a
  caption.
* :class:`VideoWriter` writes H.264 mp4 (yuv420p, so sizes are padded to even) through
  imageio-ffmpeg into a temporary file next to the target, and moves it under the final name only
  when the ``with`` block ends without an exception: an interrupted run never leaves a truncated
  file under the final name (a hard kill may leave a hidden ``.NAME.*.tmp.mp4`` behind).

To record an env, wrap it: :mod:`astra_gym.envs.wrappers` puts the HUD and the side-by-side
panels into ``render()``, so ``gymnasium.wrappers.RecordVideo`` records them. :class:`VideoWriter`
serves ``astra-gym`` (every frame of a multi-frame step, written atomically). Drawing directly::

    with VideoWriter("drive.mp4", fps=15) as video:
        for frame, action in zip(frames, actions):
            video.write(draw_action_hud(frame, action, env.action_space))
"""

from __future__ import annotations

import os
import secrets
from collections.abc import Sequence
from pathlib import Path
from typing import Literal

import gymnasium as gym
import imageio_ffmpeg
import numpy as np

from astra_gym.envs.render import check_frame, import_cv2, upscale

__all__ = [
    "HUD_KINDS",
    "VideoWriter",
    "draw_action_hud",
    "hud_kind",
    "read_video",
    "side_by_side",
]

HudKind = Literal["drive", "manipulation", "buttons", "discrete", "box"]
#: What :func:`draw_action_hud` can draw, see :func:`hud_kind`.
HUD_KINDS = ("drive", "manipulation", "buttons", "discrete", "box")

#: Side of the (square) frame area the HUD is laid out for; larger frames scale the widgets.
HUD_SIZE = 256

# Colours (RGB).
_BG = (22, 24, 30)
_TEXT = (236, 236, 236)
_DIM = (150, 152, 160)
_OUTLINE = (120, 122, 130)
_TRACK = (48, 50, 58)
_STEER = (255, 196, 40)
_GAS = (70, 200, 90)
_BRAKE = (235, 70, 60)
_KEY_ON = (255, 196, 40)
_KEY_OFF = (56, 58, 66)

#: Short cap texts for ViZDoom button names (unknown names are shortened automatically).
BUTTON_CAPS = {
    "MOVE_FORWARD": "FWD",
    "MOVE_BACKWARD": "BACK",
    "TURN_LEFT": "TURN L",
    "TURN_RIGHT": "TURN R",
    "MOVE_LEFT": "STR L",
    "MOVE_RIGHT": "STR R",
    "ATTACK": "FIRE",
    "USE": "USE",
    "JUMP": "JUMP",
    "CROUCH": "CROUCH",
    "SPEED": "RUN",
    "LOOK_UP": "LOOK U",
    "LOOK_DOWN": "LOOK D",
    "SELECT_NEXT_WEAPON": "WPN+",
    "SELECT_PREV_WEAPON": "WPN-",
}


# --------------------------------------------------------------------------------------------- kinds


def hud_kind(action_space: gym.Space) -> HudKind:
    """The HUD layout that fits ``action_space``.

    * ``"drive"``: Box of 3 with bounds [-1, 0, 0] .. [1, 1, 1] (steer, gas, brake; CarRacing).
    * ``"manipulation"``: Box of 4 in [-1, 1] (dx, dy, dz, gripper; FetchPush).
    * ``"buttons"``: MultiBinary, or MultiDiscrete with two values per entry (held buttons).
    * ``"discrete"``: Discrete (one of n actions).
    * ``"box"``: any other Box (one bar per component).

    Raises:
        TypeError: A space none of these fits (Dict, Tuple, ...).
    """
    if isinstance(action_space, gym.spaces.Box):
        low, high = np.asarray(action_space.low, float), np.asarray(action_space.high, float)
        if action_space.shape == (3,) and np.allclose(low, [-1, 0, 0]) and np.allclose(high, [1, 1, 1]):
            return "drive"
        if action_space.shape == (4,) and np.allclose(low, -1) and np.allclose(high, 1):
            return "manipulation"
        return "box"
    if isinstance(action_space, gym.spaces.MultiBinary):
        return "buttons"
    if isinstance(action_space, gym.spaces.MultiDiscrete) and np.all(np.asarray(action_space.nvec) == 2):
        return "buttons"
    if isinstance(action_space, gym.spaces.Discrete):
        return "discrete"
    raise TypeError(f"no action HUD for {action_space}; pass hud=False or use a Box, MultiBinary or Discrete space")


# --------------------------------------------------------------------------------------------- drawing primitives


class _Pen:
    """Draws HUD widgets on an RGB canvas in layout units (1 unit = 1 pixel of a 256-wide frame), with OpenCV."""

    def __init__(self, canvas: np.ndarray, unit: float, origin_x: int) -> None:
        self.cv2 = import_cv2()
        self.canvas = canvas
        self.unit = unit
        self.origin_x = origin_x

    def px(self, x: float, y: float) -> tuple[int, int]:
        """Canvas pixel of the layout point (x, y)."""
        return round(self.origin_x + x * self.unit), round(y * self.unit)

    def thickness(self, width: float = 1) -> int:
        """Canvas line thickness of a layout width."""
        return max(1, round(width * self.unit))

    def rect(self, x: float, y: float, w: float, h: float, color: tuple, filled: bool = True) -> None:
        x0, y0 = self.px(x, y)
        x1, y1 = self.px(x + w, y + h)
        if x1 > x0 and y1 > y0:
            self.cv2.rectangle(self.canvas, (x0, y0), (x1 - 1, y1 - 1), color, -1 if filled else self.thickness())

    def text(
        self, label: str, x: float, y: float, scale: float = 0.4, color: tuple = _TEXT, anchor: str = "left"
    ) -> None:
        """Writes ``label`` with its baseline at ``y``; ``anchor`` is "left", "center" or "right" of ``x``."""
        cv2, font, size, thickness = self.cv2, self.cv2.FONT_HERSHEY_SIMPLEX, scale * self.unit, self.thickness()
        (width, _), _ = cv2.getTextSize(label, font, size, thickness)
        x0, y0 = self.px(x, y)
        x0 -= {"left": 0, "center": width // 2, "right": width}[anchor]
        if sum(color) > 384:  # light text gets a dark outline, readable on any background
            cv2.putText(self.canvas, label, (x0, y0), font, size, (0, 0, 0), thickness + 2, cv2.LINE_AA)
        cv2.putText(self.canvas, label, (x0, y0), font, size, color, thickness, cv2.LINE_AA)

    def line(self, p0: tuple[float, float], p1: tuple[float, float], color: tuple, width: float = 1) -> None:
        self.cv2.line(self.canvas, self.px(*p0), self.px(*p1), color, self.thickness(width), self.cv2.LINE_AA)

    def arrow(self, p0: tuple[float, float], p1: tuple[float, float], color: tuple, width: float = 2) -> None:
        start, end, thickness = self.px(*p0), self.px(*p1), self.thickness(width)
        self.cv2.arrowedLine(self.canvas, start, end, color, thickness, self.cv2.LINE_AA, tipLength=0.35)

    def circle(self, center: tuple[float, float], radius: float, color: tuple, filled: bool = False) -> None:
        thickness = -1 if filled else self.thickness()
        radius_px = max(1, round(radius * self.unit))
        self.cv2.circle(self.canvas, self.px(*center), radius_px, color, thickness, self.cv2.LINE_AA)

    def bar(self, x: float, y: float, w: float, h: float, value: float, color: tuple, centered: bool = False) -> None:
        """A horizontal bar; ``value`` in [0, 1] fills from the left, or in [-1, 1] from the centre if ``centered``."""
        self.rect(x, y, w, h, _TRACK)
        if centered:
            mid = x + w / 2
            lo, hi = sorted((mid, mid + value * w / 2))
            self.rect(lo, y, hi - lo, h, color)
            self.line((mid, y - 2), (mid, y + h + 1), _TEXT)
        else:
            self.rect(x, y, value * w, h, color)
        self.rect(x, y, w, h, _OUTLINE, filled=False)


# --------------------------------------------------------------------------------------------- widgets per kind


def _fmt(value: float) -> str:
    return f"{value:+.2f}"


def _draw_drive(pen: _Pen, action: np.ndarray, labels: Sequence[str]) -> None:
    steer, gas, brake = (float(v) for v in action)
    pen.text(labels[0].upper(), 8, 21)
    pen.bar(64, 9, 136, 16, steer, _STEER, centered=True)
    pen.text(_fmt(steer), 248, 21, anchor="right")
    for x, name, value, color in ((8, labels[1], gas, _GAS), (132, labels[2], brake, _BRAKE)):
        pen.text(name.upper(), x, 49)
        pen.bar(x + 54, 37, 62, 16, value, color)
        pen.text(f"{value:.2f}", x + 85, 49, scale=0.35, anchor="center")


def _draw_manipulation(pen: _Pen, action: np.ndarray, labels: Sequence[str]) -> None:
    dx, dy, dz, grip = (float(v) for v in action)
    # x/y: a top-down arrow (+x right, +y up).
    center, radius = (34.0, 34.0), 24.0
    pen.circle(center, radius, _OUTLINE)
    pen.line((center[0] - radius, center[1]), (center[0] + radius, center[1]), _TRACK)
    pen.line((center[0], center[1] - radius), (center[0], center[1] + radius), _TRACK)
    tip = (center[0] + dx * radius, center[1] - dy * radius)
    if np.hypot(dx, dy) > 0.05:
        pen.arrow(center, tip, _STEER, width=3)
    else:
        pen.circle(center, 3, _STEER, filled=True)
    pen.text("+x", 62, 38, scale=0.3, color=_DIM)
    pen.text("+y", 34, 8, scale=0.3, color=_DIM, anchor="center")
    # z: a vertical bar filled from its middle.
    pen.rect(74, 8, 14, 52, _TRACK)
    top, bottom = sorted((34.0, 34.0 - dz * 26))
    pen.rect(74, top, 14, bottom - top, _GAS)
    pen.line((71, 34), (90, 34), _TEXT)
    pen.rect(74, 8, 14, 52, _OUTLINE, filled=False)
    pen.text("z", 81, 67, scale=0.3, color=_DIM, anchor="center")
    # Numbers.
    for row, (name, value) in enumerate(zip(labels[:3], (dx, dy, dz), strict=True)):
        pen.text(f"{name} {_fmt(value)}", 98, 20 + 17 * row, scale=0.38)
    _draw_gripper(pen, grip, labels[3])


def _draw_gripper(pen: _Pen, grip: float, label: str) -> None:
    """Two jaws whose gap follows the command (-1 closed .. +1 open)."""
    opening = (np.clip(grip, -1, 1) + 1) / 2
    cx, gap = 218.0, 4 + 22 * opening
    pen.rect(cx - 18, 8, 36, 6, _OUTLINE)
    for side in (-1, 1):
        jaw_x = cx + side * gap / 2 - (6 if side < 0 else 0)
        pen.rect(jaw_x, 14, 6, 26, _STEER if grip < 0 else _GAS)
    state = "CLOSE" if grip < -0.05 else "OPEN" if grip > 0.05 else "HOLD"
    pen.text(f"{label} {state}", cx, 54, scale=0.35, anchor="center")
    pen.text(_fmt(grip), cx, 68, scale=0.35, color=_DIM, anchor="center")


def _cap_text(name: str) -> str:
    if name in BUTTON_CAPS:
        return BUTTON_CAPS[name]
    words = str(name).replace("-", "_").split("_")
    return (" ".join(w[:3] for w in words if w) or "?").upper()[:7]


def _draw_caps(pen: _Pen, pressed: np.ndarray, names: Sequence[str], top: float = 6) -> None:
    """Key caps in rows of up to 6, lit when pressed."""
    per_row, gap = min(6, max(1, len(names))), 4.0
    width = (248 - gap * (per_row - 1)) / per_row
    for i, (on, name) in enumerate(zip(pressed, names, strict=True)):
        x = 4 + (i % per_row) * (width + gap)
        y = top + (i // per_row) * 26
        pen.rect(x, y, width, 22, _KEY_ON if on else _KEY_OFF)
        pen.rect(x, y, width, 22, _TEXT if on else _OUTLINE, filled=False)
        color = (20, 20, 20) if on else _DIM
        cap = _cap_text(name)
        pen.text(cap, x + width / 2, y + 15, scale=0.34 if len(cap) < 6 else 0.3, color=color, anchor="center")


def _draw_buttons(pen: _Pen, action: np.ndarray, labels: Sequence[str]) -> None:
    _draw_caps(pen, action != 0, labels)


def _draw_discrete(pen: _Pen, action: np.ndarray, labels: Sequence[str]) -> None:
    index = int(action[0])
    pen.text("ACTION", 8, 30)
    name = labels[index] if index < len(labels) else str(index)
    pen.rect(72, 12, 176, 26, _KEY_ON)
    pen.text(f"{index}: {name}"[:22], 160, 30, color=(20, 20, 20), anchor="center")


def _draw_box(pen: _Pen, action: np.ndarray, labels: Sequence[str], low: np.ndarray, high: np.ndarray) -> None:
    for row, (value, name, lo, hi) in enumerate(zip(action, labels, low, high, strict=True)):
        y = 6 + 18 * row
        centered = lo < 0 < hi
        span = max(abs(lo), abs(hi)) if centered else (hi - lo)
        fill = value / span if centered else (value - lo) / span if np.isfinite(span) and span > 0 else 0.0
        pen.text(str(name)[:8], 8, y + 12, scale=0.35)
        pen.bar(72, y, 124, 13, float(np.clip(fill, -1, 1)), _STEER, centered=centered)
        pen.text(_fmt(float(value)), 248, y + 12, scale=0.35, anchor="right")


_DEFAULT_LABELS = {
    "drive": ("steer", "gas", "brake"),
    "manipulation": ("dx", "dy", "dz", "grip"),
}
_STRIP_HEIGHT = {"drive": 60, "manipulation": 74, "discrete": 48}


def _strip_height(kind: HudKind, size: int) -> int:
    if kind == "buttons":
        return 6 + 26 * -(-size // 6)
    if kind == "box":
        return 8 + 18 * size
    return _STRIP_HEIGHT[kind]


def _prepare_action(action: object, action_space: gym.Space, kind: HudKind) -> np.ndarray:
    values = np.asarray(action, dtype=np.float64).reshape(-1)
    expected = 1 if kind == "discrete" else int(np.prod(action_space.shape))
    if values.size != expected:
        raise ValueError(f"action {action!r} does not fit {action_space} ({expected} value(s) expected)")
    if isinstance(action_space, gym.spaces.Box):
        values = np.clip(values, action_space.low.reshape(-1), action_space.high.reshape(-1))
    return values


def _labels_for(kind: HudKind, action_space: gym.Space, labels: Sequence[str] | None, count: int) -> list[str]:
    if labels is not None:
        labels = [str(label) for label in labels]
        if kind != "discrete" and len(labels) != count:
            raise ValueError(f"got {len(labels)} labels {labels} for an action of {count} values")
        return labels
    if kind in _DEFAULT_LABELS:
        return list(_DEFAULT_LABELS[kind])
    if kind == "discrete":
        return []
    return [f"a{i}" if kind == "box" else f"B{i}" for i in range(count)]


# --------------------------------------------------------------------------------------------- public API


def draw_action_hud(
    frame: np.ndarray,
    action: object,
    action_space: gym.Space,
    labels: Sequence[str] | None = None,
    *,
    size: int = HUD_SIZE,
    kind: HudKind | None = None,
    placement: Literal["strip", "overlay"] = "strip",
) -> np.ndarray:
    """Returns ``frame`` upscaled with a HUD showing ``action``.

    The frame is enlarged by an integer factor (nearest neighbour) until its height reaches
    ``size`` (64x64 -> 256x256); larger frames are kept as they are. The HUD widgets scale with
    the frame height and are centred horizontally, so a wide side-by-side frame keeps them readable.

    Args:
        frame: uint8 [H, W, 3].
        action: The action taken from this frame, an element of ``action_space``.
        action_space: The env's action space; it picks the layout (see :func:`hud_kind`) and
            clips Box actions for display.
        labels: Names of the action components (button names for button spaces, action names for
            Discrete). Defaults: steer/gas/brake, dx/dy/dz/grip, B0.. for buttons, a0.. for boxes.
        size: Height the frame is upscaled to (at least).
        kind: Force a layout instead of inferring it from the space.
        placement: ``"strip"`` adds the HUD under the frame (hides nothing, the output is taller);
            ``"overlay"`` draws it on a darkened band at the bottom of the frame (same size).

    Returns:
        A new uint8 [H', W', 3] frame.

    Raises:
        ValueError: Bad frame, action, labels or placement.
        TypeError: No HUD layout for this action space.
    """
    frame = check_frame(frame)
    kind = kind or hud_kind(action_space)
    if kind not in HUD_KINDS:
        raise ValueError(f"unknown HUD kind {kind!r}; choose one of {HUD_KINDS}")
    if placement not in ("strip", "overlay"):
        raise ValueError(f"placement must be 'strip' or 'overlay', got {placement!r}")
    values = _prepare_action(action, action_space, kind)
    names = _labels_for(kind, action_space, labels, values.size)
    view = upscale(frame, _upscale_factor(frame.shape[0], size))
    unit = view.shape[0] / HUD_SIZE
    strip_height = round(_strip_height(kind, values.size) * unit)
    canvas = _hud_canvas(view, strip_height, placement)
    band = canvas[-strip_height:]
    pen = _Pen(band, unit, origin_x=max(0, round((band.shape[1] - HUD_SIZE * unit) / 2)))
    _draw(pen, kind, values, names, action_space)
    return canvas


def _upscale_factor(height: int, size: int) -> int:
    """Smallest integer factor that brings ``height`` to at least ``size`` (1 if it already is)."""
    return max(1, -(-size // height))


def _hud_canvas(view: np.ndarray, strip_height: int, placement: str) -> np.ndarray:
    if placement == "strip":
        strip = np.empty((strip_height, view.shape[1], 3), np.uint8)
        strip[:] = _BG
        return np.concatenate([view, strip], axis=0)
    canvas = view.copy()
    band = canvas[-strip_height:].astype(np.float32)
    canvas[-strip_height:] = (0.3 * band + 0.7 * np.asarray(_BG, np.float32)).astype(np.uint8)
    return canvas


def _draw(pen: _Pen, kind: HudKind, values: np.ndarray, names: list[str], action_space: gym.Space) -> None:
    if kind == "drive":
        _draw_drive(pen, values, names)
    elif kind == "manipulation":
        _draw_manipulation(pen, values, names)
    elif kind == "buttons":
        _draw_buttons(pen, values, names)
    elif kind == "discrete":
        _draw_discrete(pen, values, names)
    else:
        low = np.broadcast_to(np.asarray(action_space.low, float).reshape(-1), values.shape)
        high = np.broadcast_to(np.asarray(action_space.high, float).reshape(-1), values.shape)
        _draw_box(pen, values, names, low, high)


# --------------------------------------------------------------------------------------------- side by side


def _caption(width: int, text: str, unit: float) -> np.ndarray:
    height = round(22 * unit)
    bar = np.empty((height, width, 3), np.uint8)
    bar[:] = _BG
    _Pen(bar, unit, 0).text(text, width / (2 * unit), 15.5, scale=0.42, anchor="center")
    return bar


def side_by_side(
    model_frame: np.ndarray,
    real_frame: np.ndarray,
    labels: Sequence[str] = ("Astra", "simulator"),
    *,
    size: int = HUD_SIZE,
    gap: int = 4,
) -> np.ndarray:
    """Puts two frames next to each other, each upscaled to ``size`` pixels high with a caption above.

    Args:
        model_frame: uint8 [H, W, 3], the world model's frame (left panel).
        real_frame: uint8 [H', W', 3], the real simulator's frame (right panel); any size, it is
            resized to the left panel's (area filter when shrinking, nearest when enlarging).
        labels: The two captions.
        size: Panel height in pixels.
        gap: Pixels between the panels.

    Returns:
        uint8 [22u + size, 2 * panel width + gap, 3] with u = size / 256.

    Raises:
        ValueError: Bad frames or labels.
    """
    if len(labels) != 2:
        raise ValueError(f"side_by_side takes two labels (model, real), got {list(labels)}")
    model_frame, real_frame = check_frame(model_frame), check_frame(real_frame)
    width = max(1, round(model_frame.shape[1] * size / model_frame.shape[0]))
    panels = []
    for frame, label in zip((model_frame, real_frame), labels, strict=True):
        method = "area" if frame.shape[0] > size else "nearest"
        panel = upscale(frame, size=(size, width), method=method)
        panels.append(np.concatenate([_caption(width, str(label), size / HUD_SIZE), panel], axis=0))
    spacer = np.empty((panels[0].shape[0], gap, 3), np.uint8)
    spacer[:] = _BG
    return np.concatenate([panels[0], spacer, panels[1]], axis=1)


# --------------------------------------------------------------------------------------------- mp4


def _even(frame: np.ndarray) -> np.ndarray:
    """Pads ``frame`` by one edge row/column where needed so both sides are even (yuv420p needs it)."""
    pad_h, pad_w = frame.shape[0] % 2, frame.shape[1] % 2
    if not (pad_h or pad_w):
        return frame
    return np.pad(frame, ((0, pad_h), (0, pad_w), (0, 0)), mode="edge")


class VideoWriter:
    """Writes RGB frames to an H.264 mp4, atomically.

    Frames go to a hidden temporary file in the target's folder; leaving the ``with`` block
    normally (or calling :meth:`close`) finishes the video and moves it under ``path`` with
    ``os.replace``. An exception inside the block (or :meth:`abort`) deletes the temporary file, so
    ``path`` is either the complete new video or whatever it was before.

    All frames must have the size of the first one; odd sizes are padded by one edge pixel.

    Args:
        path: Target file (``.mp4``); its folder must exist.
        fps: Frames per second of the video.
        crf: x264 constant rate factor (0 lossless .. 51 worst; 18 is visually lossless).
        codec: ffmpeg video codec.

    Attributes:
        frames_written: Frames written so far.
        size: ``(height, width)`` of the written frames (after padding), None before the first one.

    Raises:
        OSError: The target folder does not exist or is not writable (raised on entering / first write).
    """

    def __init__(self, path: str | os.PathLike, fps: float = 20.0, *, crf: int = 18, codec: str = "libx264") -> None:
        if fps <= 0:
            raise ValueError(f"fps must be positive, got {fps}")
        if not 0 <= crf <= 51:
            raise ValueError(f"crf must be in [0, 51], got {crf}")
        self.path = Path(path)
        self.fps = float(fps)
        self.crf = int(crf)
        self.codec = codec
        self.frames_written = 0
        self.size: tuple[int, int] | None = None
        self._tmp: Path | None = None
        self._encoder = None
        self._closed = False

    def open(self) -> VideoWriter:
        """Creates the temporary file (checks that the target folder is writable)."""
        if self._tmp is None:
            self._tmp = _temp_path(self.path)
        return self

    def write(self, frame: np.ndarray) -> None:
        """Appends one uint8 [H, W, 3] frame.

        Raises:
            ValueError: The frame is not RGB uint8, or its size differs from the first frame's.
        """
        if self._closed:
            raise RuntimeError(f"the video {self.path} is already closed")
        frame = _even(check_frame(frame))
        if self.size is None:
            self.open()
            self.size = frame.shape[:2]
            self._encoder = self._start_encoder()
        elif frame.shape[:2] != self.size:
            raise ValueError(f"frame {frame.shape[:2]} differs from the video's size {self.size}; resize frames first")
        self._encoder.send(frame.tobytes())
        self.frames_written += 1

    def close(self) -> Path:
        """Finishes the video and moves it under its final name.

        Returns:
            The final path.

        Raises:
            ValueError: No frame was written (nothing is saved).
        """
        if self._closed:
            return self.path
        self._closed = True
        if self.frames_written == 0:
            self._discard()
            raise ValueError(f"no frame was written to {self.path}; nothing was saved")
        try:
            self._encoder.close()
            os.replace(self._tmp, self.path)
        except BaseException:
            self._discard()
            raise
        self._tmp = None
        return self.path

    def abort(self) -> None:
        """Stops writing and deletes the temporary file; ``path`` is left untouched."""
        self._closed = True
        self._discard()

    def __enter__(self) -> VideoWriter:
        return self.open()

    def __exit__(self, exc_type: object, exc: object, tb: object) -> None:
        if exc_type is None:
            self.close()
        else:
            self.abort()

    def _start_encoder(self):
        height, width = self.size
        encoder = imageio_ffmpeg.write_frames(
            str(self._tmp),
            (width, height),
            fps=self.fps,
            codec=self.codec,
            pix_fmt_out="yuv420p",
            quality=None,
            macro_block_size=1,
            output_params=["-crf", str(self.crf), "-movflags", "+faststart"],
        )
        encoder.send(None)  # starts ffmpeg
        return encoder

    def _discard(self) -> None:
        if self._encoder is not None:
            try:
                self._encoder.close()
            except Exception:  # noqa: BLE001 - the temp file is deleted either way
                pass
            self._encoder = None
        if self._tmp is not None:
            self._tmp.unlink(missing_ok=True)
            self._tmp = None


def _temp_path(path: Path) -> Path:
    """Creates a new hidden file next to ``path`` (same suffix, so ffmpeg picks the same container).

    It is created like any new file (permissions from the umask), so the finished video gets the
    permissions a direct write would have given it.
    """
    folder = path.parent
    if not folder.is_dir():
        raise FileNotFoundError(f"cannot write {path}: the folder {folder} does not exist; create it first")
    for _ in range(100):
        tmp = folder / f".{path.name}.{secrets.token_hex(4)}.tmp{path.suffix}"
        try:
            os.close(os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666))
        except FileExistsError:
            continue
        except OSError as err:
            reason = err.strerror or err
            raise PermissionError(f"cannot write {path}: the folder {folder} is not writable ({reason})") from err
        return tmp
    raise FileExistsError(f"cannot create a temporary file next to {path}; remove the .{path.name}.*.tmp files")


def read_video(path: str | os.PathLike) -> np.ndarray:
    """Reads a whole video into uint8 [T, H, W, 3] (for tests and quick checks).

    Raises:
        FileNotFoundError: There is no file at ``path``.
    """
    if not Path(path).is_file():
        raise FileNotFoundError(f"no video at {path}")
    reader = imageio_ffmpeg.read_frames(str(path))
    meta = next(reader)
    width, height = meta["size"]
    frames = [np.frombuffer(data, np.uint8).reshape(height, width, 3) for data in reader]
    return np.stack(frames) if frames else np.zeros((0, height, width, 3), np.uint8)
