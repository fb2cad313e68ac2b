"""Pose conventions, modality encoders and the latent alignment rule of action_codecs."""

from __future__ import annotations

import numpy as np
import pytest

from astra_gym.data import action_codecs as ac
from astra_gym.data.synthetic import DOOM_BUTTONS, drive_episode, explore_episode, manipulation_episode
from astra_gym.world_model.config import ASTRA_GYM_MODALITIES
from astra_gym.world_model.release_compat import release_align_to_latents, release_latent_step_ranges


def _random_rotation(rng: np.random.Generator, n: int) -> np.ndarray:
    return ac.quat_to_matrix(rng.normal(size=(n, 4)))


def _yaw(row12: np.ndarray) -> float:
    """The release HUD's yaw: atan2(r02, r00)."""
    return float(np.arctan2(row12[2], row12[0]))


def _pitch(row12: np.ndarray) -> float:
    """The release HUD's pitch: atan2(-r12, r22); < 0 means looking up."""
    return float(np.arctan2(-row12[6], row12[10]))


# ---- rotations and relative poses ---------------------------------------------------------------


def test_yaw_rotation_matches_the_release_matrix():
    c, s = np.cos(0.3), np.sin(0.3)
    np.testing.assert_allclose(ac.yaw_rotation(0.3), [[c, 0, s], [0, 1, 0], [-s, 0, c]])
    assert ac.yaw_rotation(np.zeros((2, 5))).shape == (2, 5, 3, 3)


def test_quaternion_and_rpy_round_trips():
    rng = np.random.default_rng(0)
    q = rng.normal(size=(50, 4))
    q /= np.linalg.norm(q, axis=1, keepdims=True)
    back = ac.matrix_to_quat(ac.quat_to_matrix(q))
    np.testing.assert_allclose(np.abs(np.sum(back * q, axis=1)), 1.0, atol=1e-10)  # equal up to sign
    rpy = rng.uniform([-3, -1.5, -3], [3, 1.5, 3], size=(50, 3))
    np.testing.assert_allclose(ac.matrix_to_rpy(ac.rpy_to_matrix(rpy)), rpy, atol=1e-10)
    np.testing.assert_allclose(
        ac.quat_to_matrix(ac.quat_multiply(q[:-1], q[1:])),
        ac.quat_to_matrix(q[:-1]) @ ac.quat_to_matrix(q[1:]),
        atol=1e-10,
    )


def test_left_turn_in_place_is_a_positive_pure_yaw():
    poses = {"camera_pos": np.full((2, 3), 7.0), "camera_yaw": np.array([1.0, 1.2])}  # ANGLE grows: left turn
    row = ac.camera_rows(poses)[0]
    np.testing.assert_allclose(row.reshape(3, 4)[:, :3], ac.yaw_rotation(0.2), atol=1e-6)
    np.testing.assert_allclose(row.reshape(3, 4)[:, 3], 0.0, atol=1e-5)
    assert _yaw(row) == pytest.approx(0.2, abs=1e-6)


@pytest.mark.parametrize("heading", [0.0, 1.0, -2.5])
def test_forward_motion_is_negative_z_at_any_heading(heading):
    direction = np.array([np.cos(heading), np.sin(heading), 0.0])
    poses = {"camera_pos": np.stack([np.zeros(3), 3.0 * direction]), "camera_yaw": np.full(2, heading)}
    row = ac.camera_rows(poses)[0].reshape(3, 4)
    np.testing.assert_allclose(row[:, :3], np.eye(3), atol=1e-6)
    np.testing.assert_allclose(row[:, 3], [0.0, 0.0, -3.0], atol=1e-5)


def test_doom_pitch_sign_matches_the_release_hud():
    # Doom's PITCH grows when looking down; the release HUD reads pitch < 0 as "up".
    poses = {"camera_pos": np.zeros((3, 3)), "camera_yaw": np.zeros(3), "camera_pitch": np.array([0.0, 0.1, 0.0])}
    down, up = ac.camera_rows(poses)
    assert _pitch(down) == pytest.approx(0.1, abs=1e-6)
    assert _pitch(up) == pytest.approx(-0.1, abs=1e-6)


