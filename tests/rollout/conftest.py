"""Fixtures of the rollout tests: the debug bundle, contexts and action rows (CPU, float32)."""

import pytest
import torch

from astra_gym.rollout.bundle import debug_bundle


@pytest.fixture(autouse=True)
def one_torch_thread():
    """Tests run on shared 2-core machines: one intra-op thread avoids oversubscription."""
    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(previous)


@pytest.fixture(scope="session")
def bundle():
    return debug_bundle("drive")


@pytest.fixture
def engine(bundle):
    return bundle.engine(num_denoise_steps=2)
