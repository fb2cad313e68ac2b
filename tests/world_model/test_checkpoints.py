"""Checkpoint layer: release key table, release/Wan loaders, our atomic format, model cache.

The expected key table below is written from astra-release.md §1.2 / §2.2 / §2.4, independently of
the transformer code, and also serves to build tiny synthetic "release" checkpoints with the real
key names. Nothing here allocates the full-size model (it is built on the meta device only).
"""

from __future__ import annotations

import json
import logging
import os
import re
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file, save_file

from astra_gym.world_model import checkpoints as ckpt
from astra_gym.world_model import model_cache
from astra_gym.world_model import release_checkpoint as release
from astra_gym.world_model.checkpoints import CheckpointError, StateDictMismatchError
from astra_gym.world_model.conditioning import ActionInput
from astra_gym.world_model.config import get_preset
from astra_gym.world_model.transformer import AstraTransformer
from astra_gym.world_model.wan_keys import original_to_diffusers

LOGGER = "astra_gym.world_model.release_checkpoint"
RELEASE_PROCESSORS = (("sekai", 13), ("nuscenes", 8), ("openx", 13))
REPO_ROOT = Path(__file__).resolve().parents[2]

# Tiny release-shaped sizes used for synthetic checkpoints (E=4, U=5 on purpose: not the preset's).
TINY = dict(dim=48, layers=2, ffn=96, unified=5, experts=4, channels=4, text_dim=16, freq_dim=32)
TINY_HEADS = 2


# ------------------------------------------------------------------------------------------------
# The release key table, from the reference document
# ------------------------------------------------------------------------------------------------


def release_table(
    dim: int = 1536,
    layers: int = 30,
    ffn: int = 8960,
    unified: int = 25,
    experts: int = 3,
    channels: int = 16,
    text_dim: int = 4096,
    freq_dim: int = 256,
    processors: tuple[tuple[str, int], ...] = RELEASE_PROCESSORS,
) -> dict[str, tuple[int, ...]]:
    """Key -> shape of the release state dict (astra-release.md §1.2 base keys, §2.2 Astra keys)."""
    table: dict[str, tuple[int, ...]] = {}

    def layer(name: str, weight: tuple[int, ...]) -> None:
        table[f"{name}.weight"], table[f"{name}.bias"] = weight, (weight[0],)

    layer("patch_embedding", (dim, channels, 1, 2, 2))
    layer("text_embedding.0", (dim, text_dim))
    layer("text_embedding.2", (dim, dim))
    layer("time_embedding.0", (dim, freq_dim))
    layer("time_embedding.2", (dim, dim))
    layer("time_projection.1", (6 * dim, dim))
    for i in range(layers):
        block = f"blocks.{i}"
        for attn in ("self_attn", "cross_attn"):
            for proj in "qkvo":
                layer(f"{block}.{attn}.{proj}", (dim, dim))
            table[f"{block}.{attn}.norm_q.weight"] = table[f"{block}.{attn}.norm_k.weight"] = (dim,)
        layer(f"{block}.norm3", (dim,))
        layer(f"{block}.ffn.0", (ffn, dim))
        layer(f"{block}.ffn.2", (dim, ffn))
        table[f"{block}.modulation"] = (1, 6, dim)
        layer(f"{block}.cam_encoder", (dim, 13))
        layer(f"{block}.projector", (dim, dim))
        for e in range(experts):
            layer(f"{block}.moe.experts.{e}.0", (dim, unified))
    layer("head.head", (channels * 4, dim))
    table["head.modulation"] = (1, 2, dim)
    layer("clean_x_embedder.proj", (dim, channels, 1, 2, 2))
    layer("clean_x_embedder.proj_2x", (dim, channels, 2, 4, 4))
    layer("clean_x_embedder.proj_4x", (dim, channels, 4, 8, 8))
    for name, width in processors:
        layer(f"{name}_processor.projector.0", (unified, width))
    layer("global_router", (experts, unified))
    return table


def addition_group(key: str) -> str | None:
    """The §2.4 group of an Astra-added key, None for a Wan base key."""
    for group in ("cam_encoder", "moe", "clean_x_embedder", "_processor", "global_router"):
        if group in key:
            return group
    return "projector" if key.startswith("blocks.") and ".projector." in key else None


def numel(shape: tuple[int, ...]) -> int:
    """Number of elements of a shape."""
    out = 1
    for size in shape:
        out *= size
    return out


