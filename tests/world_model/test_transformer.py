"""Tests of the Astra transformer, its 3-D RoPE and the diffusers <-> original Wan key mapping."""

from __future__ import annotations

import dataclasses

import pytest
import torch
from diffusers import WanTransformer3DModel
from diffusers.models.transformers.transformer_wan import WanRotaryPosEmbed

from astra_gym.world_model.conditioning import ActionInput, FramePackInputs, TokenGroup
from astra_gym.world_model.config import PRESETS, AstraTransformerConfig, get_preset
from astra_gym.world_model.rope import apply_rope, grid_positions, rope_table
from astra_gym.world_model.transformer import AstraTransformer
from astra_gym.world_model.wan_keys import diffusers_to_original, is_astra_key, original_to_diffusers

# Wan2.1 at toy size: 2 heads of 24 (RoPE split 8/8/8), release action path (U=25, E=3, hard routing).
TINY = AstraTransformerConfig(
    dim=48, num_layers=2, num_heads=2, ffn_dim=64, in_channels=4, out_channels=4, text_dim=16, freq_dim=32
)
DIFFUSERS_TINY = dict(
    num_attention_heads=2,
    attention_head_dim=24,
    ffn_dim=64,
    num_layers=2,
    in_channels=4,
    out_channels=4,
    text_dim=16,
    freq_dim=32,
    rope_max_seq_len=1024,
)
BASE_PARAMS_1_3B = 1_418_996_800  # astra-release.md §1.2


def _perturb(module: torch.nn.Module, scale: float = 0.1) -> None:
    """Adds noise to every parameter so zero/one initialisations cannot hide a wrong mapping."""
    with torch.no_grad():
        for p in module.parameters():
            p.add_(scale * torch.randn_like(p))


def _model(config: AstraTransformerConfig = TINY, seed: int = 0) -> AstraTransformer:
    """A model with every parameter perturbed (identity projectors kept unless perturbed later)."""
    torch.manual_seed(seed)
    model = AstraTransformer(config).eval()
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "projector" not in name or "_processor" in name:
                p.add_(0.1 * torch.randn_like(p))
    return model


def _group(config, scale, batch, temporal_tokens, frame_pos, action_row, height=8, width=8, valid=None, k=1.0):
    """A history group of ``temporal_tokens`` tokens per row at the given positions/rows."""
    shape = (batch, temporal_tokens)
    return TokenGroup(
        scale=scale,
        latents=torch.randn(batch, config.in_channels, scale * temporal_tokens, height, width),
        frame_pos=torch.as_tensor(frame_pos, dtype=torch.float32).expand(shape),
        action_row=torch.as_tensor(action_row, dtype=torch.long).expand(shape),
        valid=torch.ones(shape, dtype=torch.bool) if valid is None else valid,
        spatial_scale=k,
    )


def _frame_pack(config, batch=2, frames=2, scales=(4, 2, 1), side=8) -> FramePackInputs:
    """Release-like layout: one group per scale, then the targets (rows: history 0..n-1, targets n..)."""
    groups = {
        4: _group(config, 4, batch, 1, [0.0], [-1], side, side, k=4.0),
        2: _group(config, 2, batch, 1, [1.0], [1], side, side, k=2.0),
        1: _group(config, 1, batch, 2, [2.0, 3.0], [2, 3], side, side),
    }
    pos = torch.arange(4, 4 + frames, dtype=torch.float32).expand(batch, frames)
    return FramePackInputs(
        history=tuple(groups[s] for s in scales if s in config.history_scales),
        target_frame_pos=pos,
        target_action_row=pos.long(),
    )


def _actions(config, batch=2, rows=6) -> ActionInput:
    """Random rows as wide as the widest modality; batch row b uses modality b mod M."""
    width = max(m.dim for m in config.modalities)
    modality = torch.arange(batch) % len(config.modalities)
    return ActionInput(values=torch.randn(batch, rows, width), modality=modality)


def _inputs(config, batch=2, frames=2, height=8, width=8):
    torch.manual_seed(1)
    latents = torch.randn(batch, config.in_channels, frames, height, width)
    timestep = torch.tensor([900.0, 37.5])[:batch]
    context = torch.randn(batch, 5, config.text_dim)
    return latents, timestep, context


