"""Fixtures of the rollout tests: the debug bundle, contexts and action rows (CPU, float32)."""

import pytest

from astra_gym.rollout.bundle import debug_bundle


@pytest.fixture(scope="session")
def bundle():
    return debug_bundle("drive")


@pytest.fixture
def engine(bundle):
    return bundle.engine(num_denoise_steps=2)
