"""Action HUD, side-by-side panels and the atomic mp4 writer."""

import gymnasium as gym
import numpy as np
import pytest

from astra_gym.envs.recording import VideoWriter, draw_action_hud, hud_kind, read_video, side_by_side

DRIVE = gym.spaces.Box(np.array([-1.0, 0.0, 0.0], np.float32), np.array([1.0, 1.0, 1.0], np.float32))
FETCH = gym.spaces.Box(-1.0, 1.0, (4,), np.float32)
BUTTONS = ("MOVE_FORWARD", "MOVE_BACKWARD", "TURN_LEFT", "TURN_RIGHT", "MOVE_LEFT", "MOVE_RIGHT")
STEER_RGB = (255, 196, 40)


def _frame(height=64, width=64, seed=0):
    return np.random.default_rng(seed).integers(0, 256, (height, width, 3), dtype=np.uint8)


def _strip(image, frame_height=256):
    return image[frame_height:].astype(int)


def _count(image, rgb, tol=30):
    return int(np.all(np.abs(image - np.array(rgb)) <= tol, axis=-1).sum())


@pytest.mark.parametrize(
    "space, kind",
    [
        (DRIVE, "drive"),
        (FETCH, "manipulation"),
        (gym.spaces.MultiBinary(6), "buttons"),
        (gym.spaces.MultiDiscrete([2, 2, 2]), "buttons"),
        (gym.spaces.Discrete(5), "discrete"),
        (gym.spaces.Box(-2, 2, (2,)), "box"),
    ],
)
def test_hud_kind(space, kind):
    assert hud_kind(space) == kind


def test_hud_upscales_and_keeps_the_frame():
    frame = _frame()
    out = draw_action_hud(frame, [0.0, 0.5, 0.0], DRIVE)
    assert out.dtype == np.uint8 and out.shape[1] == 256 and out.shape[0] > 256
    np.testing.assert_array_equal(out[:256], frame.repeat(4, 0).repeat(4, 1))
    overlay = draw_action_hud(frame, [0.0, 0.5, 0.0], DRIVE, placement="overlay")
    assert overlay.shape == (256, 256, 3)


def test_steering_bar_fills_towards_the_steering_side():
    left = _strip(draw_action_hud(_frame(), [-1.0, 0.0, 0.0], DRIVE))
    right = _strip(draw_action_hud(_frame(), [1.0, 0.0, 0.0], DRIVE))
    middle = left.shape[1] // 2
    assert _count(left[:, :middle], STEER_RGB) > 500 and _count(left[:, middle:], STEER_RGB) < 50
    assert _count(right[:, middle:], STEER_RGB) > 500 and _count(right[:, :middle], STEER_RGB) < 50


def test_gas_and_brake_bars_follow_the_action():
    gas = _strip(draw_action_hud(_frame(), [0.0, 1.0, 0.0], DRIVE))
    brake = _strip(draw_action_hud(_frame(), [0.0, 0.0, 1.0], DRIVE))
    green, red = (70, 200, 90), (235, 70, 60)
    assert _count(gas, green) > 500 and _count(gas, red) < 50
    assert _count(brake, red) > 500 and _count(brake, green) < 50


def test_manipulation_hud_differs_per_action():
    actions = [[1, 0, 0, 1], [-1, 0, 0, 1], [0, 1, 0, 1], [0, 0, 1, 1], [1, 0, 0, -1]]
    strips = [_strip(draw_action_hud(_frame(), a, FETCH)) for a in actions]
    for i in range(len(strips)):
        for j in range(i + 1, len(strips)):
            assert np.abs(strips[i] - strips[j]).sum() > 0, (actions[i], actions[j])


def test_pressed_buttons_light_their_caps():
    space = gym.spaces.MultiBinary(6)
    cap_width = 256 // 6
    for index in range(6):
        pressed = np.eye(6, dtype=np.int8)[index]
        strip = _strip(draw_action_hud(_frame(), pressed, space, BUTTONS))
        lit = [_count(strip[:, k * cap_width : (k + 1) * cap_width], STEER_RGB) for k in range(6)]
        assert int(np.argmax(lit)) == index and sorted(lit)[-2] < 20