# ----------------------------------------------------------------------------------------------
# 1. Peer check against diffusers' WanTransformer3DModel
# ----------------------------------------------------------------------------------------------


def _peer_pair() -> tuple[WanTransformer3DModel, AstraTransformer]:
    """A random diffusers Wan and our model loaded (strictly) with its converted weights."""
    torch.manual_seed(0)
    peer = WanTransformer3DModel(**DIFFUSERS_TINY).eval()
    _perturb(peer)
    ours = AstraTransformer(TINY).eval()
    astra = {k: v for k, v in ours.state_dict().items() if is_astra_key(k)}
    ours.load_state_dict({**diffusers_to_original(peer.state_dict()), **astra}, strict=True)
    return peer, ours


def test_matches_diffusers_wan_without_history_or_actions():
    peer, ours = _peer_pair()
    latents, timestep, context = _inputs(TINY, height=8, width=12)
    with torch.no_grad():
        expected = peer(latents, timestep, context, return_dict=False)[0]
        got = ours(latents, timestep, context)
    assert got.shape == expected.shape == latents.shape
    torch.testing.assert_close(got, expected, rtol=1e-5, atol=1e-5 * expected.abs().max().item())


def test_non_identity_projector_changes_the_output():
    peer, ours = _peer_pair()
    latents, timestep, context = _inputs(TINY)
    with torch.no_grad():
        ours.blocks[0].projector.weight.add_(0.05 * torch.randn_like(ours.blocks[0].projector.weight))
        expected = peer(latents, timestep, context, return_dict=False)[0]
        got = ours(latents, timestep, context)
    assert (got - expected).abs().max() > 1e-3


def test_key_mapping_round_trip_and_errors():
    peer, ours = _peer_pair()
    peer_sd = peer.state_dict()
    original = diffusers_to_original(peer_sd)
    assert original_to_diffusers(original).keys() == peer_sd.keys()
    assert "blocks.1.norm3.weight" in original and "head.modulation" in original
    astra_only = {"blocks.0.projector.weight": 1, "sekai_processor.projector.0.bias": 2, "global_router.weight": 3}
    assert diffusers_to_original(astra_only) == astra_only == original_to_diffusers(astra_only)
    with pytest.raises(KeyError, match="blocks.0.attn2.add_k_proj.weight"):
        diffusers_to_original({"blocks.0.attn2.add_k_proj.weight": 0})
    with pytest.raises(KeyError, match="img_emb"):
        original_to_diffusers({"img_emb.proj.0.weight": 0})


# ----------------------------------------------------------------------------------------------
# 2. Presets and parameter counts
# ----------------------------------------------------------------------------------------------


@pytest.mark.parametrize("name", [n for n in PRESETS if n != "wan2.1-1.3b"])
def test_preset_forward_backward_with_history_and_actions(name):
    config = get_preset(name)
    side = 4 * config.patch_size[1]  # the 4x history kernel covers 4 patches: 8x8 latents at patch 2, 16x16 at 4
    model = _model(config).train()  # perturbed: the zero-initialised head would block every gradient
    latents, timestep, context = _inputs(config, height=side, width=side)
    frame_pack = _frame_pack(config, side=side)
    velocity, aux = model(latents, timestep, context, frame_pack, _actions(config), return_aux=True)
    assert velocity.shape == latents.shape
    (velocity.square().mean() + aux["moe_balance_loss"]).backward()
    grads = {n: p.grad for n, p in model.named_parameters()}
    assert all(g is None or torch.isfinite(g).all() for g in grads.values())
    for used in ("clean_x_embedder.proj_4x.weight", "clean_x_embedder.proj_2x.weight", "blocks.0.projector.weight"):
        assert grads[used] is not None and grads[used].abs().sum() > 0, used
    assert grads[f"{config.modalities[0].name}_processor.projector.0.weight"].abs().sum() > 0


