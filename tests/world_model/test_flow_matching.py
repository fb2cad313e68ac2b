"""Tests of the flow-matching training math against the release's numbers (astra-release.md §7.3)."""

from __future__ import annotations

import pytest
import torch

from astra_gym.world_model.flow_matching import (
    add_noise,
    flow_matching_loss,
    sample_timesteps,
    timestep_weight,
    training_sigmas,
    velocity_target,
)


def test_training_sigmas_grid():
    sigmas = training_sigmas(1000, shift=5.0)
    assert sigmas.shape == (1000,) and sigmas.dtype == torch.float32
    assert sigmas[0].item() == 1.0
    assert sigmas[-1].item() == pytest.approx(0.00498, abs=1e-5)
    assert torch.all(sigmas[1:] < sigmas[:-1])


def test_uniform_timesteps_lie_on_the_grid_and_follow_the_generator():
    grid = training_sigmas()
    sigma, t = sample_timesteps(4096, torch.Generator().manual_seed(0))
    assert sigma.shape == t.shape == (4096,) and sigma.dtype == torch.float32
    assert torch.isin(sigma, grid).all()
    torch.testing.assert_close(t, 1000 * sigma)
    # Uniform over the index: the grid's median sigma (0.833 after shift 5) splits the draws in half.
    assert abs((sigma > grid[500]).float().mean().item() - 0.5) < 0.05
    again, _ = sample_timesteps(4096, torch.Generator().manual_seed(0))
    other, _ = sample_timesteps(4096, torch.Generator().manual_seed(1))
    assert torch.equal(sigma, again) and not torch.equal(sigma, other)


def test_logit_normal_timesteps():
    sigma, t = sample_timesteps(4096, torch.Generator().manual_seed(0), mode="logit_normal", shift=1.0)
    assert ((sigma > 0) & (sigma < 1)).all()
    assert abs(sigma.median().item() - 0.5) < 0.05
    shifted, _ = sample_timesteps(4096, torch.Generator().manual_seed(0), mode="logit_normal", shift=5.0)
    assert shifted.median().item() == pytest.approx(5 * 0.5 / (1 + 4 * 0.5), abs=0.05)
    with pytest.raises(ValueError, match="mode"):
        sample_timesteps(2, torch.Generator(), mode="cosine")


def test_add_noise_endpoints_and_velocity_target():
    g = torch.Generator().manual_seed(0)
    x0, noise = torch.randn(2, 3, 4, generator=g), torch.randn(2, 3, 4, generator=g)
    torch.testing.assert_close(add_noise(x0, noise, 0.0), x0)
    torch.testing.assert_close(add_noise(x0, noise, 1.0), noise)
    mixed = add_noise(x0, noise, torch.tensor([0.0, 1.0]))
    torch.testing.assert_close(mixed, torch.stack([x0[0], noise[1]]))
    torch.testing.assert_close(velocity_target(x0, noise), noise - x0)
    # The target is the derivative of the path: x_s' - x_s = (s' - s) * (noise - x0).
    step = add_noise(x0, noise, 0.7) - add_noise(x0, noise, 0.2)
    torch.testing.assert_close(step, 0.5 * velocity_target(x0, noise))


def test_timestep_weight_matches_release_values():
    t = torch.tensor([1000.0, 937.5, 833.0, 625.0, 500.0, 4.98])
    expected = torch.tensor([0.0, 0.40, 1.03, 1.91, 2.08, 0.03])
    torch.testing.assert_close(timestep_weight(t), expected, atol=0.01, rtol=0)
    grid_t = 1000 * training_sigmas()
    assert timestep_weight(grid_t).mean().item() == pytest.approx(1.0, abs=1e-4)


def test_loss_is_weighted_masked_mse_and_backpropagates():
    g = torch.Generator().manual_seed(0)
    pred = torch.randn(2, 3, 4, 2, 2, generator=g, requires_grad=True)
    target = torch.randn(2, 3, 4, 2, 2, generator=g)
    weight = torch.tensor([0.5, 2.0])
    loss, logs = flow_matching_loss(pred, target, weight)
    per_sample = ((pred - target) ** 2).mean(dim=(1, 2, 3, 4))
    torch.testing.assert_close(loss, (weight * per_sample).mean())
    assert torch.isfinite(loss) and set(logs) == {"loss", "mse", "weight"}
    loss.backward()
    assert pred.grad is not None and torch.isfinite(pred.grad).all() and pred.grad.abs().sum() > 0


def test_loss_mask_ignores_masked_frames():
    pred, target = torch.zeros(1, 1, 4, 1, 1), torch.zeros(1, 1, 4, 1, 1)
    target[:, :, 3] = 10.0  # error only in the last frame
    mask = torch.tensor([1.0, 1.0, 1.0, 0.0]).view(1, 1, 4, 1, 1)
    assert flow_matching_loss(pred, target, mask=mask)[0].item() == 0.0
    assert flow_matching_loss(pred, target)[0].item() == pytest.approx(25.0)
    with pytest.raises(ValueError, match="weight"):
        flow_matching_loss(pred, target, weight=torch.ones(3))
