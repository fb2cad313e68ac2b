"""Fixtures of the agent tests: debug rollouts, simulator availability."""

from __future__ import annotations

import copy

import pytest
import torch

import astra_gym  # noqa: F401  (registers the ids)
from astra_gym.rollout.bundle import debug_bundle
from astra_gym.rollout.engine import WorldModelRollout

SIM_MODULES = {"drive": "Box2D", "manipulation": "gymnasium_robotics", "explore": "vizdoom"}


@pytest.fixture(scope="session")
def debug_engine() -> WorldModelRollout:
    """The debug drive model, 1 denoising step (fast), with its reward model."""
    return debug_bundle("drive").engine(num_denoise_steps=1)


@pytest.fixture(scope="session")
def terminating_rollout() -> WorldModelRollout:
    """A debug rollout whose reward model predicts "terminated" at every step."""
    bundle = debug_bundle("drive")
    reward_model = copy.deepcopy(bundle.reward_model)
    with torch.no_grad():
        reward_model.head[-1].bias[1] = 20.0
    return WorldModelRollout(bundle.transformer, bundle.vae, bundle.rollout.replace(num_denoise_steps=1), reward_model)


def require_sim(scenario: str) -> None:
    """Skips the test when the scenario's simulator package is not installed."""
    pytest.importorskip(SIM_MODULES[scenario])