def synthetic_state(table: dict[str, tuple[int, ...]], seed: int = 0) -> dict[str, torch.Tensor]:
    """Random float32 tensors with the table's keys and shapes."""
    gen = torch.Generator().manual_seed(seed)
    return {key: torch.randn(shape, generator=gen) * 0.1 for key, shape in table.items()}


def tiny_release(**changes) -> dict[str, torch.Tensor]:
    """A tiny synthetic release state dict (dim 48, 2 blocks, U=5, E=4)."""
    return synthetic_state(release_table(**{**TINY, **changes}))


def forward(model: AstraTransformer, seed: int = 0) -> torch.Tensor:
    """One small deterministic forward pass with actions of the first modality."""
    gen = torch.Generator().manual_seed(seed)
    cfg = model.config
    dtype = next(model.parameters()).dtype
    latents = torch.randn(1, cfg.in_channels, 2, 4, 4, generator=gen).to(dtype)
    context = torch.randn(1, 3, cfg.text_dim, generator=gen).to(dtype)
    values = torch.randn(1, 2, max(m.dim for m in cfg.modalities), generator=gen).to(dtype)
    actions = ActionInput(values, torch.tensor([0]))
    with torch.no_grad():
        return model(latents, torch.tensor([500.0]), context, actions=actions)


def assert_state_equal(model: torch.nn.Module, expected: dict[str, torch.Tensor]) -> None:
    """The model's state dict holds exactly ``expected`` (same keys, bit-equal values)."""
    state = model.state_dict()
    assert set(state) == set(expected)
    for key, value in expected.items():
        assert torch.equal(state[key], value.to(state[key].dtype)), key


# ------------------------------------------------------------------------------------------------
# Full-size key set and parameter counts
# ------------------------------------------------------------------------------------------------


def test_release_table_matches_documented_counts():
    table = release_table()
    base = sum(numel(s) for k, s in table.items() if addition_group(k) is None)
    groups: dict[str, int] = {}
    for key, shape in table.items():
        if (group := addition_group(key)) is not None:
            groups[group] = groups.get(group, 0) + numel(shape)
    assert base == 1_418_996_800
    assert groups == {
        "projector": 70_824_960,
        "cam_encoder": 645_120,
        "moe": 3_594_240,
        "clean_x_embedder": 7_180_800,
        "_processor": 925,
        "global_router": 78,
    }


def test_full_model_has_exactly_the_release_keys_and_shapes():
    with torch.device("meta"):
        model = AstraTransformer(get_preset("wan2.1-1.3b"))
    found = {key: tuple(value.shape) for key, value in model.state_dict().items()}
    expected = release_table()
    assert sorted(set(found) - set(expected)) == []
    assert sorted(set(expected) - set(found)) == []
    assert {k: s for k, s in found.items() if expected[k] != s} == {}
    assert sum(p.numel() for p in model.parameters()) == 1_418_996_800 + 82_246_123


@pytest.mark.parametrize("experts", [3, 4])
def test_config_inferred_from_full_size_shapes_is_the_preset(experts):
    state = {k: torch.empty(s, device="meta") for k, s in release_table(experts=experts).items()}
    config = release.infer_release_config(state)
    assert config == get_preset("wan2.1-1.3b").replace(num_experts=experts)


# ------------------------------------------------------------------------------------------------
# The release loader on synthetic checkpoints
# ------------------------------------------------------------------------------------------------


def lightning_wrap(state: dict[str, torch.Tensor]) -> dict:
    """A Lightning-style checkpoint: nested state_dict, ``pipe.dit.`` prefix, other entries."""
    nested = {f"pipe.dit.{k}": v for k, v in state.items()}
    nested["pipe.text_encoder.shared.weight"] = torch.zeros(2, 2)
    return {"epoch": 3, "global_step": 1200, "pytorch-lightning_version": "2.4.0", "state_dict": nested}