def test_discrete_and_generic_box_huds():
    discrete = draw_action_hud(_frame(), 2, gym.spaces.Discrete(3), ["noop", "left", "right"])
    assert discrete.shape[0] > 256
    box = gym.spaces.Box(np.array([-1.0, 0.0], np.float32), np.array([1.0, 10.0], np.float32))
    a, b = (_strip(draw_action_hud(_frame(), act, box)) for act in ([0.5, 1.0], [-0.5, 9.0]))
    assert np.abs(a - b).sum() > 0


def test_hud_rejects_mismatched_actions_and_labels():
    with pytest.raises(ValueError, match="does not fit"):
        draw_action_hud(_frame(), [0.0, 1.0], DRIVE)
    with pytest.raises(ValueError, match="labels"):
        draw_action_hud(_frame(), [1, 0], gym.spaces.MultiBinary(2), ["FWD"])
    with pytest.raises(TypeError, match="no action HUD"):
        draw_action_hud(_frame(), {}, gym.spaces.Dict({"a": DRIVE}))


def test_side_by_side_panels():
    out = side_by_side(_frame(64, 64), _frame(96, 96, seed=1), ("model", "sim"))
    assert out.shape == (22 + 256, 256 * 2 + 4, 3)
    np.testing.assert_array_equal(out[22:, :256], _frame().repeat(4, 0).repeat(4, 1))
    with pytest.raises(ValueError, match="two labels"):
        side_by_side(_frame(), _frame(), ("only one",))


def _gradient(step, height, width):
    y, x = np.mgrid[:height, :width]
    frame = np.stack([(x * 4 + step * 8) % 256, (y * 4) % 256, np.full_like(x, 128)], axis=-1)
    return frame.astype(np.uint8)


def test_video_writer_round_trip(tmp_path):
    path = tmp_path / "clip.mp4"
    frames = [_gradient(t, 63, 65) for t in range(7)]  # odd sizes are padded to even
    with VideoWriter(path, fps=10) as video:
        for frame in frames:
            video.write(frame)
    assert video.frames_written == 7 and video.size == (64, 66)
    back = read_video(path)
    assert back.shape == (7, 64, 66, 3)
    error = np.abs(back[:, :63, :65].astype(int) - np.stack(frames).astype(int)).mean()
    assert error < 6, error
    assert [p.name for p in tmp_path.iterdir()] == ["clip.mp4"]


def test_video_writer_is_atomic(tmp_path):
    path = tmp_path / "run.mp4"
    path.write_bytes(b"previous video")
    with pytest.raises(RuntimeError, match="boom"):
        with VideoWriter(path) as video:
            video.write(_frame())
            video.write(_frame(seed=1))
            raise RuntimeError("boom")
    assert path.read_bytes() == b"previous video"
    assert [p.name for p in tmp_path.iterdir()] == ["run.mp4"]
    with pytest.raises(RuntimeError, match="boom"):
        with VideoWriter(tmp_path / "new.mp4") as video:
            video.write(_frame())
            raise RuntimeError("boom")
    assert not (tmp_path / "new.mp4").exists()


def test_video_writer_errors(tmp_path):
    with pytest.raises(ValueError, match="no frame"):
        with VideoWriter(tmp_path / "empty.mp4"):
            pass
    assert list(tmp_path.iterdir()) == []
    with pytest.raises(ValueError, match="differs"):
        with VideoWriter(tmp_path / "sizes.mp4") as video:
            video.write(_frame(64, 64))
            video.write(_frame(32, 32))
    assert list(tmp_path.iterdir()) == []
    with pytest.raises(FileNotFoundError, match="does not exist"):
        VideoWriter(tmp_path / "missing" / "x.mp4").open()


def test_gymnasium_record_video_writes_an_episode(tmp_path):
    """Gymnasium's own RecordVideo (moviepy, from the `video` extra) records an Astra env."""
    import gymnasium as gym
    from gymnasium.wrappers import RecordVideo

    import astra_gym  # noqa: F401

    env = RecordVideo(
        gym.make("Astra-Debug-v0", render_mode="rgb_array"), str(tmp_path), episode_trigger=lambda e: True
    )
    env.reset(seed=0)
    for _ in range(4):
        env.step(env.action_space.sample())
    env.close()
    videos = list(tmp_path.glob("*.mp4"))
    assert len(videos) == 1 and videos[0].stat().st_size > 1000
