"""The envs' outputs on fixed seeds and actions, pinned: refactors must not change them.

``data/pinned_outputs.npz`` holds, per variant, the frames (8x8 average-pooled) and rewards of a
seeded 2-env rollout, and the SHA-256 of the full frames and rewards. On the CPU and torch build
that recorded them the outputs must be bit-identical; elsewhere (other kernels) within a grey level.
Regenerate (`python -m tests.envs.test_pinned_outputs`) only for a deliberate change of the models or
of their numerics, and say so.
"""

from __future__ import annotations

import hashlib
import platform
from pathlib import Path

import gymnasium as gym
import numpy as np
import pytest
import torch

import astra_gym  # noqa: F401 - registers the ids (also when run as a script to re-record)

PINNED = Path(__file__).parent / "data" / "pinned_outputs.npz"
ACTIONS = {
    "Astra-Drive-v0": [[0.3, 0.8, 0.0], [-0.5, 0.2, 0.1]],
    "Astra-Manipulation-v0": [[0.5, -0.2, 0.1, 0.0], [-1.0, 1.0, 0.0, 1.0]],
    "Astra-Explore-v0": [[1, 0, 1, 0, 0, 0], [0, 0, 0, 1, 1, 0]],
}


def cpu_model() -> str:
    """The CPU's model name (kernels, hence the last bits, depend on it)."""
    try:
        lines = Path("/proc/cpuinfo").read_text().splitlines()
        flags = next((line for line in lines if line.startswith("flags")), "")
        name = next((line for line in lines if line.startswith("model name")), platform.processor())
        return f"{name.split(':')[-1].strip()} | {hashlib.sha256(flags.encode()).hexdigest()[:12]}"
    except OSError:
        return platform.processor()


def rollout(env_id: str) -> tuple[np.ndarray, np.ndarray]:
    """uint8 frames [5, 2, 64, 64, 3] (reset + 4 steps) and float32 rewards [4, 2] of the pinned run."""
    envs = gym.make_vec(env_id, num_envs=2, device="cpu", dtype="float32", batch_invariant=True)
    obs, _ = envs.reset(seed=11)
    frames, rewards = [obs], []
    for action in ACTIONS[env_id] * 2:
        obs, reward, *_ = envs.step(np.array([action] * 2, dtype=envs.single_action_space.dtype))
        frames.append(obs)
        rewards.append(np.asarray(reward, np.float32))
    envs.close()
    return np.stack(frames), np.stack(rewards)


def pooled(frames: np.ndarray) -> np.ndarray:
    """[..., 64, 64, 3] frames averaged over 8x8 blocks: [..., 8, 8, 3]."""
    return frames.reshape(*frames.shape[:-3], 8, 8, 8, 8, 3).mean(axis=(-4, -2))


@pytest.mark.parametrize("env_id", sorted(ACTIONS))
def test_env_outputs_match_the_pinned_run(env_id):
    torch.set_num_threads(1)
    pinned = np.load(PINNED)
    frames, rewards = rollout(env_id)
    np.testing.assert_allclose(pooled(frames), pinned[f"{env_id}/pooled"], atol=1.0)
    np.testing.assert_allclose(rewards, pinned[f"{env_id}/rewards"], atol=1e-3)
    if str(pinned["torch"]) == torch.__version__ and str(pinned["cpu"]) == cpu_model():
        digest = hashlib.sha256(frames.tobytes() + rewards.tobytes()).hexdigest()
        assert digest == str(pinned[f"{env_id}/sha256"]), "outputs changed in the last bits on the recording CPU"


def write_pinned() -> None:
    """Re-records ``data/pinned_outputs.npz`` (``python -m tests.envs.test_pinned_outputs``)."""
    torch.set_num_threads(1)
    data = {"torch": torch.__version__, "cpu": cpu_model()}
    for env_id in ACTIONS:
        frames, rewards = rollout(env_id)
        data[f"{env_id}/pooled"] = pooled(frames)
        data[f"{env_id}/rewards"] = rewards
        data[f"{env_id}/sha256"] = hashlib.sha256(frames.tobytes() + rewards.tobytes()).hexdigest()
    np.savez_compressed(PINNED, **data)


if __name__ == "__main__":
    write_pinned()
