"""Render wrappers (action HUD, side by side with the real simulator, enlarge) and RecordVideo on them."""

import gymnasium as gym
import numpy as np
import pytest
from gymnasium.wrappers import RecordVideo

import astra_gym  # noqa: F401 - registers the ids
from astra_gym.envs.recording import draw_action_hud, read_video
from astra_gym.envs.wrappers import ActionHud, Enlarge, SideBySide, SideBySideUnavailable, action_labels

LEFT, RIGHT = np.float32([-1.0, 0.3, 0.0]), np.float32([1.0, 0.3, 0.0])


@pytest.fixture(scope="module")
def drive():
    """Astra-Drive-v0 with tiny random weights: its frame bank holds real CarRacing starts."""
    env = gym.make("Astra-Drive-v0", checkpoint="debug", device="cpu", render_mode="rgb_array")
    yield env
    env.close()


def test_hud_draws_the_action_that_produced_the_frame(drive):
    hud = ActionHud(drive)
    hud.reset(seed=0)
    at_reset = hud.render()
    assert at_reset.shape == (256 + 60, 256, 3)
    np.testing.assert_array_equal(at_reset, draw_action_hud(drive.render(), [0, 0, 0], drive.action_space))
    hud.step(LEFT)
    left = hud.render()
    np.testing.assert_array_equal(left, draw_action_hud(drive.render(), LEFT, drive.action_space))
    hud.step(RIGHT)
    assert not np.array_equal(left[256:], hud.render()[256:])  # the strip follows the action
    assert action_labels(drive) == ["steer", "gas", "brake"]


def test_record_video_records_the_hud(drive, tmp_path):
    env = RecordVideo(ActionHud(drive), str(tmp_path), episode_trigger=lambda e: True, name_prefix="hud")
    env.reset(seed=1)
    for action in (LEFT, LEFT, RIGHT):
        env.step(action)
    env.stop_recording()
    video = read_video(tmp_path / "hud-episode-0.mp4")
    assert video.shape == (4, 256 + 60, 256, 3)  # reset + 3 steps, each with the HUD strip


def test_wrappers_need_rgb_arrays():
    env = gym.make("Astra-Debug-v0", device="cpu")
    with pytest.raises(ValueError, match='render_mode="rgb_array"'):
        ActionHud(env)
    env.close()


def test_enlarge_views_every_frame_of_a_step(drive):
    view = Enlarge(drive, size=128)
    obs, info = view.reset(seed=2)
    views = view.views(info["frames"])
    assert len(views) == len(info["frames"]) and views[-1].shape == (128, 128, 3)
    np.testing.assert_array_equal(views[-1], obs.repeat(2, 0).repeat(2, 1))


def test_side_by_side_starts_in_the_env_start_state(drive, tmp_path):
    pytest.importorskip("Box2D")
    env = SideBySide(drive)
    _, info = env.reset(seed=3)
    np.testing.assert_array_equal(env.session.frame(), info["frames"][-1])
    env.step(np.float32([0.0, 1.0, 0.0]))
    assert len(env.real_frames) == 1 and env.real_frames[0].shape == info["frames"][-1].shape
    panels = env.render()
    assert panels.shape == (22 + 256, 2 * 256 + 4, 3)
    np.testing.assert_array_equal(panels[22:, 260:][::4, ::4], env.real_frames[0])  # right panel: the simulator
    recorder = RecordVideo(ActionHud(env), str(tmp_path), episode_trigger=lambda e: True, name_prefix="twin")
    recorder.reset(seed=3)
    recorder.step(LEFT)
    recorder.close()
    video = read_video(tmp_path / "twin-episode-0.mp4")
    assert video.shape[:3:2] == (2, 2 * 256 + 4) and video.shape[1] > 22 + 256 + 60  # panels, then the HUD strip


def test_side_by_side_needs_a_simulator_start():
    env = SideBySide(gym.make("Astra-Debug-v0", device="cpu", render_mode="rgb_array"))
    with pytest.raises(SideBySideUnavailable, match="synthetic frames"):
        env.reset(seed=0)
    env.close()