@pytest.mark.parametrize("layout", ["flat", "lightning", "safetensors"])
def test_tiny_release_loads_strictly_and_runs(tmp_path, layout):
    state = tiny_release()
    path = tmp_path / ("ckpt.safetensors" if layout == "safetensors" else "diffusion_pytorch_model.ckpt")
    if layout == "safetensors":
        save_file(state, str(path))
    else:
        torch.save(state if layout == "flat" else lightning_wrap(state), path)

    model = release.load_astra_release(path, dtype=torch.float32, num_heads=TINY_HEADS)

    cfg = model.config
    assert (cfg.num_experts, cfg.unified_dim, cfg.dim, cfg.num_layers, cfg.ffn_dim) == (4, 5, 48, 2, 96)
    expected_modalities = [(name, width, e) for e, (name, width) in enumerate(RELEASE_PROCESSORS)]
    assert [(m.name, m.dim, m.expert) for m in cfg.modalities] == expected_modalities
    assert not model.training
    assert_state_equal(model, state)
    out = forward(model)
    assert out.shape == (1, 4, 2, 4, 4) and torch.isfinite(out).all() and out.abs().sum() > 0


def test_release_default_dtype_is_bfloat16(tmp_path):
    torch.save(tiny_release(), tmp_path / "c.ckpt")
    model = release.load_astra_release(tmp_path / "c.ckpt", num_heads=TINY_HEADS)
    assert {p.dtype for p in model.parameters()} == {torch.bfloat16}


def test_release_converts_offline_to_our_format(tmp_path):
    """The converter writes the release once in our format; loading that needs no sniffing or Wan merge."""
    state = tiny_release()
    torch.save(lightning_wrap(state), tmp_path / "diffusion_pytorch_model.ckpt")
    argv = ["--release", str(tmp_path / "diffusion_pytorch_model.ckpt"), "--out", str(tmp_path / "native")]
    folder = release.main([*argv, "--num-heads", str(TINY_HEADS), "--dtype", "float32"])
    converted = ckpt.load_pretrained(folder, dtype=torch.float32)
    direct = load_tiny(tmp_path / "diffusion_pytorch_model.ckpt")
    assert converted.config == direct.config
    assert_state_equal(converted, state)
    _, extra = ckpt.read_pretrained_config(folder)
    assert extra["source"]["format"] == "astra-release"
    torch.testing.assert_close(forward(converted), forward(direct))


def save_diffusers_sharded(base: dict[str, torch.Tensor], folder: Path) -> None:
    """Saves original-named base weights as a 2-shard diffusers ``transformer/`` folder."""
    converted = original_to_diffusers(base)
    keys = sorted(converted)
    shards = {"diffusion_pytorch_model-00001-of-00002.safetensors": keys[::2]}
    shards["diffusion_pytorch_model-00002-of-00002.safetensors"] = keys[1::2]
    target = folder / "transformer"
    target.mkdir(parents=True)
    for name, shard_keys in shards.items():
        save_file({k: converted[k] for k in shard_keys}, str(target / name))
    weight_map = {k: name for name, shard_keys in shards.items() for k in shard_keys}
    index = {"metadata": {"total_size": 0}, "weight_map": weight_map}
    (target / "diffusion_pytorch_model.safetensors.index.json").write_text(json.dumps(index))


def test_release_with_base_from_sharded_diffusers_folder(tmp_path, caplog):
    full = tiny_release()
    wan = synthetic_state(release_table(**TINY), seed=1)  # Wan's pre-Astra values differ
    base = {k: v for k, v in wan.items() if addition_group(k) is None}
    save_diffusers_sharded(base, tmp_path / "wan")
    # The release holds the trained subset: additions (without cam_encoder / global_router) + self_attn.
    trained = {k: v for k, v in full.items() if addition_group(k) or ".self_attn." in k}
    trained = {k: v for k, v in trained.items() if "cam_encoder" not in k and "global_router" not in k}
    torch.save(trained, tmp_path / "release.ckpt")

    with caplog.at_level(logging.INFO, logger=LOGGER):
        model = release.load_astra_release(
            tmp_path / "release.ckpt", wan_path=tmp_path / "wan", dtype=torch.float32, num_heads=TINY_HEADS
        )

    state = model.state_dict()
    for key, value in state.items():
        if "cam_encoder" in key:
            assert torch.count_nonzero(value) == 0, key
        elif key in trained:
            assert torch.equal(value, trained[key]), f"{key}: the release must win over Wan"
        elif "global_router" not in key:
            assert torch.equal(value, base[key]), key
    router = torch.nn.Linear(TINY["unified"], TINY["experts"])
    with torch.random.fork_rng():
        torch.manual_seed(0)
        router.reset_parameters()
    assert torch.equal(state["global_router.weight"], router.weight.detach())
    text = caplog.text
    assert "blocks.{0-1}.cam_encoder.weight" in text and "zeros" in text and "global_router.weight" in text
    assert torch.isfinite(forward(model)).all()


