"""Native simulator actions and poses -> the world model's per-latent action rows.

Every function here is pure numpy (float64 inside, float32 out) and returns rows **without** the
past/current flag; the flag is appended at pack time
(:func:`astra_gym.world_model.action_encoders.make_action_rows`).

Features, modalities and what the env conditions on
---------------------------------------------------
A *feature* is one way of filling a modality slot (``config.ASTRA_GYM_MODALITIES``). A model is
trained on exactly one feature per modality. At inference the env only knows the commanded Gym
action, so each scenario's world model is conditioned on its **command** feature (marked ★); the
pose features (from the simulator's recorded poses) are for evaluation and for pose-conditioned
training.

=============  ===================  ========  ==========================================================
scenario       feature              modality  columns (one row per env step t, motion/command t -> t+1)
=============  ===================  ========  ==========================================================
drive          ★ vehicle_command    vehicle   [steer, gas, brake, 1, 0, 0, 0]: CarRacing's action clipped
                                              to steer∈[-1,1] (-1 = full left, native sign), gas∈[0,1],
                                              brake∈[0,1]; col 3 is a constant 1 (the "qw" slot of the
                                              pose form), so coasting is never the all-zero null action
drive          vehicle_pose         vehicle   [x, y, z, qw, qx, qy, qz]: ego motion of hull t+1 in the
                                              ego frame of hull t (x forward, y left, z up, Box2D units;
                                              relative quaternion, yaw > 0 = left)
drive          camera_pose          camera    12-D relative [R|t] of a camera riding the hull, looking
                                              along the car heading (:func:`car_camera_from_world`)
manipulation   ★ robot_command      robot     [dx, dy, dz, 0, 0, 0, gripper]: Fetch's action clipped to
                                              [-1,1] (RT-1 layout; Fetch has no rotation command)
manipulation   robot_pose           robot     [dx, dy, dz, droll, dpitch, dyaw, gripper]: end-effector
                                              displacement (m) and rotation delta R_{t+1} R_tᵀ (rad, xyz
                                              Euler) in the world/base frame, gripper = command
manipulation   camera_pose          camera    12-D relative [R|t] of the end effector seen as a camera
                                              (:func:`end_effector_camera_from_world`); the rendered view
                                              is static, so this is the release's "openx" use of the slot
explore        ★ keyboard           keyboard  16 columns: multi-hot of :data:`KEYBOARD_BUTTONS` (15 fixed
                                              Doom buttons) + col 15 = constant 1 ("present")
explore        camera_pose          camera    12-D relative [R|t] of the Doom player's eye
                                              (:func:`doom_camera_from_world`)
=============  ===================  ========  ==========================================================

The all-zero row (flag included) is the null action of action dropout and action-free guidance.
The vehicle and keyboard command rows therefore carry a constant-1 column, so that "coast" or
"no button" stays distinguishable from "no action given". The robot command has no free column
(RT-1's rpy columns keep their meaning); an exactly zero Fetch command equals the null action.

Pose convention (Astra release §3.3)
------------------------------------
Camera axes are OpenCV: x right, y down, z forward. Poses are camera-from-world (w2c):
``x_cam = R x_world + t``. The relative pose from frame a to frame b is the release's sekai
formula ``E_b E_a⁻¹``: ``R_rel = R_b R_aᵀ`` and ``t_rel = t_b - R_rel t_a = -R_b (C_b - C_a)``
with C the camera centre. The translation is therefore expressed in **camera b's axes** (the
destination frame): it is where camera a's centre sits as seen from camera b. Moving forward
gives ``t_rel = (0, 0, -d)``; a left turn gives ``R_rel = R_y(+θ)``. This is an exact SE(3)
transform, so relative poses compose by matrix product (:func:`compose_pose12`) and do not
depend on the world frame. (The release's SpatialVID path instead uses ``R_aᵀ (t_b - t_a)``,
world axes; the two agree only at the initial heading.)

Latent alignment
----------------
Rows are per env step; the model wants one row per latent. With temporal factor f the T+1
frames give ``L = 1 + T // f`` latents, latent k ≥ 1 covering pixel frames ``f(k-1)+1 .. fk``
(latent 0 is frame 0 alone). :func:`align_to_latents` gives latent k the action that *produced*
it, the aggregate of step rows ``f(k-1) .. fk-1``; latent 0 gets the zero row. (The authors'
release used the motion *leaving* each latent instead:
:func:`astra_gym.world_model.release_compat.release_align_to_latents`.)

Aggregation over the f steps of a latent is set by each feature: commands and multi-hot keys are
averaged (a key's value is the fraction of steps it was held), relative poses are composed.

At inference the env builds the row of each newly generated latent the same way: the command rows
of the f Gym actions that produce it (:func:`native_action_rows`), combined with
:func:`aggregate_rows` and the feature's aggregation (for f = 1 simply the one action's row).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Literal

import numpy as np

__all__ = [
    "Scenario",
    "Aggregation",
    "FeatureSpec",
    "FEATURES",
    "SCENARIO_FEATURES",
    "INFERENCE_FEATURE",
    "KEYBOARD_BUTTONS",
    "KEYBOARD_WIDTH",
    "yaw_rotation",
    "quat_multiply",
    "quat_conjugate",
    "quat_to_matrix",
    "matrix_to_quat",
    "rpy_to_matrix",
    "matrix_to_rpy",
    "relative_pose_12d",
    "pose12_to_matrix",
    "compose_pose12",
    "planar_camera_from_world",
    "doom_camera_from_world",
    "car_camera_from_world",
    "end_effector_camera_from_world",
    "camera_from_world",
    "camera_rows",
    "ego_relative_motion",
    "vehicle_rows",
    "robot_rows",
    "keyboard_rows",
    "keyboard_actions",
    "vehicle_command_rows",
    "robot_command_rows",
    "native_action_rows",
    "episode_rows",
    "aggregate_rows",
    "num_latents",
    "latent_step_ranges",
    "align_to_latents",
    "aggregate_ranges",
]

Scenario = Literal["drive", "manipulation", "explore"]
Aggregation = Literal["mean", "pose12", "ego7", "robot7"]


@dataclass(frozen=True)
class FeatureSpec:
    """One way of filling a modality slot (see the module table).

    Attributes:
        name: Feature name, the key of its rows in caches.
        modality: Modality slot it fills (a name of ``config.ASTRA_GYM_MODALITIES``).
        dim: Row width without the flag (modality ``dim - 1``).
        source: ``"command"`` (computable from the Gym action alone, usable at inference) or
            ``"pose"`` (needs the simulator's recorded poses).
        aggregation: How f step rows become one latent row (:func:`aggregate_rows`).
        requires: Keys of ``Episode.poses`` the feature needs (empty for commands, and for
            ``camera_pose``, which takes whichever simulator's keys are present).
    """

    name: str
    modality: str
    dim: int
    source: Literal["command", "pose"]
    aggregation: Aggregation
    requires: tuple[str, ...] = ()


FEATURES: dict[str, FeatureSpec] = {
    spec.name: spec
    for spec in (
        FeatureSpec("vehicle_command", "vehicle", 7, "command", "mean"),
        FeatureSpec("robot_command", "robot", 7, "command", "mean"),
        FeatureSpec("keyboard", "keyboard", 16, "command", "mean"),
        FeatureSpec("vehicle_pose", "vehicle", 7, "pose", "ego7", ("vehicle_xy", "vehicle_yaw")),
        FeatureSpec("robot_pose", "robot", 7, "pose", "robot7", ("ee_pos", "ee_quat")),
        FeatureSpec("camera_pose", "camera", 12, "pose", "pose12"),
    )
}

# Features each scenario can provide, the inference (command) feature first.
SCENARIO_FEATURES: dict[str, tuple[str, ...]] = {
    "drive": ("vehicle_command", "vehicle_pose", "camera_pose"),
    "manipulation": ("robot_command", "robot_pose", "camera_pose"),
    "explore": ("keyboard", "camera_pose"),
}

# The feature a scenario's world model is conditioned on at inference (the env's Gym action).
INFERENCE_FEATURE: dict[str, str] = {scenario: features[0] for scenario, features in SCENARIO_FEATURES.items()}

# Fixed slot order of the keyboard modality; column 15 is the constant "present" column.
KEYBOARD_BUTTONS: tuple[str, ...] = (
    "MOVE_FORWARD",
    "MOVE_BACKWARD",
    "MOVE_LEFT",
    "MOVE_RIGHT",
    "TURN_LEFT",
    "TURN_RIGHT",
    "ATTACK",
    "USE",
    "SPEED",
    "JUMP",
    "CROUCH",
    "LOOK_UP",
    "LOOK_DOWN",
    "SELECT_NEXT_WEAPON",
    "SELECT_PREV_WEAPON",
)
KEYBOARD_WIDTH = 16
_PRESENT_COLUMN = KEYBOARD_WIDTH - 1

# Camera axes (columns: camera x right, y down, z forward) expressed in the end-effector frame.
# Fetch's gripper points its local +x at the table, so the "camera" looks along ee +x.
_EE_CAMERA_AXES = np.array([[0.0, 0.0, 1.0], [0.0, 1.0, 0.0], [-1.0, 0.0, 0.0]])


# ---------------------------------------------------------------------------------------------
# Rotations and quaternions (w, x, y, z), float64
# ---------------------------------------------------------------------------------------------


def yaw_rotation(theta: float | np.ndarray) -> np.ndarray:
    """Rotation about the camera y axis (down), Astra's yaw: θ > 0 is a left turn.

    Args:
        theta: Angle(s) in radians, any shape S.

    Returns:
        [*S, 3, 3] ``[[cos θ, 0, sin θ], [0, 1, 0], [-sin θ, 0, cos θ]]``.
    """
    theta = np.asarray(theta, dtype=np.float64)
    c, s, zero, one = np.cos(theta), np.sin(theta), np.zeros_like(theta), np.ones_like(theta)
    rows = [np.stack([c, zero, s], -1), np.stack([zero, one, zero], -1), np.stack([-s, zero, c], -1)]
    return np.stack(rows, -2)


def quat_multiply(q1: np.ndarray, q2: np.ndarray) -> np.ndarray:
    """Hamilton product ``q1 ⊗ q2`` of [..., 4] (w, x, y, z) quaternions."""
    w1, x1, y1, z1 = np.moveaxis(np.asarray(q1, dtype=np.float64), -1, 0)
    w2, x2, y2, z2 = np.moveaxis(np.asarray(q2, dtype=np.float64), -1, 0)
    return np.stack(
        [
            w1 * w2 - x1 * x2 - y1 * y2 - z1 * z2,
            w1 * x2 + x1 * w2 + y1 * z2 - z1 * y2,
            w1 * y2 - x1 * z2 + y1 * w2 + z1 * x2,
            w1 * z2 + x1 * y2 - y1 * x2 + z1 * w2,
        ],
        -1,
    )


def quat_conjugate(q: np.ndarray) -> np.ndarray:
    """Conjugate (the inverse of a unit quaternion) of [..., 4] (w, x, y, z)."""
    return np.asarray(q, dtype=np.float64) * np.array([1.0, -1.0, -1.0, -1.0])


def _unit_quat(q: np.ndarray, name: str) -> np.ndarray:
    q = np.asarray(q, dtype=np.float64)
    if q.shape[-1:] != (4,):
        raise ValueError(f"{name} must be [..., 4] quaternions (w, x, y, z), got shape {q.shape}")
    norm = np.linalg.norm(q, axis=-1, keepdims=True)
    if np.any(norm < 1e-8):
        raise ValueError(f"{name} contains zero quaternions; record unit (w, x, y, z) quaternions")
    return q / norm


def quat_to_matrix(q: np.ndarray) -> np.ndarray:
    """[..., 4] (w, x, y, z) quaternions (normalised here) -> [..., 3, 3] rotation matrices."""
    w, x, y, z = np.moveaxis(_unit_quat(q, "q"), -1, 0)
    rows = [
        np.stack([1 - 2 * (y * y + z * z), 2 * (x * y - w * z), 2 * (x * z + w * y)], -1),
        np.stack([2 * (x * y + w * z), 1 - 2 * (x * x + z * z), 2 * (y * z - w * x)], -1),
        np.stack([2 * (x * z - w * y), 2 * (y * z + w * x), 1 - 2 * (x * x + y * y)], -1),
    ]
    return np.stack(rows, -2)


def matrix_to_quat(rot: np.ndarray) -> np.ndarray:
    """[..., 3, 3] rotation matrices -> [..., 4] unit (w, x, y, z) quaternions with w >= 0."""
    m = np.asarray(rot, dtype=np.float64)
    m00, m01, m02 = m[..., 0, 0], m[..., 0, 1], m[..., 0, 2]
    m10, m11, m12 = m[..., 1, 0], m[..., 1, 1], m[..., 1, 2]
    m20, m21, m22 = m[..., 2, 0], m[..., 2, 1], m[..., 2, 2]
    # Each candidate is q scaled by 4*q_i; pick the one with the largest (best-conditioned) q_i.
    candidates = np.stack(
        [
            np.stack([1 + m00 + m11 + m22, m21 - m12, m02 - m20, m10 - m01], -1),
            np.stack([m21 - m12, 1 + m00 - m11 - m22, m01 + m10, m02 + m20], -1),
            np.stack([m02 - m20, m01 + m10, 1 - m00 + m11 - m22, m12 + m21], -1),
            np.stack([m10 - m01, m02 + m20, m12 + m21, 1 - m00 - m11 + m22], -1),
        ],
        -2,
    )  # [..., 4 candidates, 4]
    best = np.argmax(np.diagonal(candidates, axis1=-2, axis2=-1), axis=-1)
    q = np.take_along_axis(candidates, best[..., None, None], axis=-2)[..., 0, :]
    q = q / np.linalg.norm(q, axis=-1, keepdims=True)
    return np.where(q[..., :1] < 0, -q, q)


def rpy_to_matrix(rpy: np.ndarray) -> np.ndarray:
    """[..., 3] (roll about x, pitch about y, yaw about z), radians -> ``Rz(yaw) Ry(pitch) Rx(roll)``."""
    roll, pitch, yaw = np.moveaxis(np.asarray(rpy, dtype=np.float64), -1, 0)
    cr, sr, cp, sp, cy, sy = np.cos(roll), np.sin(roll), np.cos(pitch), np.sin(pitch), np.cos(yaw), np.sin(yaw)
    rows = [
        np.stack([cy * cp, cy * sp * sr - sy * cr, cy * sp * cr + sy * sr], -1),
        np.stack([sy * cp, sy * sp * sr + cy * cr, sy * sp * cr - cy * sr], -1),
        np.stack([-sp, cp * sr, cp * cr], -1),
    ]
    return np.stack(rows, -2)


def matrix_to_rpy(rot: np.ndarray) -> np.ndarray:
    """Inverse of :func:`rpy_to_matrix` for pitch in (-π/2, π/2): [..., 3, 3] -> [..., 3] radians."""
    m = np.asarray(rot, dtype=np.float64)
    pitch = np.arcsin(np.clip(-m[..., 2, 0], -1.0, 1.0))
    roll = np.arctan2(m[..., 2, 1], m[..., 2, 2])
    yaw = np.arctan2(m[..., 1, 0], m[..., 0, 0])
    return np.stack([roll, pitch, yaw], -1)


# ---------------------------------------------------------------------------------------------
# Relative camera poses (12-D)
# ---------------------------------------------------------------------------------------------


def relative_pose_12d(R_a: np.ndarray, t_a: np.ndarray, R_b: np.ndarray, t_b: np.ndarray) -> np.ndarray:
    """Relative camera motion from frame a to frame b, flattened row-major ``[R|t]``.

    Both poses are camera-from-world (``x_cam = R x_world + t``, OpenCV camera axes). The result
    is ``E_b E_a⁻¹``: ``R = R_b R_aᵀ``, ``t = t_b - R t_a = -R_b (C_b - C_a)``, i.e. the camera
    displacement negated and expressed in camera b's axes. Forward motion gives t = (0, 0, -d)
    and a left turn gives R = R_y(+θ) (see the module docstring).

    Args:
        R_a: [..., 3, 3] rotation of frame a.
        t_a: [..., 3] translation of frame a.
        R_b: [..., 3, 3] rotation of frame b.
        t_b: [..., 3] translation of frame b.

    Returns:
        [..., 12] float64 ``[r00 r01 r02 tx r10 r11 r12 ty r20 r21 r22 tz]``.
    """
    R_a, t_a, R_b, t_b = (np.asarray(x, dtype=np.float64) for x in (R_a, t_a, R_b, t_b))
    R_rel = R_b @ np.swapaxes(R_a, -1, -2)
    t_rel = t_b - (R_rel @ t_a[..., None])[..., 0]
    return np.concatenate([R_rel, t_rel[..., None]], -1).reshape(*R_rel.shape[:-2], 12)


def pose12_to_matrix(rows: np.ndarray) -> np.ndarray:
    """[..., 12] flattened ``[R|t]`` -> [..., 4, 4] homogeneous matrices (float64)."""
    rows = np.asarray(rows, dtype=np.float64)
    if rows.shape[-1:] != (12,):
        raise ValueError(f"relative poses must be [..., 12] flattened [R|t], got shape {rows.shape}")
    bottom = np.broadcast_to(np.array([0.0, 0.0, 0.0, 1.0]), (*rows.shape[:-1], 1, 4))
    return np.concatenate([rows.reshape(*rows.shape[:-1], 3, 4), bottom], -2)


def compose_pose12(rows: np.ndarray) -> np.ndarray:
    """Composes consecutive relative poses a->b, b->c, ... into the single pose a->last.

    Args:
        rows: [n, 12] relative poses in time order (n >= 1).

    Returns:
        [12] ``E_n ... E_2 E_1`` flattened; for rows from :func:`camera_rows` this equals the
        direct :func:`relative_pose_12d` between the first and last frame.
    """
    mats = pose12_to_matrix(rows)
    total = np.eye(4)
    for mat in mats:
        total = mat @ total
    return total[:3].reshape(12)


# ---------------------------------------------------------------------------------------------
# Simulator world poses -> camera-from-world
# ---------------------------------------------------------------------------------------------


def planar_camera_from_world(
    position: np.ndarray, heading: np.ndarray, pitch_down: np.ndarray | None = None
) -> tuple[np.ndarray, np.ndarray]:
    """Camera-from-world pose of a camera in a z-up world, looking along a heading.

    Args:
        position: [N, 3] camera centre in world units (z up).
        heading: [N] viewing direction in radians, counter-clockwise from world +x seen from
            above (increasing heading = turning left).
        pitch_down: [N] optional pitch in radians, > 0 looks down (Doom's PITCH sign); 0 if None.

    Returns:
        (R [N, 3, 3], t [N, 3]) with ``x_cam = R x_world + t`` in OpenCV camera axes.
    """
    position = np.asarray(position, dtype=np.float64)
    heading = np.asarray(heading, dtype=np.float64)
    pitch = np.zeros_like(heading) if pitch_down is None else np.asarray(pitch_down, dtype=np.float64)
    forward = np.stack([np.cos(heading) * np.cos(pitch), np.sin(heading) * np.cos(pitch), -np.sin(pitch)], -1)
    right = np.stack([np.sin(heading), -np.cos(heading), np.zeros_like(heading)], -1)
    down = np.cross(forward, right)
    world_from_camera = np.stack([right, down, forward], -1)  # columns = camera axes in world
    R = np.swapaxes(world_from_camera, -1, -2)
    return R, -(R @ position[..., None])[..., 0]


def _require(poses: Mapping[str, np.ndarray], keys: tuple[str, ...], what: str) -> list[np.ndarray]:
    missing = [k for k in keys if k not in poses]
    if missing:
        raise ValueError(
            f"{what} needs poses {list(keys)} but {missing} are missing (have {sorted(poses)}); "
            "record the episode with the scenario's simulator, whose pose() provides them"
        )
    return [np.asarray(poses[k], dtype=np.float64) for k in keys]


def doom_camera_from_world(poses: Mapping[str, np.ndarray]) -> tuple[np.ndarray, np.ndarray]:
    """ViZDoom player -> camera-from-world.

    Uses ``camera_pos`` [N, 3] (POSITION_X/Y/Z, map units, z up), ``camera_yaw`` [N] (radians,
    CCW from +x, Doom ANGLE) and, if present, ``camera_pitch`` [N] (radians, > 0 looks down as
    Doom's PITCH: LOOK_UP makes it negative). Returns (R [N, 3, 3], t [N, 3]).
    """
    pos, yaw = _require(poses, ("camera_pos", "camera_yaw"), "doom_camera_from_world")
    pitch = poses.get("camera_pitch")
    return planar_camera_from_world(pos, yaw, None if pitch is None else np.asarray(pitch, dtype=np.float64))


def car_camera_from_world(poses: Mapping[str, np.ndarray]) -> tuple[np.ndarray, np.ndarray]:
    """CarRacing hull -> a camera at the hull centre (height 0) looking along the car's heading.

    Box2D's world is x right, y up; the car's forward axis is its local +y, so the heading is
    ``hull.angle + π/2`` (CCW; a left turn increases ``hull.angle``). Uses ``vehicle_xy`` [N, 2]
    and ``vehicle_yaw`` [N] (radians). Returns (R [N, 3, 3], t [N, 3]).

    This is a virtual first-person camera in Astra's convention: CarRacing itself renders a
    top-down view that follows and rotates with the car, whose own motion would be a rotation
    about the optical axis, not a yaw.
    """
    xy, yaw = _require(poses, ("vehicle_xy", "vehicle_yaw"), "car_camera_from_world")
    position = np.concatenate([xy, np.zeros_like(xy[..., :1])], -1)
    return planar_camera_from_world(position, yaw + np.pi / 2)


def end_effector_camera_from_world(poses: Mapping[str, np.ndarray]) -> tuple[np.ndarray, np.ndarray]:
    """Fetch end effector -> a camera at ``ee_pos`` looking along the gripper's local +x.

    Uses ``ee_pos`` [N, 3] (m) and ``ee_quat`` [N, 4] (w, x, y, z, world-from-ee). The camera's
    right/down axes are the gripper's -z/+y (a fixed choice, :data:`_EE_CAMERA_AXES`).
    Returns (R [N, 3, 3], t [N, 3]).
    """
    pos, quat = _require(poses, ("ee_pos", "ee_quat"), "end_effector_camera_from_world")
    R = np.swapaxes(quat_to_matrix(quat) @ _EE_CAMERA_AXES, -1, -2)
    return R, -(R @ pos[..., None])[..., 0]


def camera_from_world(poses: Mapping[str, np.ndarray]) -> tuple[np.ndarray, np.ndarray]:
    """Picks the simulator's conversion from the keys of ``poses`` (Doom, CarRacing or Fetch)."""
    for key, convert in (
        ("camera_pos", doom_camera_from_world),
        ("vehicle_xy", car_camera_from_world),
        ("ee_pos", end_effector_camera_from_world),
    ):
        if key in poses:
            return convert(poses)
    raise ValueError(
        f"no camera pose in poses {sorted(poses)}; expected 'camera_pos' (explore), "
        "'vehicle_xy' (drive) or 'ee_pos' (manipulation)"
    )


# ---------------------------------------------------------------------------------------------
# Pose-based modality rows
# ---------------------------------------------------------------------------------------------


def camera_rows(poses: Mapping[str, np.ndarray]) -> np.ndarray:
    """12-D relative camera pose from frame t to t+1 (see :func:`relative_pose_12d`).

    Args:
        poses: ``Episode.poses`` of any scenario (T+1 rows each).

    Returns:
        [T, 12] float32.
    """
    R, t = camera_from_world(poses)
    return relative_pose_12d(R[:-1], t[:-1], R[1:], t[1:]).astype(np.float32)


def ego_relative_motion(position: np.ndarray, quat: np.ndarray) -> np.ndarray:
    """Motion of body t+1 in the body frame of t (``T_t⁻¹ T_{t+1}`` of body-to-world poses).

    Args:
        position: [N, 3] body positions in world units.
        quat: [N, 4] world-from-body (w, x, y, z) quaternions.

    Returns:
        [N-1, 7] float64 ``[x, y, z, qw, qx, qy, qz]``: translation ``R_tᵀ (p_{t+1} - p_t)`` in
        body-t axes and relative rotation ``q_t⁻¹ ⊗ q_{t+1}`` with qw >= 0.
    """
    position = np.asarray(position, dtype=np.float64)
    quat = _unit_quat(quat, "quat")
    R = quat_to_matrix(quat[:-1])
    translation = (np.swapaxes(R, -1, -2) @ (position[1:] - position[:-1])[..., None])[..., 0]
    q_rel = quat_multiply(quat_conjugate(quat[:-1]), quat[1:])
    q_rel = np.where(q_rel[..., :1] < 0, -q_rel, q_rel)
    return np.concatenate([translation, q_rel], -1)


def vehicle_rows(poses: Mapping[str, np.ndarray]) -> np.ndarray:
    """nuScenes-like 7-D ego motion of the CarRacing hull from step t to t+1.

    The ego frame is nuScenes' (x forward, y left, z up); unlike the release's nuScenes path
    (world-frame translation), the translation is in the ego frame of t, so a straight drive
    gives (+d, 0, 0) at any heading and a left turn a positive quaternion z.

    Args:
        poses: Needs ``vehicle_xy`` [T+1, 2] (Box2D units) and ``vehicle_yaw`` [T+1] (radians, CCW).

    Returns:
        [T, 7] float32 ``[x, y, z, qw, qx, qy, qz]``.
    """
    xy, yaw = _require(poses, ("vehicle_xy", "vehicle_yaw"), "vehicle_rows")
    heading = yaw + np.pi / 2  # ego +x = car forward = hull local +y
    position = np.concatenate([xy, np.zeros_like(xy[..., :1])], -1)
    half = heading / 2
    quat = np.stack([np.cos(half), np.zeros_like(half), np.zeros_like(half), np.sin(half)], -1)
    return ego_relative_motion(position, quat).astype(np.float32)


def robot_rows(poses: Mapping[str, np.ndarray], actions: np.ndarray) -> np.ndarray:
    """RT-1-style 7-D end-effector motion from step t to t+1.

    Args:
        poses: Needs ``ee_pos`` [T+1, 3] (m, world = Fetch base frame) and ``ee_quat`` [T+1, 4]
            (w, x, y, z).
        actions: [T, 4] Fetch actions; column 3 is the gripper command.

    Returns:
        [T, 7] float32 ``[dx, dy, dz, droll, dpitch, dyaw, gripper]``: displacement in metres,
        world-frame rotation delta ``R_{t+1} R_tᵀ`` as xyz Euler angles (:func:`matrix_to_rpy`)
        and the gripper command clipped to [-1, 1].
    """
    pos, quat = _require(poses, ("ee_pos", "ee_quat"), "robot_rows")
    actions = _check_actions(actions, len(pos) - 1, 4, "Fetch")
    R = quat_to_matrix(quat)
    delta_rot = R[1:] @ np.swapaxes(R[:-1], -1, -2)
    gripper = np.clip(actions[:, 3:4], -1.0, 1.0)
    return np.concatenate([pos[1:] - pos[:-1], matrix_to_rpy(delta_rot), gripper], -1).astype(np.float32)


# ---------------------------------------------------------------------------------------------
# Command rows (computable from the Gym action alone)
# ---------------------------------------------------------------------------------------------


def _check_actions(actions: np.ndarray, steps: int | None, width: int, env: str) -> np.ndarray:
    actions = np.asarray(actions, dtype=np.float64)
    if actions.ndim != 2 or actions.shape[1] != width:
        raise ValueError(f"{env} actions must be [T, {width}], got shape {actions.shape}")
    if steps is not None and actions.shape[0] != steps:
        raise ValueError(f"{env} actions have {actions.shape[0]} rows but the poses describe {steps} steps")
    if not np.all(np.isfinite(actions)):
        raise ValueError(f"{env} actions contain NaN or inf; fix the recording")
    return actions


def vehicle_command_rows(actions: np.ndarray) -> np.ndarray:
    """CarRacing commands -> vehicle rows ``[steer, gas, brake, 1, 0, 0, 0]``.

    Args:
        actions: [T, 3] float (steer ∈ [-1, 1] with -1 = full left, gas ∈ [0, 1], brake ∈ [0, 1]);
            values outside the ranges are clipped as the car does.

    Returns:
        [T, 7] float32.
    """
    actions = _check_actions(actions, None, 3, "CarRacing")
    rows = np.zeros((len(actions), 7))
    rows[:, 0] = np.clip(actions[:, 0], -1.0, 1.0)
    rows[:, 1:3] = np.clip(actions[:, 1:3], 0.0, 1.0)
    rows[:, 3] = 1.0  # "present": the qw slot of the pose form; keeps coasting != null action
    return rows.astype(np.float32)


def robot_command_rows(actions: np.ndarray) -> np.ndarray:
    """Fetch commands -> robot rows ``[dx, dy, dz, 0, 0, 0, gripper]`` in action units ([-1, 1]).

    Args:
        actions: [T, 4] float (dx, dy, dz, gripper), clipped to [-1, 1] as the env does. Fetch
            moves the gripper target by 0.05 m per unit.

    Returns:
        [T, 7] float32.
    """
    actions = np.clip(_check_actions(actions, None, 4, "Fetch"), -1.0, 1.0)
    rows = np.zeros((len(actions), 7))
    rows[:, :3] = actions[:, :3]
    rows[:, 6] = actions[:, 3]
    return rows.astype(np.float32)


def _button_name(name: Any) -> str:
    # ViZDoom spells buttons "MOVE_FORWARD" or "Button.MOVE_FORWARD".
    return str(name).rsplit(".", 1)[-1].upper()


def _button_slots(buttons: list[str] | tuple[str, ...]) -> np.ndarray:
    names = [_button_name(b) for b in buttons]
    unknown = [n for n in names if n not in KEYBOARD_BUTTONS]
    if unknown:
        raise ValueError(
            f"buttons {unknown} have no keyboard slot; the keyboard modality supports {list(KEYBOARD_BUTTONS)} "
            "(binary buttons only); drop them from the scenario or extend KEYBOARD_BUTTONS (15 slots max)"
        )
    if len(set(names)) != len(names):
        raise ValueError(f"buttons {names} contain duplicates")
    return np.array([KEYBOARD_BUTTONS.index(n) for n in names], dtype=np.int64)


def keyboard_rows(actions: np.ndarray, buttons: list[str] | tuple[str, ...]) -> np.ndarray:
    """ViZDoom multi-hot buttons -> keyboard rows in the fixed :data:`KEYBOARD_BUTTONS` order.

    Args:
        actions: [T, n_buttons] multi-hot (any integer/bool dtype; non-zero = pressed).
        buttons: The n_buttons names of the columns (``Episode.attrs["button_names"]``).

    Returns:
        [T, 16] float32: columns 0..14 = pressed (0/1) in :data:`KEYBOARD_BUTTONS` order,
        column 15 = 1 ("present").
    """
    actions = np.asarray(actions)
    slots = _button_slots(list(buttons))
    if actions.ndim != 2 or actions.shape[1] != len(slots):
        raise ValueError(f"ViZDoom actions must be [T, {len(slots)}] for buttons {list(buttons)}, got {actions.shape}")
    rows = np.zeros((len(actions), KEYBOARD_WIDTH), dtype=np.float32)
    rows[:, slots] = (actions != 0).astype(np.float32)
    rows[:, _PRESENT_COLUMN] = 1.0
    return rows


def keyboard_actions(rows: np.ndarray, buttons: list[str] | tuple[str, ...]) -> np.ndarray:
    """Inverse of :func:`keyboard_rows`: [T, 16] rows -> [T, n_buttons] int8 multi-hot (> 0.5 = pressed)."""
    rows = np.asarray(rows)
    if rows.ndim != 2 or rows.shape[1] != KEYBOARD_WIDTH:
        raise ValueError(f"keyboard rows must be [T, {KEYBOARD_WIDTH}], got shape {rows.shape}")
    return (rows[:, _button_slots(list(buttons))] > 0.5).astype(np.int8)


def native_action_rows(
    scenario: Scenario, actions: np.ndarray, buttons: list[str] | tuple[str, ...] | None = None
) -> np.ndarray:
    """The scenario's inference feature (:data:`INFERENCE_FEATURE`) from Gym actions alone.

    Args:
        scenario: ``"drive"``, ``"manipulation"`` or ``"explore"``.
        actions: [T, ...] env-native actions (see the command-row functions).
        buttons: Button names, required for ``"explore"``.

    Returns:
        [T, d] float32 rows of the scenario's command feature (d = 7, 7 or 16).
    """
    if scenario == "drive":
        return vehicle_command_rows(actions)
    if scenario == "manipulation":
        return robot_command_rows(actions)
    if scenario == "explore":
        if buttons is None:
            raise ValueError("explore actions need the button names (Episode.attrs['button_names'])")
        return keyboard_rows(actions, buttons)
    raise ValueError(f"unknown scenario {scenario!r}; choose one of {sorted(SCENARIO_FEATURES)}")


def episode_rows(episode: Any, features: tuple[str, ...] | None = None) -> dict[str, np.ndarray]:
    """Every feature an episode can provide, per env step.

    Args:
        episode: An ``Episode`` (``scenario``, ``actions``, ``poses``, ``attrs``).
        features: Names to compute; None -> all of :data:`SCENARIO_FEATURES` whose poses are
            recorded (command features are always computed).

    Returns:
        {feature name: [T, dim] float32}.
    """
    scenario = episode.scenario
    if scenario not in SCENARIO_FEATURES:
        raise ValueError(f"unknown scenario {scenario!r}; choose one of {sorted(SCENARIO_FEATURES)}")
    available = SCENARIO_FEATURES[scenario]
    if features is None:
        features = tuple(f for f in available if FEATURES[f].source == "command" or _has_poses(episode.poses, f))
    unknown = [f for f in features if f not in available]
    if unknown:
        raise ValueError(f"scenario {scenario!r} cannot provide features {unknown}; it provides {list(available)}")
    return {name: _feature_rows(name, episode) for name in features}


def _has_poses(poses: Mapping[str, np.ndarray], feature: str) -> bool:
    if feature == "camera_pose":
        return any(k in poses for k in ("camera_pos", "vehicle_xy", "ee_pos"))
    return all(k in poses for k in FEATURES[feature].requires)


def _episode_buttons(attrs: Mapping[str, Any]) -> list[str] | None:
    # Recorded episodes store them as attrs["button_names"]; "buttons" is accepted too.
    for key in ("button_names", "buttons"):
        if key in attrs:
            return list(attrs[key])
    return None


def _feature_rows(name: str, episode: Any) -> np.ndarray:
    if FEATURES[name].source == "command":
        return native_action_rows(episode.scenario, episode.actions, _episode_buttons(episode.attrs))
    if name == "camera_pose":
        return camera_rows(episode.poses)
    if name == "vehicle_pose":
        return vehicle_rows(episode.poses)
    return robot_rows(episode.poses, episode.actions)


# ---------------------------------------------------------------------------------------------
# Latent alignment
# ---------------------------------------------------------------------------------------------


def _compose_ego7(rows: np.ndarray) -> np.ndarray:
    translation, quat = np.zeros(3), np.array([1.0, 0.0, 0.0, 0.0])
    for row in rows:  # T_total <- T_total T_row (each row is expressed in the previous body frame)
        translation = translation + quat_to_matrix(quat) @ row[:3]
        quat = quat_multiply(quat, row[3:])
    quat = quat / np.linalg.norm(quat)
    return np.concatenate([translation, -quat if quat[0] < 0 else quat])


def _compose_robot7(rows: np.ndarray) -> np.ndarray:
    rot = np.eye(3)
    for row in rows:  # world-frame deltas: R_total <- ΔR R_total
        rot = rpy_to_matrix(row[3:6]) @ rot
    return np.concatenate([rows[:, :3].sum(0), matrix_to_rpy(rot), rows[:, 6:].mean(0)])


def aggregate_rows(rows: np.ndarray, aggregation: Aggregation) -> np.ndarray:
    """Combines the f step rows of one latent into one row.

    Args:
        rows: [n, d] consecutive step rows (n >= 1).
        aggregation: ``"mean"`` (commands, multi-hot: fraction of steps held), ``"pose12"``
            (compose 12-D relative poses), ``"ego7"`` (compose ego motions) or ``"robot7"``
            (sum displacements, compose rotations, average the gripper command).

    Returns:
        [d] float32.
    """
    rows = np.asarray(rows, dtype=np.float64)
    if rows.ndim != 2 or len(rows) == 0:
        raise ValueError(f"aggregate_rows needs [n >= 1, d] rows, got shape {rows.shape}")
    if aggregation == "mean":
        out = rows.mean(0)
    elif aggregation == "pose12":
        out = compose_pose12(rows)
    elif aggregation == "ego7":
        out = _compose_ego7(rows)
    elif aggregation == "robot7":
        out = _compose_robot7(rows)
    else:
        raise ValueError(f"unknown aggregation {aggregation!r}; choose 'mean', 'pose12', 'ego7' or 'robot7'")
    return out.astype(np.float32)


def num_latents(num_steps: int, temporal_factor: int) -> int:
    """Latents of the ``num_steps + 1`` frames of an episode: ``1 + num_steps // temporal_factor``."""
    if temporal_factor < 1:
        raise ValueError(f"temporal_factor={temporal_factor} must be >= 1")
    return 1 + num_steps // temporal_factor


def latent_step_ranges(num_steps: int, temporal_factor: int) -> list[tuple[int, int] | None]:
    """Which step rows each latent's action row aggregates: latent k <- steps [f(k-1), fk) (None = the zero row).

    Args:
        num_steps: T, a multiple of ``temporal_factor`` (trim the episode first).
        temporal_factor: f, pixel frames per latent after the first.

    Returns:
        L = 1 + T/f entries: None (latent 0, frame 0 alone) then (start, stop) step ranges.
    """
    if temporal_factor < 1:
        raise ValueError(f"temporal_factor={temporal_factor} must be >= 1")
    if num_steps % temporal_factor:
        raise ValueError(
            f"{num_steps} steps are not a multiple of temporal_factor={temporal_factor}; trim the episode "
            f"to {temporal_factor * (num_steps // temporal_factor)} steps (its last frames make no full latent)"
        )
    f = temporal_factor
    return [None] + [(f * (k - 1), f * k) for k in range(1, num_latents(num_steps, temporal_factor))]


def align_to_latents(rows: np.ndarray, temporal_factor: int, aggregation: Aggregation = "mean") -> np.ndarray:
    """Per-step rows [T, d] -> one row per latent [L, d] (module docstring, "Latent alignment").

    Args:
        rows: [T, d] step rows; row t is the action/motion from frame t to t+1.
        temporal_factor: VAE temporal compression f (T must be a multiple of f).
        aggregation: How the f rows of a latent combine (use ``FEATURES[name].aggregation``).

    Returns:
        [1 + T // f, d] float32; latent 0's row (the null action) is all zeros.
    """
    rows = np.asarray(rows)
    if rows.ndim != 2:
        raise ValueError(f"rows must be [T, d], got shape {rows.shape}")
    return aggregate_ranges(rows, latent_step_ranges(len(rows), temporal_factor), aggregation)


def aggregate_ranges(
    rows: np.ndarray, ranges: Sequence[tuple[int, int] | None], aggregation: Aggregation = "mean"
) -> np.ndarray:
    """[len(ranges), d] float32: row k aggregates ``rows[start:stop]`` of range k (zeros where None)."""
    out = np.zeros((len(ranges), rows.shape[1]), dtype=np.float32)
    for k, span in enumerate(ranges):
        if span is not None:
            out[k] = aggregate_rows(rows[span[0] : span[1]], aggregation)
    return out
