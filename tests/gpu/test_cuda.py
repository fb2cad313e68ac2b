"""CUDA correctness: every variant on the GPU against the CPU, bf16, attention backends, training.

Marked ``gpu`` (deselected by default; ``pytest -m gpu tests/gpu``). ``ASTRA_GPU_TEST_DEVICE=cpu``
runs the same tests with the CPU standing in for the GPU, which is how ``benchmarks/gpu/run.sh``
is tested before it spends device minutes.

Tolerances: float32 frames within a mean absolute difference of 2 (of 255) per step over 3 steps
and rewards within 0.05; bf16 frames within 8; SDPA backends within 2e-2 of the math backend.
"""

from __future__ import annotations

import dataclasses
import os

import gymnasium as gym
import numpy as np
import pytest
import torch

import astra_gym  # noqa: F401  (registers the ids)
from astra_gym.world_model.config import get_preset
from astra_gym.world_model.transformer import AstraTransformer
from benchmarks.model_speed import Scenario, build_inputs

pytestmark = pytest.mark.gpu
DEVICE = os.environ.get("ASTRA_GPU_TEST_DEVICE", "cuda")
VARIANTS = ["Astra-Drive-v0", "Astra-Manipulation-v0", "Astra-Explore-v0"]


@pytest.fixture(autouse=True)
def _needs_the_device():
    if DEVICE.startswith("cuda") and not torch.cuda.is_available():
        pytest.skip("no CUDA device")


def _rollout(env_id: str, device: str, steps: int = 3, **kwargs) -> tuple[np.ndarray, np.ndarray]:
    env = gym.make(env_id, device=device, **kwargs)
    env.action_space.seed(0)
    actions = [env.action_space.sample() for _ in range(steps)]
    obs, _ = env.reset(seed=0)
    frames, rewards = [obs], []
    for action in actions:
        obs, reward, *_ = env.step(action)
        frames.append(obs)
        rewards.append(reward)
    env.close()
    return np.stack(frames).astype(np.float32), np.asarray(rewards, np.float32)


@pytest.mark.parametrize("env_id", VARIANTS)
def test_variant_on_the_device_matches_the_cpu(env_id):
    frames, rewards = _rollout(env_id, DEVICE, dtype="float32")
    cpu_frames, cpu_rewards = _rollout(env_id, "cpu", dtype="float32")
    per_step = np.abs(frames - cpu_frames).mean(axis=(1, 2, 3))
    assert per_step.max() <= 2.0, f"{env_id}: mean |device - cpu| per step {per_step.round(2).tolist()}"
    np.testing.assert_allclose(rewards, cpu_rewards, atol=0.05)


@pytest.mark.parametrize("env_id", VARIANTS)
def test_variant_in_bf16_stays_close_to_float32(env_id):
    frames, _ = _rollout(env_id, DEVICE, dtype="bfloat16")
    reference, _ = _rollout(env_id, DEVICE, dtype="float32")
    per_step = np.abs(frames - reference).mean(axis=(1, 2, 3))
    assert per_step.max() <= 8.0, f"{env_id}: mean |bf16 - float32| per step {per_step.round(2).tolist()}"


def test_vector_env_of_many_rows_runs_on_the_device():
    rows = 8 if torch.device(DEVICE).type == "cpu" else 64  # the CPU stand-in (suite tiny): 64 rows took 207 s there
    envs = gym.make_vec("Astra-Drive-v0", num_envs=rows, device=DEVICE)
    envs.action_space.seed(0)
    obs, _ = envs.reset(seed=0)
    for _ in range(2):
        obs, reward, *_ = envs.step(envs.action_space.sample())
    assert obs.shape == (rows, 64, 64, 3) and obs.dtype == np.uint8 and np.isfinite(reward).all()
    envs.close()


@pytest.mark.parametrize("backend", ["FLASH_ATTENTION", "EFFICIENT_ATTENTION", "CUDNN_ATTENTION"])
def test_attention_backends_agree_with_the_math_backend(backend):
    """The transformer's SDPA calls under each fused backend (where the device offers it) vs math."""
    from torch.nn.attention import SDPBackend, sdpa_kernel

    dtype = torch.bfloat16 if DEVICE.startswith("cuda") else torch.float32
    torch.manual_seed(0)
    with torch.device(DEVICE):
        model = AstraTransformer(get_preset("small")).to(dtype).eval()
    inputs = build_inputs(
        model, Scenario("small", (8, 8), 1, "test"), 4, torch.Generator().manual_seed(0), DEVICE, dtype
    )
    with torch.inference_mode():
        with sdpa_kernel(SDPBackend.MATH):
            reference = model(*inputs).float()
        try:
            with sdpa_kernel([getattr(SDPBackend, backend), SDPBackend.MATH]):
                fused = model(*inputs).float()
        except RuntimeError as error:  # e.g. no cuDNN attention on this device
            pytest.skip(f"{backend}: {error}")
    torch.testing.assert_close(fused, reference, rtol=2e-2, atol=2e-2)


def test_training_steps_on_the_device(tmp_path):
    """The trainer (accelerate, bf16 autocast on CUDA) on synthetic episodes: six finite losses."""
    from astra_gym.data import latent_cache
    from astra_gym.data.synthetic import drive_episode
    from astra_gym.training import train_world_model
    from astra_gym.training.data import DatasetSpec
    from astra_gym.world_model.vae import SmallVAE

    torch.manual_seed(0)
    vae = SmallVAE.from_preset("debug").eval()
    pairs = [(f"drive-{i}", drive_episode(8, 8, seed=i, size=32)) for i in range(3)]
    latent_cache.build_latent_cache(pairs, vae, tmp_path / "cache", latent_cache.CacheConfig(episodes_per_shard=4))
    cfg = dataclasses.replace(
        train_world_model.PRESETS["debug"],
        datasets=(DatasetSpec(str(tmp_path / "cache"), "drive", 1.0),),
        run_dir=str(tmp_path / "run"),
        total_steps=6,
        log_every=1,
        warmup_steps=1,
        progress=False,
        mixed_precision="bf16" if DEVICE.startswith("cuda") else "no",
    )
    result = train_world_model.train(cfg)
    losses = [r["train/loss"] for r in result.rows if "train/loss" in r]
    assert len(losses) == 6 and np.isfinite(losses).all()
