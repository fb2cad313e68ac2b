"""Inputs shared by the rollout and env tests: random contexts and vehicle command rows."""

import numpy as np


def contexts(batch: int, frames: int = 2, seed: int = 0) -> np.ndarray:
    """uint8 [B, T, 64, 64, 3] random context frames."""
    return np.random.default_rng(seed).integers(0, 256, (batch, frames, 64, 64, 3), dtype=np.uint8)


def action_rows(steps: int, batch: int, seed: int = 1, chunk: int = 1) -> np.ndarray:
    """float32 [steps, B, chunk, 7] vehicle command rows ([steer, gas, brake, 1, 0, 0, 0])."""
    rng = np.random.default_rng(seed)
    rows = np.zeros((steps, batch, chunk, 7), np.float32)
    rows[..., 0] = rng.uniform(-1, 1, (steps, batch, chunk))
    rows[..., 1:3] = rng.uniform(0, 1, (steps, batch, chunk, 2))
    rows[..., 3] = 1.0
    return rows
