"""History key/value cache: the causal-history transformer with and without the cache agree."""

from __future__ import annotations

import dataclasses

import pytest
import torch

from astra_gym.world_model.action_encoders import null_actions_like
from astra_gym.world_model.conditioning import ActionInput, FramePackInputs
from astra_gym.world_model.config import get_preset
from astra_gym.world_model.framepack import FramePackHistory, FramePackLayout, pack
from astra_gym.world_model.kv_cache import HistoryKVCache
from astra_gym.world_model.sampling import SamplerConfig, cat_actions, cat_frame_packs, sample_chunk
from astra_gym.world_model.transformer import AstraTransformer

CAUSAL = get_preset("debug").replace(history_attention="causal")
ATOL = 1e-5


def _model(config=CAUSAL, seed: int = 0) -> AstraTransformer:
    """Debug model with every parameter perturbed (so identity/zero inits hide nothing)."""
    torch.manual_seed(seed)
    model = AstraTransformer(config).eval()
    with torch.no_grad():
        for p in model.parameters():
            p.add_(0.1 * torch.randn_like(p))
    return model


def _inputs(batch: int = 2, history: tuple[int, ...] = (20, 20), chunk: int = 1, seed: int = 0):
    """Latents, timestep, context, frame pack and actions; row i holds ``history[i]`` latents."""
    g = torch.Generator().manual_seed(seed)
    cfg, spec = CAUSAL, CAUSAL.modalities[0]
    length = max(history)
    latents = torch.randn(batch, cfg.in_channels, length, 8, 8, generator=g)
    acts = torch.randn(batch, length, spec.dim, generator=g)
    hist = FramePackHistory.from_latents(latents[:, :, :1], acts[:, :1])
    for t in range(1, length):  # rows stop growing at their own length
        rows = torch.tensor([t < n for n in history])
        hist = hist.append(latents[:, :, t : t + 1], acts[:, t : t + 1], rows=rows)
    frame_pack, values = pack(hist, torch.randn(batch, chunk, spec.dim, generator=g), FramePackLayout())
    actions = ActionInput(values, torch.zeros(batch, dtype=torch.long))
    noisy = torch.randn(batch, cfg.in_channels, chunk, 8, 8, generator=g)
    timestep = torch.rand(batch, generator=g) * 1000
    context = torch.randn(batch, 3, cfg.text_dim, generator=g)
    return noisy, timestep, context, frame_pack, actions


def _mask_tokens(frame_pack: FramePackInputs, row: int, group: int, token: int) -> FramePackInputs:
    """Marks one history temporal token of one row invalid."""
    groups = list(frame_pack.history)
    valid = groups[group].valid.clone()
    valid[row, token] = False
    groups[group] = dataclasses.replace(groups[group], valid=valid)
    return dataclasses.replace(frame_pack, history=tuple(groups))


def test_full_mode_refuses_cache():
    model = _model(get_preset("debug"))
    _, _, context, frame_pack, actions = _inputs()
    with pytest.raises(ValueError, match="history_attention='causal'"):
        model.encode_history(context, frame_pack, actions)


def test_config_round_trip_and_validation():
    assert get_preset("debug").history_attention == "full"
    assert type(CAUSAL).from_dict(CAUSAL.to_dict()) == CAUSAL
    with pytest.raises(ValueError, match="history_attention"):
        get_preset("debug").replace(history_attention="sliding")


def test_causal_differs_from_full():
    full, causal = _model(get_preset("debug")), _model(CAUSAL)
    noisy, timestep, context, frame_pack, actions = _inputs()
    with torch.no_grad():
        a = full(noisy, timestep, context, frame_pack, actions)
        b = causal(noisy, timestep, context, frame_pack, actions)
    assert not torch.allclose(a, b, atol=1e-3)


@pytest.mark.parametrize("history", [(20, 20), (20, 3), (2, 7)])
def test_cached_forward_equals_uncached(history):
    model = _model()
    noisy, timestep, context, frame_pack, actions = _inputs(history=history)
    frame_pack = _mask_tokens(frame_pack, row=0, group=len(frame_pack.history) - 1, token=0)
    assert not all(bool(g.valid.all()) for g in frame_pack.history)  # masked history tokens present
    with torch.no_grad():
        reference = model(noisy, timestep, context, frame_pack, actions)
        cache = model.encode_history(context, frame_pack, actions)
        cached = model(noisy, timestep, context, frame_pack, actions, history_cache=cache)
    assert cache.num_layers == CAUSAL.num_layers and cache.batch_size == 2
    assert cache.keys[0].shape[1:] == (CAUSAL.num_heads, cache.num_tokens, CAUSAL.head_dim)
    torch.testing.assert_close(cached, reference, atol=ATOL, rtol=0)


def test_cache_independent_of_target():
    """Changing the noisy target or timestep leaves the history part of the causal forward alone."""
    model = _model()
    noisy, timestep, context, frame_pack, actions = _inputs()
    with torch.no_grad():
        cache = model.encode_history(context, frame_pack, actions)
        for scale in (0.0, 1.0, 3.0):
            t = torch.full_like(timestep, 999.0 * scale / 3.0)
            reference = model(scale * noisy, t, context, frame_pack, actions)
            cached = model(scale * noisy, t, context, frame_pack, actions, history_cache=cache)
            torch.testing.assert_close(cached, reference, atol=ATOL, rtol=0)


