"""Fixtures of the env tests: a headless display, helpers to build debug envs."""

import copy
import os

import gymnasium as gym
import pytest
import torch

import astra_gym  # noqa: F401  (registers the ids)
from astra_gym.envs.variants import VARIANTS
from astra_gym.rollout.bundle import debug_bundle
from astra_gym.rollout.engine import WorldModelRollout

ASTRA_IDS = sorted(VARIANTS)


@pytest.fixture(autouse=True)
def headless_display(monkeypatch):
    """``render_mode="human"`` opens pygame's dummy video driver instead of a window."""
    monkeypatch.setenv("SDL_VIDEODRIVER", os.environ.get("SDL_VIDEODRIVER", "dummy"))
    yield
    from astra_gym.envs.render import close_window

    close_window()


def debug_kwargs(env_id: str) -> dict:
    """Constructor kwargs that run ``env_id`` on the debug model on CPU (no bundled weights needed)."""
    return {"checkpoint": "debug", "device": "cpu"}


def make_debug(env_id: str = "Astra-Debug-v0", **kwargs) -> gym.Env:
    return gym.make(env_id, **{**debug_kwargs(env_id), **kwargs})


@pytest.fixture(scope="session")
def terminating_rollout():
    """A debug rollout whose reward model predicts "terminated" at every step."""
    bundle = debug_bundle("drive")
    reward_model = copy.deepcopy(bundle.reward_model)
    with torch.no_grad():
        reward_model.head[-1].bias[1] = 20.0
    return WorldModelRollout(bundle.transformer, bundle.vae, bundle.rollout.replace(num_denoise_steps=1), reward_model)