def test_composed_relative_poses_equal_the_direct_pose():
    rng = np.random.default_rng(1)
    R, t = _random_rotation(rng, 6), rng.normal(size=(6, 3))
    steps = ac.relative_pose_12d(R[:-1], t[:-1], R[1:], t[1:])
    np.testing.assert_allclose(ac.compose_pose12(steps), ac.relative_pose_12d(R[0], t[0], R[-1], t[-1]), atol=1e-10)


def test_relative_translation_is_in_the_destination_camera_frame():
    # Camera b has turned by 90 deg to the left of a and sits 1 unit ahead of a (along a's forward axis).
    R_a, t_a = np.eye(3), np.zeros(3)
    R_b = ac.yaw_rotation(np.pi / 2)
    t_b = -R_b @ np.array([0.0, 0.0, 1.0])  # centre C_b = (0, 0, 1) in a's (= world) axes
    row = ac.relative_pose_12d(R_a, t_a, R_b, t_b).reshape(3, 4)
    np.testing.assert_allclose(row[:, 3], -R_b @ np.array([0.0, 0.0, 1.0]), atol=1e-12)  # -R_b (C_b - C_a)
    np.testing.assert_allclose(row[:, 3], [-1.0, 0.0, 0.0], atol=1e-12)  # a's centre lies to b's left


# ---- simulator trajectories ----------------------------------------------------------------------


def test_car_driving_straight_then_left_gives_the_expected_signs():
    ep = drive_episode(straight=4, turn=4, yaw0=0.3)
    cam = ac.camera_rows(ep.poses)
    for row in cam[:4]:  # straight: pure -z translation, no rotation
        np.testing.assert_allclose(row.reshape(3, 4)[:, :3], np.eye(3), atol=1e-6)
        np.testing.assert_allclose(row.reshape(3, 4)[:, 3], [0, 0, -2.0], atol=1e-5)
    assert all(_yaw(row) == pytest.approx(0.1, abs=1e-6) for row in cam[4:])  # left turn: yaw > 0
    veh = ac.vehicle_rows(ep.poses)
    np.testing.assert_allclose(veh[:4], np.tile([2.0, 0, 0, 1, 0, 0, 0], (4, 1)), atol=1e-5)  # x forward in ego frame
    assert np.all(veh[4:, 6] > 0) and np.allclose(veh[4:, 6], np.sin(0.05), atol=1e-6)  # qz > 0: left
    cmd = ac.native_action_rows("drive", ep.actions)
    np.testing.assert_allclose(cmd[4], [-1.0, 0.5, 0.0, 1.0, 0, 0, 0])  # steer -1 = left, present column


def test_doom_forward_then_turn_left_gives_the_expected_signs():
    ep = explore_episode(forward=3, turn=3, yaw0=2.0)
    cam = ac.camera_rows(ep.poses)
    np.testing.assert_allclose(cam[:3, [3, 7, 11]], np.tile([0, 0, -10.0], (3, 1)), atol=1e-4)
    assert all(_yaw(row) == pytest.approx(0.05, abs=1e-6) for row in cam[3:])
    keys = ac.native_action_rows("explore", ep.actions, DOOM_BUTTONS)
    assert (
        keys[0, ac.KEYBOARD_BUTTONS.index("MOVE_FORWARD")] == 1
        and keys[3, ac.KEYBOARD_BUTTONS.index("TURN_LEFT")] == 1
    )