def test_afg_doubled_batch_with_concat_and_select():
    model = _model()
    noisy, timestep, context, frame_pack, actions = _inputs(history=(20, 5))
    null = null_actions_like(actions)
    packs2, actions2 = cat_frame_packs([frame_pack, frame_pack]), cat_actions([actions, null])
    with torch.no_grad():
        reference = model(torch.cat([noisy, noisy]), timestep.repeat(2), context.repeat(2, 1, 1), packs2, actions2)
        joint = model.encode_history(context.repeat(2, 1, 1), packs2, actions2)
        parts = HistoryKVCache.concat(
            [model.encode_history(context, frame_pack, actions), model.encode_history(context, frame_pack, null)]
        )
        for cache in (joint, parts):
            cached = model(
                torch.cat([noisy, noisy]),
                timestep.repeat(2),
                context.repeat(2, 1, 1),
                packs2,
                actions2,
                history_cache=cache,
            )
            torch.testing.assert_close(cached, reference, atol=ATOL, rtol=0)
    # Row selection and MPC-style forks.
    forks = joint.select([0, 1]).repeat_interleave(3)
    assert forks.batch_size == 6
    torch.testing.assert_close(forks.keys[1][3], joint.keys[1][1])
    assert torch.equal(forks.valid[5], joint.valid[1])


def test_no_history():
    model = _model()
    noisy, timestep, context, _, actions = _inputs()
    frame_pack = FramePackInputs.no_history(2, 1)
    actions = ActionInput(actions.values[:, -1:], actions.modality)
    with torch.no_grad():
        reference = model(noisy, timestep, context, frame_pack, actions)
        cache = model.encode_history(context, frame_pack, actions)
        cached = model(noisy, timestep, context, frame_pack, actions, history_cache=cache)
    assert cache.num_tokens == 0
    torch.testing.assert_close(cached, reference, atol=ATOL, rtol=0)


def test_cache_batch_mismatch_raises():
    model = _model()
    noisy, timestep, context, frame_pack, actions = _inputs()
    with torch.no_grad():
        cache = model.encode_history(context, frame_pack, actions).select([0])
        with pytest.raises(ValueError, match="history_cache has batch 1"):
            model(noisy, timestep, context, frame_pack, actions, history_cache=cache)


@pytest.mark.parametrize("batch_guidance", [True, False])
@pytest.mark.parametrize("scale", [1.0, 2.0])
def test_sample_chunk_with_cache_equals_without(batch_guidance, scale):
    model = _model()
    noisy, _, context, frame_pack, actions = _inputs(history=(20, 4))
    config = SamplerConfig(num_steps=3, guidance_scale=scale, batch_guidance=batch_guidance)
    kwargs = dict(context=context, frame_pack=frame_pack, actions=actions, config=config)
    plain = sample_chunk(model, noisy.shape, generator=torch.Generator().manual_seed(1), **kwargs)
    cached = sample_chunk(
        model, noisy.shape, generator=torch.Generator().manual_seed(1), use_history_cache=True, **kwargs
    )
    torch.testing.assert_close(cached, plain, atol=1e-4, rtol=0)


def test_sample_chunk_cache_needs_causal_model():
    model = _model(get_preset("debug"))
    noisy, _, context, frame_pack, actions = _inputs()
    with pytest.raises(ValueError, match="history_attention='causal'"):
        sample_chunk(
            model,
            noisy,
            context=context,
            frame_pack=frame_pack,
            actions=actions,
            config=SamplerConfig(num_steps=1),
            use_history_cache=True,
        )


def test_causal_model_trains_with_gradient_checkpointing():
    model = _model().train()
    model.gradient_checkpointing = True
    noisy, timestep, context, frame_pack, actions = _inputs()
    model(noisy, timestep, context, frame_pack, actions).square().mean().backward()
    grads = [p.grad for n, p in model.named_parameters() if "clean_x_embedder" in n and p.grad is not None]
    assert grads and all(torch.isfinite(g).all() for g in grads)


def test_trainer_builds_and_steps_a_causal_model():
    from astra_gym.training.data import WorldModelBatch
    from astra_gym.training.steps import StepConfig, train_step
    from astra_gym.training.train_world_model import _build_model, config_from_args

    cfg = config_from_args(["--preset", "debug", "--history-attention", "causal"])
    assert cfg.history_attention == "causal"
    assert config_from_args(["--preset", "debug"]).history_attention is None
    model = _build_model(cfg)
    assert model.config.history_attention == "causal"
    noisy, _, _, frame_pack, actions = _inputs(history=(20, 3))
    batch = WorldModelBatch(noisy, frame_pack, actions, torch.zeros(2, dtype=torch.long), torch.tensor([20, 3]))
    loss, _ = train_step(model, batch, StepConfig(), torch.Generator().manual_seed(0))
    loss.backward()
    assert torch.isfinite(loss)
    assert all(torch.isfinite(p.grad).all() for p in model.parameters() if p.grad is not None)
