"""Showing frames to a person: upscaling small frames and the pygame window of ``render_mode="human"``.

World-model frames are small (64x64 for the CPU presets), so everything meant for eyes is
upscaled first. :func:`upscale` offers two filters: ``"nearest"`` copies pixels (crisp, the honest
view of what the model produced); ``"area"`` averages over each output pixel's footprint, which
is the same as nearest for integer factors, avoids uneven pixel widths for fractional ones, and
is the right filter for shrinking a large frame.

:class:`FrameWindow` is a pygame window that shows one frame at a time and keeps itself
responsive (it pumps the event queue on every frame). pygame has one window per process;
:func:`show_frame` / :func:`close_window` manage that shared window, which is all an env needs for
``render_mode="human"``::

    frame = env.render()            # rgb_array
    show_frame(frame, "Astra-Drive-v0", scale=4, fps=env.metadata["render_fps"])
    ...
    close_window()

pygame is imported only when a window is opened (it comes with ``gymnasium[classic_control]``).
Without a display, opening a window raises :class:`DisplayUnavailableError` that says what to do;
headless tests set ``SDL_VIDEODRIVER=dummy``.
"""

from __future__ import annotations

import os
import sys
import time
from typing import TYPE_CHECKING, Literal

import numpy as np

if TYPE_CHECKING:
    import pygame

__all__ = [
    "DisplayUnavailableError",
    "FrameWindow",
    "check_frame",
    "close_window",
    "display_problem",
    "fit_scale",
    "import_cv2",
    "show_frame",
    "upscale",
]

Interpolation = Literal["nearest", "area"]

#: Default on-screen size of the longer frame side when no scale is given.
DEFAULT_VIEW_SIZE = 512

_INTERPOLATION = ("nearest", "area")
_OPENCV_HINT = "install OpenCV with `pip install opencv-python-headless` (it comes with the package's sims extra)"
_PYGAME_HINT = "install pygame with `pip install 'gymnasium[classic_control]==1.4.0'` (or the package's dev extra)"


class DisplayUnavailableError(RuntimeError):
    """No screen to open a window on (no X11/Wayland display, no usable SDL video driver)."""


def check_frame(frame: np.ndarray) -> np.ndarray:
    """Validates an RGB frame and returns it as a contiguous uint8 [H, W, 3] array.

    Raises:
        ValueError: ``frame`` is not uint8 [H, W, 3].
    """
    frame = np.asarray(frame)
    if frame.dtype != np.uint8 or frame.ndim != 3 or frame.shape[2] != 3 or 0 in frame.shape:
        raise ValueError(
            f"expected an RGB frame as uint8 [H, W, 3], got {frame.dtype} {frame.shape}; "
            "convert float frames with (x * 255).round().clip(0, 255).astype(np.uint8)"
        )
    return np.ascontiguousarray(frame)