def test_release_preset_builds_on_meta_with_release_parameter_count():
    config = get_preset("wan2.1-1.3b")
    with torch.device("meta"):
        model = AstraTransformer(config)
        peer = WanTransformer3DModel(
            num_attention_heads=12, attention_head_dim=128, ffn_dim=8960, num_layers=30, text_dim=4096, freq_dim=256
        )
    state = model.state_dict()
    base = {k: v for k, v in state.items() if not is_astra_key(k)}
    assert sum(v.numel() for v in base.values()) == BASE_PARAMS_1_3B
    peer_state = peer.state_dict()
    converted = original_to_diffusers(base)
    assert converted.keys() == peer_state.keys()
    assert all(converted[k].shape == peer_state[k].shape for k in converted)
    # Astra additions (astra-release.md §2.2/§2.4, U=25, E=3): projector 70,824,960 + cam_encoder 645,120
    # + experts 3,594,240 + clean_x_embedder 7,180,800 + processors 925 + global_router 78.
    assert model.num_parameters() - BASE_PARAMS_1_3B == 82_246_123
    assert model.num_parameters() == 1_501_242_923
    shapes = {
        "blocks.29.moe.experts.2.0.weight": (1536, 25),
        "blocks.0.cam_encoder.weight": (1536, 13),
        "clean_x_embedder.proj_4x.weight": (1536, 16, 4, 8, 8),
        "nuscenes_processor.projector.0.weight": (25, 8),
        "global_router.weight": (3, 25),
        "time_projection.1.weight": (9216, 1536),
        "head.head.weight": (64, 1536),
    }
    assert {k: tuple(state[k].shape) for k in shapes} == shapes
    trainable = set(model.trainable_parameter_names("astra"))
    assert sum(v.numel() for k, v in state.items() if k in trainable) == 365_638_045  # §2.4, E=3
    assert not any(k.startswith("global_router") for k in trainable)


def test_shared_cam_encoder_ablation_without_experts():
    config = TINY.replace(num_experts=0)
    model = _model(config)
    assert not any(k.startswith(("global_router", "sekai_processor")) or ".moe." in k for k in model.state_dict())
    latents, timestep, context = _inputs(config)
    frame_pack, actions = _frame_pack(config), _actions(config)
    with torch.no_grad():
        plain = model(latents, timestep, context, frame_pack)
        # cam_encoder was perturbed by _model; zero it: it must then add nothing.
        for block in model.blocks:
            block.cam_encoder.weight.zero_()
            block.cam_encoder.bias.zero_()
        torch.testing.assert_close(model(latents, timestep, context, frame_pack, actions), plain)
        model.blocks[1].cam_encoder.weight.normal_()
        assert (model(latents, timestep, context, frame_pack, actions) - plain).abs().max() > 1e-3


def _fresh_cross_attention_model(config: AstraTransformerConfig) -> AstraTransformer:
    """A cross_attn model perturbed everywhere except the zero-initialised ``action_attn.o``."""
    torch.manual_seed(0)
    model = AstraTransformer(config).eval()
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "action_attn.attn.o." not in name:
                p.add_(0.1 * torch.randn_like(p))
    return model


def test_cross_attention_adapter_ablation():
    config = TINY.replace(action_injection="cross_attn")
    model = _fresh_cross_attention_model(config)
    assert any(".action_attn." in k for k in model.state_dict())
    assert not any(".action_attn" in k for k in AstraTransformer(TINY).state_dict())
    latents, timestep, context = _inputs(config)
    frame_pack, actions = _frame_pack(config), _actions(config)
    with torch.no_grad():
        plain = model(latents, timestep, context, frame_pack)
        # Zero-initialised output projection: actions add nothing at init, as the ACT-Adapter.
        torch.testing.assert_close(model(latents, timestep, context, frame_pack, actions), plain)
        model.blocks[0].action_attn.attn.o.weight.normal_()
        with_actions = model(latents, timestep, context, frame_pack, actions)
        assert (with_actions - plain).abs().max() > 1e-3
        other = ActionInput(actions.values + 1.0, actions.modality)
        assert (model(latents, timestep, context, frame_pack, other) - with_actions).abs().max() > 1e-3
        # Actions reach the tokens only through action_attn: the additive path is off.
        model.blocks[0].action_attn.attn.o.weight.zero_()
        torch.testing.assert_close(model(latents, timestep, context, frame_pack, actions), plain)


