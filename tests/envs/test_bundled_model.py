"""The bundled model ships with the repository and rolls out every real scenario on the CPU."""

import gymnasium as gym
import numpy as np
import pytest

import astra_gym  # noqa: F401
from astra_gym.envs.core import bundled_model_path
from astra_gym.envs.variants import BUNDLED_MODEL
from astra_gym.training.bundle import read_bundle

REAL_VARIANTS = ["Astra-Drive-v0", "Astra-Manipulation-v0", "Astra-Explore-v0"]
SHIPPED = [BUNDLED_MODEL, "small-v0-fast"]


def _size(path) -> int:
    return sum(f.stat().st_size for f in path.rglob("*") if f.is_file())


@pytest.mark.parametrize("name", SHIPPED)
def test_bundle_is_shipped(name):
    path = bundled_model_path(name)
    assert (path / "bundle.json").is_file(), f"{path} must ship with the package"
    assert (path / "MODEL_CARD.md").is_file()
    read_bundle(path)  # parses and validates the manifest


def test_shipped_models_are_small_together():
    size = sum(_size(bundled_model_path(name)) for name in SHIPPED)
    assert size < 100 * 2**20, f"the bundles take {size / 2**20:.1f} MiB; keep them well under 100 MiB in total"


def test_fast_bundle_is_a_one_step_student_of_the_default():
    fast, default = read_bundle(bundled_model_path("small-v0-fast")), read_bundle(bundled_model_path(BUNDLED_MODEL))
    assert fast["sampler"]["num_denoise_steps"] == 1 and fast["sampler"]["guidance_scale"] == 1.0
    assert fast["layout"] == default["layout"]
    for scenario, entry in default["scenarios"].items():
        assert fast["scenarios"][scenario]["action_normalization"] == entry["action_normalization"]


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


@pytest.mark.parametrize("env_id", REAL_VARIANTS)
def test_fast_bundle_rolls_out_with_its_own_defaults(env_id):
    env = gym.make(env_id, device="cpu", checkpoint="small-v0-fast")
    obs, _ = env.reset(seed=0)
    frames = [obs]
    for _ in range(3):
        obs, reward, *_ = env.step(env.action_space.sample())
        assert obs.shape == (64, 64, 3) and obs.dtype == np.uint8 and np.isfinite(reward)
        frames.append(obs)
    assert np.stack(frames).std() > 10
    env.close()
