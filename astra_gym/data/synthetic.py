"""Synthetic episodes with known motion, built as real :class:`~astra_gym.data.episodes.Episode` objects.

For tests and benchmarks that need episodes without a simulator (random frames, scripted actions
and poses consistent with them).
"""

from __future__ import annotations

import numpy as np

from astra_gym.data.episodes import Episode

DOOM_BUTTONS = ("MOVE_FORWARD", "MOVE_BACKWARD", "TURN_LEFT", "TURN_RIGHT", "MOVE_LEFT", "MOVE_RIGHT")
# Fetch's grip site at rest: local +x points down at the table (world -z), local z along world +x.
FETCH_GRIP_QUAT = np.array([np.sqrt(0.5), 0.0, np.sqrt(0.5), 0.0])


def frames(steps: int, size: int = 16, seed: int = 0) -> np.ndarray:
    """[steps+1, size, size, 3] uint8 random frames."""
    return np.random.default_rng(seed).integers(0, 256, (steps + 1, size, size, 3), dtype=np.uint8)


def _episode(scenario: str, env_id: str, actions: np.ndarray, poses: dict, seed: int, size: int, **attrs) -> Episode:
    steps = len(actions)
    rng = np.random.default_rng(seed + 1)
    terminated = np.zeros(steps, bool)
    truncated = np.zeros(steps, bool)
    truncated[-1] = True
    return Episode(
        scenario=scenario,
        env_id=env_id,
        seed=seed,
        frames=frames(steps, size, seed),
        actions=actions,
        rewards=rng.normal(size=steps).astype(np.float32),
        terminated=terminated,
        truncated=truncated,
        step_index=np.arange(steps + 1) * 2,
        poses=poses,
        attrs=attrs,
    )


def drive_episode(straight: int = 4, turn: int = 4, yaw0: float = 0.3, seed: int = 0, size: int = 16) -> Episode:
    """A CarRacing-like car: ``straight`` steps of 2 units along its heading, then ``turn`` steps turning left."""
    steps = straight + turn
    steer = np.r_[np.zeros(straight), -np.ones(turn)]  # CarRacing: -1 = full left
    actions = np.stack([steer, np.full(steps, 0.5), np.zeros(steps)], 1).astype(np.float32)
    yaw, xy = [yaw0], [np.array([5.0, -3.0])]
    for t in range(steps):
        forward = np.array([-np.sin(yaw[-1]), np.cos(yaw[-1])])  # hull local +y
        xy.append(xy[-1] + 2.0 * forward)
        yaw.append(yaw[-1] + (0.1 if t >= straight else 0.0))  # hull.angle grows when turning left
    poses = {"vehicle_xy": np.array(xy), "vehicle_yaw": np.array(yaw), "vehicle_velocity": np.zeros((steps + 1, 2))}
    return _episode("drive", "CarRacing-v3", actions, poses, seed, size, action_names=["steer", "gas", "brake"])


def explore_episode(forward: int = 4, turn: int = 4, yaw0: float = 2.0, seed: int = 0, size: int = 16) -> Episode:
    """A Doom-like player: ``forward`` MOVE_FORWARD steps of 10 map units, then ``turn`` TURN_LEFT steps."""
    steps = forward + turn
    actions = np.zeros((steps, len(DOOM_BUTTONS)), np.int8)
    actions[:forward, DOOM_BUTTONS.index("MOVE_FORWARD")] = 1
    actions[forward:, DOOM_BUTTONS.index("TURN_LEFT")] = 1
    yaw, pos = [yaw0], [np.array([100.0, 50.0, 0.0])]
    for t in range(steps):
        step = 10.0 if t < forward else 0.0
        pos.append(pos[-1] + step * np.array([np.cos(yaw[-1]), np.sin(yaw[-1]), 0.0]))
        yaw.append(yaw[-1] + (0.0 if t < forward else 0.05))  # ANGLE grows with TURN_LEFT
    poses = {"camera_pos": np.array(pos), "camera_yaw": np.array(yaw), "camera_pitch": np.zeros(steps + 1)}
    return _episode("explore", "vizdoom/my_way_home", actions, poses, seed, size, button_names=list(DOOM_BUTTONS))


def manipulation_episode(steps: int = 8, seed: int = 0, size: int = 16) -> Episode:
    """A Fetch-like gripper moving +x by 1 cm per step while closing the gripper."""
    actions = np.zeros((steps, 4), np.float32)
    actions[:, 0] = 0.2
    actions[:, 3] = -1.0
    ee_pos = np.array([1.3, 0.75, 0.55]) + np.outer(np.arange(steps + 1), [0.01, 0.0, 0.0])
    poses = {
        "ee_pos": ee_pos,
        "ee_quat": np.tile(FETCH_GRIP_QUAT, (steps + 1, 1)),
        "gripper": np.full(steps + 1, 0.05),
        "object_pos": np.zeros((steps + 1, 3)),
        "goal_pos": np.zeros((steps + 1, 3)),
    }
    return _episode(
        "manipulation", "FetchPush-v4", actions, poses, seed, size, action_names=["dx", "dy", "dz", "gripper"]
    )