def test_cross_attention_adapter_loads_checkpoints_saved_before_its_module():
    config = TINY.replace(action_injection="cross_attn")
    model = _fresh_cross_attention_model(config)
    with torch.no_grad():
        model.blocks[0].action_attn.attn.o.weight.normal_()
    legacy = {}
    for key, value in model.state_dict().items():
        key = key.replace(".action_attn.norm.", ".action_attn_norm.").replace(".action_attn.attn.", ".action_attn.")
        legacy[key] = value
    assert any(".action_attn_norm." in k for k in legacy) and any(".action_attn.q." in k for k in legacy)
    loaded = AstraTransformer(config).eval()
    loaded.load_state_dict(legacy, strict=True)
    latents, timestep, context = _inputs(config)
    frame_pack, actions = _frame_pack(config), _actions(config)
    with torch.no_grad():
        expected = model(latents, timestep, context, frame_pack, actions)
        torch.testing.assert_close(loaded(latents, timestep, context, frame_pack, actions), expected)


def test_cross_attention_adapter_ignores_unused_action_rows():
    config = TINY.replace(action_injection="cross_attn")
    model = _fresh_cross_attention_model(config)
    with torch.no_grad():
        model.blocks[1].action_attn.attn.o.weight.normal_()
        latents, timestep, context = _inputs(config)
        frame_pack, actions = _frame_pack(config), _actions(config, rows=6)
        base = model(latents, timestep, context, frame_pack, actions)
        padded = ActionInput(
            torch.cat([actions.values, torch.randn(2, 3, actions.values.shape[-1])], 1), actions.modality
        )
        torch.testing.assert_close(model(latents, timestep, context, frame_pack, padded), base)


def test_cross_attention_adapter_rejects_causal_history():
    with pytest.raises(ValueError, match="supports only history_attention='full'"):
        TINY.replace(action_injection="cross_attn", history_attention="causal")
    with pytest.raises(ValueError, match="must be 'add' or 'cross_attn'"):
        TINY.replace(action_injection="concat")


# ----------------------------------------------------------------------------------------------
# Action injection
# ----------------------------------------------------------------------------------------------


def _capture_attention_input(model: AstraTransformer, block: int, *args) -> torch.Tensor:
    """Runs the model and returns the [B, S, dim] input of ``blocks[block].self_attn``."""
    captured = []
    hook = model.blocks[block].self_attn.register_forward_pre_hook(lambda _, inputs: captured.append(inputs[0]))
    try:
        with torch.no_grad():
            model(*args)
    finally:
        hook.remove()
    return captured[0]


def test_hard_routed_action_features_are_added_per_temporal_token():
    config = TINY.replace(top_k=2)  # release hard routing sums top_k copies: weight 2 on the expert
    model = _model(config)
    latents, timestep, context = _inputs(config)
    frame_pack, actions = _frame_pack(config, scales=(1,)), _actions(config)
    h_plain = _capture_attention_input(model, 0, latents, timestep, context, frame_pack)
    h_action = _capture_attention_input(model, 0, latents, timestep, context, frame_pack, actions)
    rows = torch.cat([frame_pack.history[0].action_row, frame_pack.target_action_row], dim=1)  # [B, T]
    with torch.no_grad():
        for b in range(2):
            spec = config.modalities[int(actions.modality[b])]
            processor = getattr(model, f"{spec.name}_processor")
            unified = torch.cat([processor(actions.values[b, :, : spec.dim]), torch.zeros(1, config.unified_dim)])
            feature = 2 * model.blocks[0].moe.experts[spec.expert](unified)  # [A+1, dim]; row -1 -> zero U row
            expected = feature[rows[b]].repeat_interleave(16, dim=0)  # 4 x 4 tokens per latent frame
            torch.testing.assert_close(h_action[b] - h_plain[b], expected, atol=1e-5, rtol=1e-5)


def test_zero_row_goes_through_expert_bias():
    model = _model(TINY)
    latents, timestep, context = _inputs(TINY)
    frame_pack = _frame_pack(TINY, scales=())
    frame_pack = FramePackInputs((), frame_pack.target_frame_pos, torch.full_like(frame_pack.target_action_row, -1))
    actions = _actions(TINY)
    with torch.no_grad():
        plain = model(latents, timestep, context, frame_pack)
        assert (model(latents, timestep, context, frame_pack, actions) - plain).abs().max() > 1e-3
        for block in model.blocks:
            for expert in block.moe.experts:
                expert[0].bias.zero_()
        torch.testing.assert_close(model(latents, timestep, context, frame_pack, actions), plain)


