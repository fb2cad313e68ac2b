"""Policies of the episode loop: sampled SB3 evaluations repeat exactly."""

import numpy as np
import torch

from astra_gym.agents.evaluation import SB3Policy


class _Gaussian:
    """Stands in for an SB3 model: the mode, or a draw from torch's global generator as SB3 samples."""

    def predict(self, obs, deterministic=True):
        return (np.zeros(2, np.float32) if deterministic else torch.randn(2).numpy()), None


def _play(policy, episodes=2, steps=3):
    actions = []
    for _ in range(episodes):
        policy.reset(None, {})
        actions.append([policy.act(None, {}) for _ in range(steps)])
    return np.asarray(actions)


def test_sampled_policy_repeats_exactly_and_varies_per_episode():
    first = _play(SB3Policy(_Gaussian(), deterministic=False, seed=3))
    torch.manual_seed(123)  # whatever ran before does not matter
    again = _play(SB3Policy(_Gaussian(), deterministic=False, seed=3))
    np.testing.assert_array_equal(first, again)
    assert not np.allclose(first[0], first[1])  # episode k draws from seed + k
    assert not np.allclose(first, _play(SB3Policy(_Gaussian(), deterministic=False, seed=4)))
    assert not _play(SB3Policy(_Gaussian())).any()  # the mode