def fit_scale(shape: tuple[int, ...], target: int = DEFAULT_VIEW_SIZE) -> int:
    """Largest integer factor (at least 1) that keeps the longer side of ``shape`` within ``target`` pixels.

    A 64x64 frame gets 4 for ``target=256``; a frame already larger than ``target`` gets 1.
    """
    longer = max(int(shape[0]), int(shape[1]))
    return max(1, int(target) // longer)


def upscale(
    frame: np.ndarray,
    scale: float | None = None,
    *,
    size: tuple[int, int] | None = None,
    method: Interpolation = "nearest",
) -> np.ndarray:
    """Resizes an RGB frame for viewing, by a factor or to an exact ``(height, width)``.

    Args:
        frame: uint8 [H, W, 3].
        scale: Factor applied to both sides (e.g. 4 turns 64x64 into 256x256). Ignored if ``size`` is given.
        size: Output ``(height, width)``.
        method: ``"nearest"`` (exact pixels) or ``"area"`` (area averaging: even pixel widths at
            fractional factors, the filter to use when shrinking).

    Returns:
        The resized uint8 [H', W', 3] frame (the input itself when nothing changes).

    Raises:
        ValueError: Bad frame, scale, size or method.
    """
    frame = check_frame(frame)
    if method not in _INTERPOLATION:
        raise ValueError(f"unknown interpolation {method!r}; choose one of {sorted(_INTERPOLATION)}")
    if size is None:
        if scale is None or scale <= 0:
            raise ValueError(f"give a positive scale or a size, got scale={scale!r}")
        size = (max(1, round(frame.shape[0] * scale)), max(1, round(frame.shape[1] * scale)))
    height, width = int(size[0]), int(size[1])
    if height < 1 or width < 1:
        raise ValueError(f"size must be positive (height, width), got {size}")
    if (height, width) == frame.shape[:2]:
        return frame
    if height % frame.shape[0] == 0 and width % frame.shape[1] == 0:  # integer factors: both filters copy pixels
        return frame.repeat(height // frame.shape[0], axis=0).repeat(width // frame.shape[1], axis=1)
    cv2 = import_cv2()
    interpolation = cv2.INTER_NEAREST if method == "nearest" else cv2.INTER_AREA
    return cv2.resize(frame, (width, height), interpolation=interpolation)


def import_cv2():
    """Imports OpenCV (resizing to fractional sizes, HUD drawing), with an install hint if it is missing."""
    try:
        import cv2
    except ImportError as err:
        raise ImportError(f"this needs OpenCV ({err}); {_OPENCV_HINT}") from err
    return cv2


def display_problem() -> str | None:
    """Why no window can be opened here, or None when a display looks available.

    Only the obvious case is detected without touching SDL: Linux/BSD with neither ``DISPLAY``
    nor ``WAYLAND_DISPLAY`` and no ``SDL_VIDEODRIVER`` chosen.
    """
    if os.environ.get("SDL_VIDEODRIVER"):
        return None
    if not sys.platform.startswith(("linux", "freebsd", "openbsd", "netbsd")):
        return None
    if os.environ.get("DISPLAY") or os.environ.get("WAYLAND_DISPLAY"):
        return None
    return "no display is available (neither DISPLAY nor WAYLAND_DISPLAY is set)"


def _display_error(reason: str) -> DisplayUnavailableError:
    return DisplayUnavailableError(
        f"cannot open a window: {reason}. Fix: use render_mode='rgb_array' and save a video "
        "(`astra-gym rollout --out run.mp4`), run under a desktop session or a virtual display "
        "(`xvfb-run -a ...`), or set SDL_VIDEODRIVER=dummy for a headless run that shows nothing."
    )


def _import_pygame():
    """Imports pygame quietly, with an install hint if it is missing."""
    os.environ.setdefault("PYGAME_HIDE_SUPPORT_PROMPT", "1")
    try:
        import pygame
    except ImportError as err:
        raise ImportError(f"a window needs pygame ({err}); {_PYGAME_HINT}") from err
    return pygame


class FrameWindow:
    """A pygame window showing RGB frames, optionally upscaled and paced.

    The window opens on the first :meth:`show` and follows the frame size. Every :meth:`show`
    drains the event queue: closing the window sets :attr:`closed_by_user`, and the events are kept
    for :meth:`events` (keyboard control reads them there).

    Args:
        title: Window title.
        scale: Upscaling factor for display (None: :func:`fit_scale` to about ``DEFAULT_VIEW_SIZE`` pixels).
        fps: If given, :meth:`show` waits so that frames appear at most ``fps`` times a second.
        method: Upscaling filter, ``"nearest"`` or ``"area"``.

    Attributes:
        closed_by_user: The window's close button was pressed.
    """

    def __init__(
        self,
        title: str = "Astra",
        scale: float | None = None,
        fps: float | None = None,
        method: Interpolation = "nearest",
    ) -> None:
        if scale is not None and scale <= 0:
            raise ValueError(f"scale must be positive, got {scale}")
        if fps is not None and fps <= 0:
            raise ValueError(f"fps must be positive, got {fps}")
        self.title = title
        self.scale = scale
        self.fps = fps
        self.method = method
        self.closed_by_user = False
        self._pygame = None
        self._screen: pygame.Surface | None = None
        self._pending: list[pygame.event.Event] = []
        self._last_show: float | None = None

    def configure(
        self, title: str, scale: float | None = None, fps: float | None = None, method: Interpolation = "nearest"
    ) -> None:
        """Changes the title, scale, pacing and filter of the next frames."""
        self.title, self.scale, self.fps, self.method = title, scale, fps, method
        if self._screen is not None:
            self._pygame.display.set_caption(title)

    @property
    def is_open(self) -> bool:
        """Whether the window is currently on screen."""
        return self._screen is not None

    def show(self, frame: np.ndarray) -> None:
        """Draws ``frame`` (uint8 [H, W, 3]) in the window, opening or resizing it as needed.

        Raises:
            DisplayUnavailableError: There is no display to open the window on.
            ImportError: pygame is not installed.
        """
        frame = check_frame(frame)
        scale = self.scale if self.scale is not None else fit_scale(frame.shape)
        view = upscale(frame, scale, method=self.method)
        screen = self._ensure_screen(view.shape[1], view.shape[0])
        image = self._pygame.image.frombuffer(view.tobytes(), (view.shape[1], view.shape[0]), "RGB")
        screen.blit(image, (0, 0))
        self._pygame.display.flip()
        self._collect_events()
        self._pace()

    def events(self) -> list[pygame.event.Event]:
        """Returns (and forgets) the pygame events received since the last call."""
        if self._pygame is not None and self.is_open:
            self._collect_events()
        events, self._pending = self._pending, []
        return events

    def close(self) -> None:
        """Closes the window (safe to call twice)."""
        if self._screen is not None:
            self._pygame.display.quit()
            self._screen = None

    def __enter__(self) -> FrameWindow:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _ensure_screen(self, width: int, height: int) -> pygame.Surface:
        if self._screen is not None and self._screen.get_size() == (width, height):
            return self._screen
        if self._screen is None:
            self._open_display()
        self._screen = self._pygame.display.set_mode((width, height))
        self._pygame.display.set_caption(self.title)
        return self._screen

    def _open_display(self) -> None:
        problem = display_problem()
        if problem is not None:
            raise _display_error(problem)
        pygame = self._pygame = _import_pygame()
        try:
            pygame.display.init()
        except pygame.error as err:
            raise _display_error(f"SDL found no usable video driver ({err})") from err

    def _collect_events(self) -> None:
        for event in self._pygame.event.get():
            if event.type == self._pygame.QUIT:
                self.closed_by_user = True
            self._pending.append(event)

    def _pace(self) -> None:
        now = time.perf_counter()
        if self.fps is not None and self._last_show is not None:
            wait = 1.0 / self.fps - (now - self._last_show)
            if wait > 0:
                time.sleep(wait)
                now = time.perf_counter()
        self._last_show = now


_WINDOW: FrameWindow | None = None


def show_frame(
    frame: np.ndarray,
    window_name: str = "Astra",
    scale: float | None = None,
    fps: float | None = None,
    method: Interpolation = "nearest",
) -> FrameWindow:
    """Shows ``frame`` in the shared window (opened on first use), for ``render_mode="human"``.

    pygame has one window per process, so every caller shares it; the latest ``window_name``,
    ``scale``, ``fps`` and ``method`` apply.

    Args:
        frame: uint8 [H, W, 3].
        window_name: Window title.
        scale: Upscaling factor (None: fit about ``DEFAULT_VIEW_SIZE`` pixels, 8x for 64x64 frames).
        fps: Pace frames to at most this rate (e.g. ``env.metadata["render_fps"]``).
        method: Upscaling filter, ``"nearest"`` or ``"area"``.

    Returns:
        The window, whose :meth:`FrameWindow.events` holds the keyboard and close events.

    Raises:
        DisplayUnavailableError: No display; the message says to use ``render_mode="rgb_array"`` or set one up.
    """
    global _WINDOW
    if _WINDOW is None or not _WINDOW.is_open:
        _WINDOW = FrameWindow(window_name, scale, fps, method)
    else:
        _WINDOW.configure(window_name, scale, fps, method)
    _WINDOW.show(frame)
    return _WINDOW


def close_window() -> None:
    """Closes the :func:`show_frame` window, if one is open."""
    global _WINDOW
    if _WINDOW is not None:
        _WINDOW.close()
        _WINDOW = None