# ----------------------------------------------------------------------------------------------
# 3. Key padding
# ----------------------------------------------------------------------------------------------


def test_fully_masked_group_equals_omitting_it():
    config = get_preset("debug")
    model = _model(config)
    latents, timestep, context = _inputs(config)
    full, actions = _frame_pack(config), _actions(config)
    masked_2x = dataclasses.replace(full.history[1], valid=torch.tensor([[False], [True]]))
    masked = FramePackInputs(
        (full.history[0], masked_2x, full.history[2]), full.target_frame_pos, full.target_action_row
    )
    omitted = FramePackInputs((full.history[0], full.history[2]), full.target_frame_pos, full.target_action_row)
    with torch.no_grad():
        out_masked = model(latents, timestep, context, masked, actions)
        out_omitted = model(latents, timestep, context, omitted, actions)
        out_full = model(latents, timestep, context, full, actions)
    torch.testing.assert_close(out_masked[0], out_omitted[0], atol=1e-5, rtol=1e-5)  # row 0: group masked
    torch.testing.assert_close(out_masked[1], out_full[1], atol=1e-5, rtol=1e-5)  # row 1: group valid
    assert (out_full[0] - out_omitted[0]).abs().max() > 1e-3


# ----------------------------------------------------------------------------------------------
# 4. RoPE
# ----------------------------------------------------------------------------------------------


@pytest.mark.parametrize("head_dim", [24, 128])
def test_rope_matches_diffusers_at_integer_positions(head_dim):
    frames, height, width = 3, 5, 7
    peer = WanRotaryPosEmbed(head_dim, (1, 1, 1), max_seq_len=1024)
    peer_cos, peer_sin = peer(torch.zeros(1, 1, frames, height, width))  # [1, S, 1, D] repeat-interleaved
    split = AstraTransformerConfig(dim=2 * head_dim, num_layers=1, num_heads=2, ffn_dim=8).rope_split
    positions = grid_positions(torch.arange(frames, dtype=torch.float32)[None], height, width)
    table = rope_table(positions, split, theta=10000.0)
    assert torch.equal(table.cos, peer_cos[..., 0::2]) and torch.equal(table.sin, peer_sin[..., 1::2])


def test_apply_rope_is_complex_multiplication():
    torch.manual_seed(0)
    positions = torch.rand(2, 10, 3) * 50
    table = rope_table(positions, (8, 8, 8), theta=10000.0)
    x = torch.randn(2, 10, 3, 24)
    angle = torch.polar(torch.ones_like(table.cos, dtype=torch.float64), torch.atan2(table.sin, table.cos).double())
    expected = torch.view_as_real(torch.view_as_complex(x.double().unflatten(-1, (-1, 2))) * angle).flatten(-2)
    torch.testing.assert_close(apply_rope(x, table), expected.float(), atol=1e-6, rtol=1e-6)


def test_spatial_scale_centres_compressed_tokens():
    positions = grid_positions(torch.tensor([[5.0]]), 2, 2, spatial_scale=4.0)
    assert positions.tolist() == [[[5.0, 1.5, 1.5], [5.0, 1.5, 5.5], [5.0, 5.5, 1.5], [5.0, 5.5, 5.5]]]


def test_shifting_all_temporal_positions_leaves_output_unchanged():
    model = _model(TINY)
    latents, timestep, context = _inputs(TINY)
    frame_pack, actions = _frame_pack(TINY), _actions(TINY)
    shifted = FramePackInputs(
        tuple(dataclasses.replace(g, frame_pos=g.frame_pos + 37.0) for g in frame_pack.history),
        frame_pack.target_frame_pos + 37.0,
        frame_pack.target_action_row,
    )
    with torch.no_grad():
        reference = model(latents, timestep, context, frame_pack, actions)
        torch.testing.assert_close(
            model(latents, timestep, context, shifted, actions), reference, atol=2e-5, rtol=1e-4
        )


# ----------------------------------------------------------------------------------------------
# 5. Determinism and dtypes
# ----------------------------------------------------------------------------------------------


def test_forward_is_deterministic():
    model = _model(get_preset("debug"))
    args = (*_inputs(model.config), _frame_pack(model.config), _actions(model.config))
    with torch.no_grad():
        assert torch.equal(model(*args), model(*args))