def test_release_with_base_from_original_wan_file(tmp_path):
    full = tiny_release()
    save_file({k: v for k, v in full.items() if addition_group(k) is None}, str(tmp_path / "wan.safetensors"))
    torch.save({k: v for k, v in full.items() if addition_group(k)}, tmp_path / "release.ckpt")
    model = release.load_astra_release(
        tmp_path / "release.ckpt", wan_path=tmp_path / "wan.safetensors", dtype=torch.float32, num_heads=TINY_HEADS
    )
    assert_state_equal(model, full)


def test_release_without_base_and_without_wan_path_names_keys_and_fix(tmp_path):
    full = tiny_release()
    torch.save({k: v for k, v in full.items() if addition_group(k)}, tmp_path / "release.ckpt")
    with pytest.raises(StateDictMismatchError, match="wan_path") as info:
        release.load_astra_release(tmp_path / "release.ckpt", num_heads=TINY_HEADS)
    assert "blocks.0.ffn.0.weight" in info.value.missing and not info.value.mismatched
    assert "blocks.{0-1}.ffn.0.weight" in str(info.value) and "patch_embedding.weight" in str(info.value)


# ------------------------------------------------------------------------------------------------
# Corrupted or mismatched release files
# ------------------------------------------------------------------------------------------------


def load_tiny(path: Path, **kwargs) -> AstraTransformer:
    """load_astra_release with the tiny model's head count, float32."""
    return release.load_astra_release(path, dtype=torch.float32, num_heads=TINY_HEADS, **kwargs)


def test_missing_key_is_named(tmp_path):
    state = tiny_release()
    del state["blocks.1.ffn.2.bias"]
    torch.save(state, tmp_path / "c.ckpt")
    with pytest.raises(StateDictMismatchError, match=r"missing .*blocks\.1\.ffn\.2\.bias") as info:
        load_tiny(tmp_path / "c.ckpt")
    assert info.value.missing == ["blocks.1.ffn.2.bias"] and not info.value.unexpected


def test_missing_key_tolerated_when_not_strict(tmp_path, caplog):
    state = tiny_release()
    del state["blocks.1.ffn.2.bias"]
    torch.save(state, tmp_path / "c.ckpt")
    with caplog.at_level(logging.WARNING, logger=LOGGER):
        model = load_tiny(tmp_path / "c.ckpt", strict=False)
    assert "blocks.1.ffn.2.bias" in caplog.text
    assert torch.equal(model.state_dict()["blocks.0.ffn.2.bias"], state["blocks.0.ffn.2.bias"])


def test_unexpected_key_is_named(tmp_path):
    state = tiny_release()
    state["blocks.0.moe.gate.weight"] = torch.zeros(3)
    torch.save(state, tmp_path / "c.ckpt")
    with pytest.raises(StateDictMismatchError, match=r"unexpected .*blocks\.0\.moe\.gate\.weight") as info:
        load_tiny(tmp_path / "c.ckpt")
    assert info.value.unexpected == ["blocks.0.moe.gate.weight"]


def test_wrong_shape_is_named_with_both_shapes(tmp_path):
    state = tiny_release()
    state["blocks.1.projector.weight"] = torch.zeros(48, 47)
    torch.save(state, tmp_path / "c.ckpt")
    with pytest.raises(StateDictMismatchError) as info:
        load_tiny(tmp_path / "c.ckpt", strict=False)  # shapes are checked even when not strict
    assert "blocks.1.projector.weight (checkpoint [48, 47] vs model [48, 48])" in str(info.value)


def test_many_missing_keys_are_folded_and_counted():
    keys = [f"blocks.{i}.k{j}.weight" for i in range(30) for j in range(50)]
    text = ckpt.summarize_keys(keys)
    assert text.startswith("1500 key(s): blocks.{0-29}.k0.weight, blocks.{0-29}.k1.weight,")
    assert "blocks.{0-29}.k39.weight, ... and 10 more" in text


