"""Upscaling helpers and the pygame window (headless, SDL dummy video driver)."""

import numpy as np
import pytest

from astra_gym.envs import render


def _frame(height=64, width=64, seed=0):
    return np.random.default_rng(seed).integers(0, 256, (height, width, 3), dtype=np.uint8)


def test_nearest_upscale_repeats_pixels():
    frame = _frame(8, 6)
    big = render.upscale(frame, 4)
    assert big.shape == (32, 24, 3)
    np.testing.assert_array_equal(big, frame.repeat(4, 0).repeat(4, 1))


def test_area_resizes_to_exact_size_and_shrinks():
    frame = _frame(64, 64)
    assert render.upscale(frame, size=(100, 150), method="area").shape == (100, 150, 3)
    small = render.upscale(np.full((96, 96, 3), 200, np.uint8), size=(64, 64), method="area")
    assert small.shape == (64, 64, 3) and np.all(small == 200)


@pytest.mark.parametrize(
    "bad, match",
    [(np.zeros((8, 8), np.uint8), "uint8 \\[H, W, 3\\]"), (np.zeros((8, 8, 3), np.float32), "uint8")],
)
def test_bad_frames_are_named(bad, match):
    with pytest.raises(ValueError, match=match):
        render.upscale(bad, 2)


def test_upscale_argument_errors():
    with pytest.raises(ValueError, match="positive scale or a size"):
        render.upscale(_frame(), None)
    with pytest.raises(ValueError, match="unknown interpolation"):
        render.upscale(_frame(), 2, method="cubic")


def test_fit_scale():
    assert render.fit_scale((64, 64, 3), 256) == 4
    assert render.fit_scale((480, 832, 3), 256) == 1


def test_missing_display_error_says_what_to_do(monkeypatch):
    monkeypatch.setattr(render.sys, "platform", "linux")
    for name in ("SDL_VIDEODRIVER", "DISPLAY", "WAYLAND_DISPLAY"):
        monkeypatch.delenv(name, raising=False)
    with pytest.raises(render.DisplayUnavailableError, match="rgb_array.*display"):
        render.FrameWindow("test").show(_frame())


def test_window_shows_frames_headless(monkeypatch):
    pygame = pytest.importorskip("pygame")
    monkeypatch.setenv("SDL_VIDEODRIVER", "dummy")
    try:
        window = render.show_frame(_frame(), "astra test", scale=2)
        assert window.is_open and pygame.display.get_surface().get_size() == (128, 128)
        pixel = pygame.display.get_surface().get_at((5, 7))
        assert tuple(pixel)[:3] == tuple(_frame()[3, 2])  # (x=5, y=7) at scale 2 is frame[3, 2]
        pygame.event.post(pygame.event.Event(pygame.KEYDOWN, key=pygame.K_a))
        render.show_frame(_frame(32, 48, seed=1), "astra test", scale=2)  # new size: the window follows
        assert pygame.display.get_surface().get_size() == (96, 64)
        assert any(e.type == pygame.KEYDOWN for e in window.events())
        assert window.events() == []
    finally:
        render.close_window()
    assert not window.is_open


def test_check_env_passes_headless(monkeypatch):
    """Gymnasium's check_env with its defaults (it renders every mode, 'human' too) on a machine without a display."""
    import gymnasium as gym
    from gymnasium.utils.env_checker import check_env

    import astra_gym  # noqa: F401

    monkeypatch.setattr(render.sys, "platform", "linux")
    for name in ("SDL_VIDEODRIVER", "DISPLAY", "WAYLAND_DISPLAY"):
        monkeypatch.delenv(name, raising=False)
    env = gym.make("Astra-Debug-v0")
    with pytest.warns(UserWarning, match="shows nothing here.*rgb_array"):
        check_env(env.unwrapped)
    env.close()