def test_gradient_checkpointing_gives_the_same_gradients():
    model = _model(TINY).train()
    args = (*_inputs(TINY), _frame_pack(TINY), _actions(TINY))
    grads = []
    for checkpointing in (False, True):
        model.zero_grad()
        model.gradient_checkpointing = checkpointing
        model(*args).square().mean().backward()
        grads.append(torch.cat([p.grad.flatten() for p in model.parameters() if p.grad is not None]))
    torch.testing.assert_close(grads[1], grads[0])


def test_bf16_autocast_and_bf16_weights_are_close_to_fp32():
    model = _model(TINY)
    args = (*_inputs(TINY), _frame_pack(TINY), _actions(TINY))
    with torch.no_grad():
        reference = model(*args)
        with torch.autocast("cpu", dtype=torch.bfloat16):
            autocast = model(*args)
        bf16 = model.to(torch.bfloat16)(*args)
    scale = reference.abs().max()
    assert autocast.dtype == bf16.dtype == torch.bfloat16
    assert (autocast.float() - reference).abs().max() < 0.05 * scale
    assert (bf16.float() - reference).abs().max() < 0.05 * scale


# ----------------------------------------------------------------------------------------------
# Validation and helpers
# ----------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "change, message",
    [
        (lambda a: {**a, "latents": torch.randn(2, 3, 2, 8, 8)}, "in_channels=4"),
        (lambda a: {**a, "latents": torch.randn(2, 4, 2, 8, 7)}, "not divisible by the patch"),
        (lambda a: {**a, "timestep": torch.tensor(10.0)}, "timestep must be"),
        (lambda a: {**a, "context": torch.randn(2, 5, 17)}, "text_dim"),
        (lambda a: {**a, "actions": _actions(TINY, rows=3)}, "action_row values span"),
        (lambda a: {**a, "frame_pack": _frame_pack(TINY, frames=3)}, "targets must be"),
    ],
)
def test_clear_errors(change, message):
    model = AstraTransformer(TINY)
    latents, timestep, context = _inputs(TINY)
    args = dict(
        latents=latents, timestep=timestep, context=context, frame_pack=_frame_pack(TINY), actions=_actions(TINY)
    )
    with pytest.raises(ValueError, match=message):
        model(**change(args))


def test_history_containers_reject_inconsistent_shapes_where_built():
    latents, pos = torch.randn(2, 4, 4, 8, 8), torch.zeros(2, 2)
    rows, valid = torch.zeros(2, 2, dtype=torch.long), torch.ones(2, 2, dtype=torch.bool)
    TokenGroup(2, latents, pos, rows, valid)  # consistent
    with pytest.raises(ValueError, match="not a multiple of the scale"):
        TokenGroup(3, latents, pos, rows, valid)
    with pytest.raises(ValueError, match=r"valid must be \[B, T // scale\]=\[2, 2\]"):
        TokenGroup(2, latents, pos, rows, valid[:, :1])
    with pytest.raises(ValueError, match=r"latents must be \[B, C, T, H, W\]"):
        TokenGroup(2, latents[0], pos, rows, valid)
    group = TokenGroup(2, latents, pos, rows, valid)
    with pytest.raises(ValueError, match="must both be"):
        FramePackInputs((group,), torch.zeros(2, 1), torch.zeros(2, 2, dtype=torch.long))
    with pytest.raises(ValueError, match="history group 0 has batch 2, the targets 3"):
        FramePackInputs((group,), torch.zeros(3, 1), torch.zeros(3, 1, dtype=torch.long))


def test_trainable_sets_and_defaults():
    model = AstraTransformer(get_preset("debug"))
    full, astra = model.trainable_parameter_names("full"), set(model.trainable_parameter_names("astra"))
    assert len(full) == len(list(model.parameters()))
    assert "global_router.weight" in astra  # learned routing trains the router
    assert "blocks.0.cross_attn.q.weight" not in astra and "blocks.0.self_attn.norm_k.weight" in astra
    assert torch.equal(model.blocks[0].projector.weight, torch.eye(model.config.dim))
    assert not model.blocks[0].cam_encoder.weight.any() and not model.head.head.weight.any()
    latents, timestep, _ = _inputs(model.config)
    assert model(latents, timestep).shape == latents.shape  # context None, no frame pack, no actions