def test_truncated_checkpoint_gives_clear_error(tmp_path):
    torch.save(tiny_release(), tmp_path / "c.ckpt")
    data = (tmp_path / "c.ckpt").read_bytes()
    (tmp_path / "c.ckpt").write_bytes(data[: len(data) // 2])
    with pytest.raises(CheckpointError, match="its end is missing .*truncated download"):
        load_tiny(tmp_path / "c.ckpt")


def test_garbage_file_gives_clear_error(tmp_path):
    (tmp_path / "c.ckpt").write_bytes(bytes(range(256)) * 8)
    with pytest.raises(CheckpointError, match="neither a PyTorch checkpoint nor a safetensors"):
        load_tiny(tmp_path / "c.ckpt")


def test_truncated_safetensors_gives_clear_error(tmp_path):
    save_file(tiny_release(), str(tmp_path / "c.safetensors"))
    data = (tmp_path / "c.safetensors").read_bytes()
    (tmp_path / "c.safetensors").write_bytes(data[: len(data) - 100])
    with pytest.raises(CheckpointError, match="truncated"):
        load_tiny(tmp_path / "c.safetensors")


class _Opaque:
    """A class that weights-only unpickling must refuse."""


def test_pickled_object_is_refused_with_clear_message(tmp_path):
    torch.save({"blocks.0.x": torch.zeros(1), "hparams": _Opaque()}, tmp_path / "c.ckpt")
    with pytest.raises(CheckpointError, match="weights-only loading refuses") as info:
        load_tiny(tmp_path / "c.ckpt")
    assert "_Opaque" in str(info.value)


def test_plain_non_tensor_entries_are_named(tmp_path):
    state = tiny_release()
    state["note"] = "trained on sekai"
    torch.save(state, tmp_path / "c.ckpt")
    with pytest.raises(CheckpointError, match="not named tensors: 1 key.*note"):
        load_tiny(tmp_path / "c.ckpt")


def test_missing_file_and_plain_wan_file(tmp_path):
    with pytest.raises(CheckpointError, match="does not exist"):
        load_tiny(tmp_path / "absent.ckpt")
    base = {k: v for k, v in tiny_release().items() if addition_group(k) is None}
    torch.save(base, tmp_path / "wan.ckpt")
    with pytest.raises(CheckpointError, match="load_wan_transformer"):
        load_tiny(tmp_path / "wan.ckpt")


def test_wan_folder_without_weights_says_what_was_expected(tmp_path):
    (tmp_path / "wan").mkdir()
    (tmp_path / "wan" / "README.md").write_text("hi")
    torch.save({k: v for k, v in tiny_release().items() if addition_group(k)}, tmp_path / "release.ckpt")
    with pytest.raises(CheckpointError, match=r"diffusion_pytorch_model\.safetensors.*README\.md"):
        load_tiny(tmp_path / "release.ckpt", wan_path=tmp_path / "wan")


# ------------------------------------------------------------------------------------------------
# Plain Wan2.1
# ------------------------------------------------------------------------------------------------


def test_load_wan_transformer_keeps_astra_init(tmp_path):
    base = {k: v for k, v in tiny_release().items() if addition_group(k) is None}
    save_diffusers_sharded(base, tmp_path / "wan")
    model = release.load_wan_transformer(tmp_path / "wan", dtype=torch.float32, num_heads=TINY_HEADS, unified_dim=5)
    state = model.state_dict()
    for key, value in base.items():
        assert torch.equal(state[key], value), key
    assert torch.equal(state["blocks.1.projector.weight"], torch.eye(48))
    assert not state["blocks.1.projector.bias"].any() and not state["blocks.0.cam_encoder.weight"].any()
    assert model.config.num_experts == 3 and model.config.unified_dim == 5
    del base["blocks.0.norm3.bias"]
    save_file(base, str(tmp_path / "partial.safetensors"))
    with pytest.raises(StateDictMismatchError, match=r"blocks\.0\.norm3\.bias"):
        release.load_wan_transformer(tmp_path / "partial.safetensors", num_heads=TINY_HEADS)


# ------------------------------------------------------------------------------------------------
# Our format
# ------------------------------------------------------------------------------------------------


def random_debug_model(seed: int = 0) -> AstraTransformer:
    """The "debug" preset with every parameter random (so outputs depend on all weights)."""
    model = AstraTransformer(get_preset("debug"))
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for param in model.parameters():
            param.copy_(torch.randn(param.shape, generator=gen) * 0.05)
    return model.eval()


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_round_trip_is_bit_exact(tmp_path, dtype):
    model = random_debug_model().to(dtype)
    extra = {"vae": {"name": "wan2.1", "scale": [0.5, 1.5]}, "sampler": {"steps": 50, "shift": 5.0}}
    folder = ckpt.save_pretrained(model, tmp_path / "run" / "model", extra_config=extra)

    loaded = ckpt.load_pretrained(folder)
    assert loaded.config == model.config and not loaded.training
    assert_state_equal(loaded, model.state_dict())
    assert {p.dtype for p in loaded.parameters()} == {dtype}
    assert torch.equal(forward(loaded), forward(model))
    assert ckpt.read_pretrained_config(folder) == (model.config, extra)
    assert sorted(p.name for p in folder.iterdir()) == ["config.json", "model.safetensors"]


def test_int8_storage_is_smaller_and_within_half_a_step(tmp_path):
    model = random_debug_model()
    plain = ckpt.save_pretrained(model, tmp_path / "plain")
    small = ckpt.save_pretrained(model, tmp_path / "int8", int8=True)
    stored = load_file(str(small / "model.safetensors"))
    quantized = {key for key, value in stored.items() if value.dtype == torch.int8}
    assert quantized and {key + ckpt.INT8_SCALE_SUFFIX for key in quantized} <= set(stored)
    size = (small / "model.safetensors").stat().st_size / (plain / "model.safetensors").stat().st_size
    assert size < 0.6  # the debug preset's matrices hold 58 % of its values

    loaded = ckpt.load_pretrained(small)
    assert loaded.config == model.config and ckpt.read_pretrained_config(small) == ckpt.read_pretrained_config(plain)
    expected = model.state_dict()
    for key, value in loaded.state_dict().items():
        assert value.dtype == expected[key].dtype, key
        if key not in quantized:
            assert torch.equal(value, expected[key]), key
            continue
        rows = expected[key].reshape(value.shape[0], -1)
        error = (value.reshape(value.shape[0], -1) - rows).abs().amax(dim=1)
        assert torch.all(error <= rows.abs().amax(dim=1) / 254 * 1.001) and torch.any(error > 0), key
    torch.testing.assert_close(forward(loaded), forward(model), rtol=0, atol=0.05)


def test_int8_scale_without_its_tensor_is_named(tmp_path):
    folder = ckpt.save_pretrained(random_debug_model(), tmp_path / "m", int8=True)
    state = load_file(str(folder / "model.safetensors"))
    key = next(key for key, value in state.items() if value.dtype == torch.int8)
    state[key] = state[key].float()
    save_file(state, str(folder / "model.safetensors"))
    with pytest.raises(CheckpointError, match=re.escape(key + ckpt.INT8_SCALE_SUFFIX)):
        ckpt.load_pretrained(folder)


def test_load_pretrained_errors_name_the_problem(tmp_path):
    with pytest.raises(CheckpointError, match="config.json"):
        ckpt.load_pretrained(tmp_path / "nothing")
    folder = ckpt.save_pretrained(random_debug_model(), tmp_path / "m")
    (folder / "model.safetensors").unlink()
    with pytest.raises(CheckpointError, match="model.safetensors is missing"):
        ckpt.load_pretrained(folder)

    folder = ckpt.save_pretrained(random_debug_model(), tmp_path / "m2")
    meta = json.loads((folder / "config.json").read_text())
    meta["config"]["ffn_dim"] = 64
    (folder / "config.json").write_text(json.dumps(meta))
    with pytest.raises(StateDictMismatchError) as info:
        ckpt.load_pretrained(folder)
    assert "blocks.{0-1}.ffn.0.weight (checkpoint [96, 48] vs model [64, 48])" in str(info.value)

    meta["config"]["ffn_size"] = meta["config"].pop("ffn_dim")
    (folder / "config.json").write_text(json.dumps(meta))
    with pytest.raises(CheckpointError, match="invalid transformer config.*ffn_size"):
        ckpt.load_pretrained(folder)
    meta["format_version"] = ckpt.FORMAT_VERSION + 1
    (folder / "config.json").write_text(json.dumps(meta))
    with pytest.raises(CheckpointError, match="upgrade astra-gym"):
        ckpt.load_pretrained(folder)


def test_save_refuses_foreign_folder_and_bad_extra(tmp_path):
    (tmp_path / "data").mkdir()
    (tmp_path / "data" / "episodes.h5").write_bytes(b"x")
    with pytest.raises(CheckpointError, match="refusing to replace"):
        ckpt.save_pretrained(random_debug_model(), tmp_path / "data")
    assert (tmp_path / "data" / "episodes.h5").exists()
    with pytest.raises(CheckpointError, match="JSON"):
        ckpt.save_pretrained(random_debug_model(), tmp_path / "m", extra_config={"bad": object()})
    assert not (tmp_path / "m").exists()


def test_failed_write_keeps_previous_checkpoint(tmp_path, monkeypatch):
    old = random_debug_model(seed=0)
    folder = ckpt.save_pretrained(old, tmp_path / "m")

    def broken_save(tensors, filename, metadata=None):
        Path(filename).write_bytes(b"\0" * 64)  # half-written file, then the "disk" fails
        raise OSError("no space left on device (simulated)")

    monkeypatch.setattr(ckpt, "save_file", broken_save)
    with pytest.raises(OSError, match="simulated"):
        ckpt.save_pretrained(random_debug_model(seed=1), folder)

    assert_state_equal(ckpt.load_pretrained(folder), old.state_dict())
    assert sorted(p.name for p in tmp_path.iterdir()) == ["m"]


def test_failed_swap_restores_previous_checkpoint(tmp_path, monkeypatch):
    old = random_debug_model(seed=0)
    folder = ckpt.save_pretrained(old, tmp_path / "m")
    real_replace = os.replace

    def failing_replace(src, dst):
        if ".tmp-" in str(src):
            raise OSError("rename failed (simulated)")
        real_replace(src, dst)

    monkeypatch.setattr(os, "replace", failing_replace)
    with pytest.raises(OSError, match="simulated"):
        ckpt.save_pretrained(random_debug_model(seed=1), folder)
    monkeypatch.undo()

    assert_state_equal(ckpt.load_pretrained(folder), old.state_dict())
    assert sorted(p.name for p in tmp_path.iterdir()) == ["m"]


def test_killed_process_leaves_previous_checkpoint_and_no_loadable_partial(tmp_path):
    old = random_debug_model(seed=0)
    folder = ckpt.save_pretrained(old, tmp_path / "m")
    script = textwrap.dedent(
        f"""
        import os
        from astra_gym.world_model import checkpoints as ckpt
        from astra_gym.world_model.config import get_preset
        from astra_gym.world_model.transformer import AstraTransformer

        def killed_mid_write(tensors, filename, metadata=None):
            with open(filename, "wb") as handle:
                handle.write(b"\\0" * 4096)
            os._exit(9)  # the process dies: no cleanup, no finally blocks

        ckpt.save_file = killed_mid_write
        ckpt.save_pretrained(AstraTransformer(get_preset("debug")), {str(folder)!r})
        """
    )
    result = subprocess.run([sys.executable, "-c", script], cwd=REPO_ROOT, capture_output=True, timeout=120)
    assert result.returncode == 9, result.stderr.decode()[-2000:]

    assert_state_equal(ckpt.load_pretrained(folder), old.state_dict())
    leftovers = [p for p in tmp_path.iterdir() if p.name != "m"]
    assert len(leftovers) == 1 and leftovers[0].name.startswith(".m.tmp-")
    with pytest.raises(CheckpointError):
        ckpt.load_pretrained(leftovers[0])
    ckpt.save_pretrained(random_debug_model(seed=2), folder)  # the next save cleans up
    assert sorted(p.name for p in tmp_path.iterdir()) == ["m"]


# ------------------------------------------------------------------------------------------------
# Model cache
# ------------------------------------------------------------------------------------------------


def test_model_cache_loads_once_and_clears():
    model_cache.clear_model_cache()
    calls = []

    def loader():
        calls.append(1)
        return object()

    first = model_cache.get_cached_model(("m", "cpu"), loader)
    assert model_cache.get_cached_model(("m", "cpu"), loader) is first and len(calls) == 1
    assert model_cache.cached_model_keys() == (("m", "cpu"),)
    assert model_cache.clear_model_cache(("other",)) == 0
    assert model_cache.clear_model_cache() == 1 and model_cache.cached_model_keys() == ()
    assert model_cache.get_cached_model(("m", "cpu"), loader) is not first and len(calls) == 2

    def failing():
        raise RuntimeError("boom")

    with pytest.raises(RuntimeError):
        model_cache.get_cached_model("bad", failing)
    assert "bad" not in model_cache.cached_model_keys()
    with pytest.raises(ValueError):
        model_cache.get_cached_model(None, loader)
    model_cache.clear_model_cache()