def test_robot_rows_and_end_effector_camera():
    ep = manipulation_episode(steps=4)
    rows = ac.robot_rows(ep.poses, ep.actions)
    np.testing.assert_allclose(rows, np.tile([0.01, 0, 0, 0, 0, 0, -1.0], (4, 1)), atol=1e-6)
    np.testing.assert_allclose(ac.robot_command_rows(ep.actions)[0], [0.2, 0, 0, 0, 0, 0, -1.0])
    # Lowering the gripper moves its camera forward (it looks down at the table).
    poses = {
        "ee_pos": np.array([[1.3, 0.75, 0.55], [1.3, 0.75, 0.50]]),
        "ee_quat": np.tile(ep.poses["ee_quat"][0], (2, 1)),
    }
    np.testing.assert_allclose(ac.camera_rows(poses)[0][[3, 7, 11]], [0, 0, -0.05], atol=1e-6)


def test_robot_rows_rotation_delta_is_world_frame_yaw():
    quat = np.stack(
        [
            ac.matrix_to_quat(ac.rpy_to_matrix([0.0, 0.0, a]) @ ac.quat_to_matrix(np.array([0.7, 0, 0.7, 0])))
            for a in (0.0, 0.2)
        ]
    )
    rows = ac.robot_rows({"ee_pos": np.zeros((2, 3)), "ee_quat": quat}, np.zeros((1, 4)))
    np.testing.assert_allclose(rows[0, 3:6], [0.0, 0.0, 0.2], atol=1e-6)


# ---- keyboard ----------------------------------------------------------------------------------


def test_keyboard_multi_hot_round_trip():
    rng = np.random.default_rng(2)
    actions = rng.integers(0, 2, size=(20, len(DOOM_BUTTONS))).astype(np.int8)
    named = [f"Button.{b}" for b in DOOM_BUTTONS]  # ViZDoom's str(Button) spelling works too
    rows = ac.keyboard_rows(actions, named)
    assert rows.shape == (20, ac.KEYBOARD_WIDTH) and rows.dtype == np.float32
    np.testing.assert_array_equal(rows[:, -1], 1.0)  # present column
    np.testing.assert_array_equal(ac.keyboard_actions(rows, DOOM_BUTTONS), actions)
    slots = [ac.KEYBOARD_BUTTONS.index(b) for b in DOOM_BUTTONS]
    np.testing.assert_array_equal(rows[:, slots], actions)
    unused = sorted(set(range(ac.KEYBOARD_WIDTH - 1)) - set(slots))
    np.testing.assert_array_equal(rows[:, unused], 0.0)


def test_keyboard_rejects_unknown_buttons_and_missing_names():
    with pytest.raises(ValueError, match="no keyboard slot"):
        ac.keyboard_rows(np.zeros((2, 1), np.int8), ["TURN_LEFT_RIGHT_DELTA"])
    with pytest.raises(ValueError, match="button names"):
        ac.native_action_rows("explore", np.zeros((2, 1), np.int8))
    with pytest.raises(ValueError, match="unknown scenario"):
        ac.native_action_rows("fly", np.zeros((2, 3)))


def test_command_rows_are_never_the_null_action_for_drive_and_explore():
    assert ac.vehicle_command_rows(np.zeros((1, 3))).any()
    assert ac.keyboard_rows(np.zeros((1, 6), np.int8), DOOM_BUTTONS).any()
    np.testing.assert_allclose(ac.vehicle_command_rows([[-3.0, 2.0, -1.0]])[0, :3], [-1.0, 1.0, 0.0])  # clipped


# ---- features ----------------------------------------------------------------------------------


def test_feature_widths_match_the_model_modalities():
    widths = {m.name: m.dim - 1 for m in ASTRA_GYM_MODALITIES}
    for spec in ac.FEATURES.values():
        assert spec.dim == widths[spec.modality], spec
    for scenario, feature in ac.INFERENCE_FEATURE.items():
        assert ac.FEATURES[feature].source == "command", scenario


@pytest.mark.parametrize("make", [drive_episode, explore_episode, manipulation_episode])
def test_episode_rows_give_every_feature_with_its_width(make):
    ep = make()
    rows = ac.episode_rows(ep)
    assert set(rows) == set(ac.SCENARIO_FEATURES[ep.scenario])
    for name, r in rows.items():
        assert r.shape == (ep.num_steps, ac.FEATURES[name].dim) and r.dtype == np.float32, name
        assert np.isfinite(r).all()


