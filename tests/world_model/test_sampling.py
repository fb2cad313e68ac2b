"""Tests of the Euler / action-free-guidance sampler, with tiny stand-in velocity models."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from astra_gym.world_model.conditioning import ActionInput, FramePackInputs, TokenGroup
from astra_gym.world_model.sampling import (
    SamplerConfig,
    cat_actions,
    cat_frame_packs,
    draw_noise,
    euler_step,
    flow_sigmas,
    guided_velocity,
    sample_chunk,
)

SHAPE = (2, 3, 2, 4, 4)  # [B, C, F, H, W]


class StandInModel(nn.Module):
    """Same forward signature as the transformer; output depends on every input, row by row."""

    def __init__(self, channels: int = 3) -> None:
        super().__init__()
        self.mix = nn.Conv3d(channels, channels, 1)
        with torch.no_grad():
            weight = torch.linspace(-0.5, 0.5, channels * channels).view(channels, channels, 1, 1, 1)
            self.mix.weight.copy_(weight)
            self.mix.bias.copy_(torch.linspace(-0.1, 0.1, channels))
        self.batch_sizes: list[int] = []

    def forward(self, latents, timestep, context=None, frame_pack=None, actions=None, return_aux=False):
        batch = latents.shape[0]
        self.batch_sizes.append(batch)
        shift = torch.zeros(batch)
        if actions is not None:
            shift = shift + actions.values.sum(dim=(1, 2)) + 0.1 * actions.modality
        if context is not None:
            shift = shift + context.mean(dim=(1, 2))
        if frame_pack is not None:
            shift = shift + frame_pack.target_frame_pos.mean(dim=1)
            for group in frame_pack.history:
                shift = shift + group.latents.mean(dim=(1, 2, 3, 4)) * group.valid.float().mean(dim=1)
        out = self.mix(latents) * (timestep / 1000.0).view(batch, 1, 1, 1, 1)
        return out + shift.view(batch, 1, 1, 1, 1)


class LinearPathModel(nn.Module):
    """Exact velocity of the straight path to a fixed data point: v = (x - x0) / sigma."""

    def __init__(self, x0: torch.Tensor) -> None:
        super().__init__()
        self.x0 = x0

    def forward(self, latents, timestep, context=None, frame_pack=None, actions=None, return_aux=False):
        sigma = (timestep / 1000.0).view(-1, 1, 1, 1, 1)
        return (latents - self.x0) / sigma


def make_inputs(batch: int = 2, seed: int = 0):
    """Random context, one-group frame pack and actions for ``batch`` rows."""
    g = torch.Generator().manual_seed(seed)
    _, c, f, h, w = SHAPE
    context = torch.randn(batch, 3, 5, generator=g)
    group = TokenGroup(
        scale=1,
        latents=torch.randn(batch, c, 2, h, w, generator=g),
        frame_pos=torch.arange(2.0).expand(batch, 2),
        action_row=torch.zeros(batch, 2, dtype=torch.long),
        valid=torch.ones(batch, 2, dtype=torch.bool),
    )
    pos = torch.arange(2, 2 + f).expand(batch, f)
    pack = FramePackInputs(history=(group,), target_frame_pos=pos.float(), target_action_row=pos.long())
    actions = ActionInput(values=torch.randn(batch, 2 + f, 13, generator=g), modality=torch.arange(batch) % 3)
    return context, pack, actions


def zeros_like_actions(actions: ActionInput) -> ActionInput:
    """The null action: all zeros, flag included."""
    return ActionInput(values=torch.zeros_like(actions.values), modality=actions.modality)


def run(model, config, noise, inputs, null=True):
    context, pack, actions = inputs
    null_actions = zeros_like_actions(actions) if null else None
    return sample_chunk(
        model, noise, context=context, frame_pack=pack, actions=actions, config=config, null_actions=null_actions
    )


def test_flow_sigmas_reproduce_release_table():
    sigmas = flow_sigmas(50, shift=5.0)
    assert sigmas.shape == (51,) and sigmas.dtype == torch.float32
    expected_head = torch.tensor([1.0, 0.9959, 0.9917])
    expected_tail = torch.tensor([0.3571, 0.3030, 0.2419, 0.1724, 0.0926, 0.0])
    torch.testing.assert_close(sigmas[:3], expected_head, atol=6e-5, rtol=0)
    torch.testing.assert_close(sigmas[-6:], expected_tail, atol=6e-5, rtol=0)
    assert torch.all(sigmas[1:] < sigmas[:-1])


def test_flow_sigmas_match_diffusers_scheduler():
    diffusers = pytest.importorskip("diffusers")
    scheduler = diffusers.FlowMatchEulerDiscreteScheduler(shift=5.0)
    scheduler.set_timesteps(sigmas=torch.linspace(1, 0, 21, dtype=torch.float64)[:20].numpy())
    ours = flow_sigmas(20, shift=5.0)
    torch.testing.assert_close(scheduler.sigmas, ours, atol=1e-6, rtol=0)
    torch.testing.assert_close(scheduler.timesteps, 1000 * ours[:-1], atol=1e-3, rtol=0)
    g = torch.Generator().manual_seed(0)
    x, v = torch.randn(1, 2, 3, generator=g), torch.randn(1, 2, 3, generator=g)
    for i in range(20):  # the scheduler tracks its own step index, so walk every step
        expected = scheduler.step(v, scheduler.timesteps[i], x, return_dict=False)[0]
        x = euler_step(x, v, ours[i], ours[i + 1])
        torch.testing.assert_close(x, expected)


@pytest.mark.parametrize("num_steps", [1, 3, 50])
def test_euler_reaches_fixed_data_point_exactly(num_steps):
    x0 = torch.randn(SHAPE, generator=torch.Generator().manual_seed(1))
    noise = torch.randn(SHAPE, generator=torch.Generator().manual_seed(2))
    config = SamplerConfig(num_steps=num_steps)
    out = sample_chunk(LinearPathModel(x0), noise, context=None, frame_pack=None, actions=None, config=config)
    torch.testing.assert_close(out, x0, atol=1e-5, rtol=1e-5)


def test_euler_step_accepts_per_row_sigmas():
    x, v = torch.ones(2, 3), torch.ones(2, 3)
    out = euler_step(x, v, torch.tensor([1.0, 0.5]), torch.tensor([0.5, 0.0]))
    torch.testing.assert_close(out, torch.full((2, 3), 0.5))
    with pytest.raises(ValueError, match="velocity shape"):
        euler_step(x, v[:1], 1.0, 0.5)


def test_guided_velocity_formula():
    c, u = torch.tensor([2.0]), torch.tensor([1.0])
    assert guided_velocity(c, u, 1.0).item() == 2.0
    assert guided_velocity(c, u, 0.0).item() == 1.0
    assert guided_velocity(c, u, 3.0).item() == 4.0


def test_scale_one_is_the_conditional_prediction_with_one_forward_per_step():
    model, inputs = StandInModel(), make_inputs()
    noise = torch.randn(SHAPE, generator=torch.Generator().manual_seed(3))
    out = run(model, SamplerConfig(num_steps=4, guidance_scale=1.0), noise, inputs)
    assert model.batch_sizes == [2] * 4
    context, pack, actions = inputs
    x, sigmas = noise, flow_sigmas(4)
    for i in range(4):
        t = torch.full((2,), 1000.0) * sigmas[i]
        x = euler_step(x, model(x, t, context=context, frame_pack=pack, actions=actions), sigmas[i], sigmas[i + 1])
    torch.testing.assert_close(out, x)


def test_scale_zero_is_the_action_free_prediction():
    model, inputs = StandInModel(), make_inputs()
    noise = torch.randn(SHAPE, generator=torch.Generator().manual_seed(4))
    out = run(model, SamplerConfig(num_steps=4, guidance_scale=0.0), noise, inputs)
    assert model.batch_sizes == [2] * 4  # one action-free forward per step
    context, pack, actions = inputs
    null_inputs = (context, pack, zeros_like_actions(actions))
    action_free = run(model, SamplerConfig(num_steps=4, guidance_scale=1.0), noise, null_inputs)
    conditional = run(model, SamplerConfig(num_steps=4, guidance_scale=1.0), noise, inputs)
    torch.testing.assert_close(out, action_free)
    assert not torch.allclose(out, conditional)


def test_batched_guidance_equals_separate_guidance():
    inputs = make_inputs()
    noise = torch.randn(SHAPE, generator=torch.Generator().manual_seed(5))
    batched_model, separate_model = StandInModel(), StandInModel()
    batched = run(batched_model, SamplerConfig(num_steps=3, guidance_scale=2.5), noise, inputs)
    separate = run(separate_model, SamplerConfig(num_steps=3, guidance_scale=2.5, batch_guidance=False), noise, inputs)
    assert batched_model.batch_sizes == [4] * 3
    assert separate_model.batch_sizes == [2] * 6
    torch.testing.assert_close(batched, separate, atol=1e-5, rtol=1e-5)
    conditional = run(StandInModel(), SamplerConfig(num_steps=3, guidance_scale=1.0), noise, inputs)
    assert not torch.allclose(batched, conditional)


def test_default_null_actions_are_the_action_encoders_null():
    encoders = pytest.importorskip("astra_gym.world_model.action_encoders")
    inputs = make_inputs()
    noise = torch.randn(SHAPE, generator=torch.Generator().manual_seed(6))
    config = SamplerConfig(num_steps=2, guidance_scale=2.0)
    default = run(StandInModel(), config, noise, inputs, null=False)
    context, pack, actions = inputs
    explicit = sample_chunk(
        StandInModel(),
        noise,
        context=context,
        frame_pack=pack,
        actions=actions,
        config=config,
        null_actions=encoders.null_actions_like(actions),
    )
    torch.testing.assert_close(default, explicit)


def test_per_row_generators_make_rows_independent_of_batch():
    shape = (3, *SHAPE[1:])
    rows = draw_noise(shape, [torch.Generator().manual_seed(s) for s in (10, 11, 12)])
    alone = draw_noise((1, *SHAPE[1:]), [torch.Generator().manual_seed(11)])
    torch.testing.assert_close(rows[1:2], alone)
    assert not torch.allclose(rows[0], rows[1])
    context, pack, actions = make_inputs(batch=3)
    config = SamplerConfig(num_steps=2)
    gens = [torch.Generator().manual_seed(s) for s in (10, 11, 12)]
    full = sample_chunk(
        StandInModel(), shape, context=context, frame_pack=pack, actions=actions, config=config, generator=gens
    )
    row = cat_actions([ActionInput(actions.values[1:2], actions.modality[1:2])])
    pack1 = FramePackInputs(
        history=tuple(
            TokenGroup(g.scale, g.latents[1:2], g.frame_pos[1:2], g.action_row[1:2], g.valid[1:2])
            for g in pack.history
        ),
        target_frame_pos=pack.target_frame_pos[1:2],
        target_action_row=pack.target_action_row[1:2],
    )
    single = sample_chunk(
        StandInModel(),
        (1, *SHAPE[1:]),
        context=context[1:2],
        frame_pack=pack1,
        actions=row,
        config=config,
        generator=[torch.Generator().manual_seed(11)],
    )
    torch.testing.assert_close(full[1:2], single)


def test_same_seed_gives_identical_samples_and_other_seed_differs():
    context, pack, actions = make_inputs()
    config = SamplerConfig(num_steps=2, guidance_scale=2.0)

    def sample(seed):
        return sample_chunk(
            StandInModel(),
            SHAPE,
            context=context,
            frame_pack=pack,
            actions=actions,
            config=config,
            generator=torch.Generator().manual_seed(seed),
            null_actions=zeros_like_actions(actions),
        )

    assert torch.equal(sample(7), sample(7))
    assert not torch.allclose(sample(7), sample(8))


def test_cat_helpers_concatenate_along_batch_in_order():
    _, pack_a, actions_a = make_inputs(batch=2, seed=0)
    _, pack_b, actions_b = make_inputs(batch=1, seed=1)
    pack = cat_frame_packs([pack_a, pack_b])
    actions = cat_actions([actions_a, actions_b])
    assert pack.target_frame_pos.shape == (3, SHAPE[2])
    assert pack.history[0].latents.shape[0] == 3
    assert torch.equal(pack.history[0].latents[2:], pack_b.history[0].latents)
    assert torch.equal(actions.values[:2], actions_a.values) and actions.modality.shape == (3,)
    with pytest.raises(ValueError, match="history groups"):
        cat_frame_packs([pack_a, FramePackInputs.no_history(1, SHAPE[2])])


def test_errors_name_the_problem():
    context, pack, actions = make_inputs()
    with pytest.raises(ValueError, match="needs actions"):
        sample_chunk(
            StandInModel(),
            torch.zeros(SHAPE),
            context=context,
            frame_pack=pack,
            actions=None,
            config=SamplerConfig(guidance_scale=2.0),
        )
    with pytest.raises(ValueError, match="no generator"):
        sample_chunk(StandInModel(), SHAPE, context=context, frame_pack=pack, actions=actions, config=SamplerConfig())
    with pytest.raises(ValueError, match="one per row"):
        draw_noise(SHAPE, [torch.Generator()])
    with pytest.raises(ValueError, match="num_steps"):
        SamplerConfig(num_steps=0)
