"""Synthetic episodes whose actions are visible in the frames: a white square moved by the keys."""

from __future__ import annotations

import numpy as np

from astra_gym.data.episodes import Episode

# ViZDoom-style buttons (the set the explore policies need): exactly one is pressed per step and
# moves the square 2 px in its own direction (dy, dx): forward = up, turns sideways, strafes diagonally.
BUTTONS = ("MOVE_FORWARD", "MOVE_BACKWARD", "TURN_LEFT", "TURN_RIGHT", "MOVE_LEFT", "MOVE_RIGHT")
_MOVES = {0: (-1, 0), 1: (1, 0), 2: (0, -1), 3: (0, 1), 4: (-1, -1), 5: (1, 1)}


def square_episode(seed: int, steps: int = 40, size: int = 16, side: int = 4, hold: int = 1) -> Episode:
    """An explore episode of a ``side``-pixel square moving on a ``size``-pixel black frame (wrapping).

    Args:
        seed: Seed of the start position and the key presses (also the episode's ``seed``).
        steps: Actions T.
        size: Frame height and width.
        side: Square side in pixels.
        hold: Each drawn key is held for this many steps.

    Returns:
        An :class:`Episode` with [T+1, size, size, 3] frames and one-hot int8 [T, 6] actions.
    """
    rng = np.random.default_rng(seed)
    y, x = rng.integers(0, size, 2)
    keys = np.repeat(rng.integers(0, len(BUTTONS), -(-steps // hold)), hold)[:steps]
    video = []
    for t in range(steps + 1):
        frame = np.zeros((size, size, 3), np.uint8)
        rows, cols = (y + np.arange(side)) % size, (x + np.arange(side)) % size
        frame[np.ix_(rows, cols)] = 255
        video.append(frame)
        if t < steps:
            dy, dx = _MOVES[int(keys[t])]
            y, x = (y + 2 * dy) % size, (x + 2 * dx) % size
    rewards = rng.normal(size=steps).astype(np.float32)
    return Episode(
        scenario="explore",
        env_id="synthetic/square",
        seed=seed,
        frames=np.stack(video),
        actions=np.eye(len(BUTTONS), dtype=np.int8)[keys],
        rewards=rewards,
        terminated=np.zeros(steps, bool),
        truncated=np.r_[np.zeros(steps - 1, bool), True],
        step_index=np.arange(steps + 1),
        attrs={"button_names": list(BUTTONS)},
    )
