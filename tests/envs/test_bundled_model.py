"""The bundled model ships with the repository and rolls out every real scenario on the CPU."""

import gymnasium as gym
import numpy as np
import pytest

import astra_gym  # noqa: F401
from astra_gym.envs.core import bundled_model_path
from astra_gym.envs.variants import BUNDLED_MODEL
from astra_gym.training.bundle import read_bundle

REAL_VARIANTS = ["Astra-Drive-v0", "Astra-Manipulation-v0", "Astra-Explore-v0"]


def test_bundle_is_shipped_and_small():
    path = bundled_model_path(BUNDLED_MODEL)
    assert (path / "bundle.json").is_file(), f"{path} must ship with the package"
    size = sum(f.stat().st_size for f in path.rglob("*") if f.is_file())
    assert size < 100 * 2**20, f"bundle is {size / 2**20:.1f} MiB; keep it well under 100 MiB"
    assert (path / "MODEL_CARD.md").is_file()
    read_bundle(path)  # parses and validates the manifest


@pytest.mark.parametrize("env_id", REAL_VARIANTS)
def test_bundled_model_rolls_out(env_id):
    env = gym.make(env_id, device="cpu", num_denoise_steps=2)
    obs, info = env.reset(seed=0)
    frames = [obs]
    for _ in range(3):
        obs, reward, terminated, truncated, info = env.step(env.action_space.sample())
        assert obs.shape == (64, 64, 3) and obs.dtype == np.uint8
        assert np.isfinite(reward)
        frames.append(obs)
    # A trained model produces structured frames, not flat noise around mid-grey.
    assert np.stack(frames).std() > 10
    env.close()