# ---- latent alignment --------------------------------------------------------------------------


def _indexed_rows(steps: int) -> np.ndarray:
    """rows[t] = [t + 1, 10 (t + 1)]: every value identifies its step."""
    t = np.arange(1, steps + 1, dtype=np.float32)
    return np.stack([t, 10 * t], 1)


def test_alignment_factor_1():
    rows = _indexed_rows(5)
    exact = ac.align_to_latents(rows, 1)
    assert exact.shape == (6, 2)
    np.testing.assert_array_equal(exact[0], 0.0)
    np.testing.assert_array_equal(exact[1:], rows)  # latent k <- rows[k - 1]
    release = release_align_to_latents(rows, 1)
    np.testing.assert_array_equal(release[:5], rows)  # latent k <- rows[k]
    np.testing.assert_array_equal(release[5], 0.0)


def test_alignment_factor_4_uses_the_right_steps():
    rows = _indexed_rows(12)  # 13 frames -> 4 latents
    exact = ac.align_to_latents(rows, 4, "mean")
    assert exact.shape == (4, 2)
    np.testing.assert_array_equal(exact[:, 0], [0.0, 2.5, 6.5, 10.5])  # mean of steps 0-3, 4-7, 8-11 (+1)
    assert ac.latent_step_ranges(12, 4) == [None, (0, 4), (4, 8), (8, 12)]
    assert release_latent_step_ranges(12, 4) == [(0, 4), (4, 8), (8, 12), None]
    release = release_align_to_latents(rows, 4, "mean")
    np.testing.assert_array_equal(release[:-1], exact[1:])  # release row k == exact row k + 1
    np.testing.assert_array_equal(release[-1], 0.0)
    assert ac.num_latents(12, 4) == 4


def test_alignment_composes_poses_over_a_latent():
    rng = np.random.default_rng(3)
    R, t = _random_rotation(rng, 9), rng.normal(size=(9, 3))
    steps = ac.relative_pose_12d(R[:-1], t[:-1], R[1:], t[1:])
    aligned = ac.align_to_latents(steps, 4, "pose12")
    for k in (1, 2):
        a, b = 4 * (k - 1), 4 * k  # latent k covers pixel frames 4(k-1)+1 .. 4k
        np.testing.assert_allclose(aligned[k], ac.relative_pose_12d(R[a], t[a], R[b], t[b]), atol=1e-5)


def test_alignment_composes_ego_and_robot_motion():
    ep = drive_episode(straight=2, turn=6)
    xy, yaw = ep.poses["vehicle_xy"], ep.poses["vehicle_yaw"]
    aligned = ac.align_to_latents(ac.vehicle_rows(ep.poses), 4, "ego7")
    direct = ac.vehicle_rows({"vehicle_xy": xy[[4, 8]], "vehicle_yaw": yaw[[4, 8]]})[0]
    np.testing.assert_allclose(aligned[2], direct, atol=1e-5)
    m = manipulation_episode(steps=4)
    robot = ac.align_to_latents(ac.robot_rows(m.poses, m.actions), 4, "robot7")
    np.testing.assert_allclose(robot[1], [0.04, 0, 0, 0, 0, 0, -1.0], atol=1e-6)


def test_alignment_rejects_partial_latents_and_bad_aggregations():
    with pytest.raises(ValueError, match="trim the episode to 8 steps"):
        ac.align_to_latents(_indexed_rows(10), 4)
    with pytest.raises(ValueError, match="trim the episode to 8 steps"):
        release_align_to_latents(_indexed_rows(10), 4)
    with pytest.raises(ValueError, match="aggregation"):
        ac.align_to_latents(_indexed_rows(4), 4, "middle")
    with pytest.raises(ValueError, match="aggregation"):
        ac.aggregate_rows(_indexed_rows(4), "median")
