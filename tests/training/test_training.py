"""Training stack on the debug presets: loss goes down, exact resume, noise-as-mask, action dropout,
VAE / reward trainers, exported folders. Everything runs on a tiny synthetic latent cache built with
the real cache writer and a debug SmallVAE (32x32 frames -> 4x4x4 latents)."""

from __future__ import annotations

import csv
import dataclasses
import json
import os
import subprocess
import sys

import numpy as np
import pytest
import torch
from safetensors import safe_open

from astra_gym.data import latent_cache
from astra_gym.data.episodes import episode_filename, save_episode
from astra_gym.data.synthetic import drive_episode, explore_episode, manipulation_episode
from astra_gym.envs.frame_bank import FrameBank, save_frame_bank
from astra_gym.rollout.bundle import load_bundle, read_bundle
from astra_gym.training import bundle, train_reward, train_vae, train_world_model
from astra_gym.training.checkpointing import latest_checkpoint, step_generator
from astra_gym.training.data import DatasetSpec, JointLatentData, WindowDraw, map_tensors
from astra_gym.training.normalization import ActionNormalizer
from astra_gym.training.self_forcing import self_force
from astra_gym.training.steps import (
    StepConfig,
    detail_mask,
    draw_share,
    loss_mask,
    motion_mask,
    newest_history_latent,
    prepare_inputs,
    train_step,
)
from astra_gym.utils.atomic import atomic_folder
from astra_gym.utils.pixels import uint8_to_pixels
from astra_gym.world_model.action_encoders import flag_columns
from astra_gym.world_model.checkpoints import load_pretrained, read_pretrained_config
from astra_gym.world_model.conditioning import FramePackInputs, TokenGroup
from astra_gym.world_model.config import get_preset
from astra_gym.world_model.framepack import FramePackLayout
from astra_gym.world_model.reward_io import load_reward_model
from astra_gym.world_model.sampling import SamplerConfig, sample_chunk
from astra_gym.world_model.transformer import AstraTransformer
from astra_gym.world_model.vae import SmallVAE
from astra_gym.world_model.vae_io import load_vae, save_vae

SIZE = 32  # pixels -> 4x4 latents with the debug VAE (spatial factor 8)
LAYOUT = FramePackLayout(mode="exact", max_start_distance=20)


def _episodes(seed: int = 0):
    return {
        "drive": [drive_episode(6, 8, seed=seed + i, size=SIZE) for i in range(3)],
        "explore": [explore_episode(6, 8, seed=seed + 10 + i, size=SIZE) for i in range(3)],
        "manipulation": [manipulation_episode(14, seed=seed + 20 + i, size=SIZE) for i in range(3)],
    }


@pytest.fixture(scope="module")
def cache(tmp_path_factory):
    """A latent cache of 9 episodes (3 per scenario, 15 latents each) from a debug SmallVAE."""
    root = tmp_path_factory.mktemp("cache")
    with torch.random.fork_rng():
        torch.manual_seed(0)
        vae = SmallVAE.from_preset("debug").eval()
    pairs = [(f"{s}-{i}", ep) for s, eps in _episodes().items() for i, ep in enumerate(eps)]
    latent_cache.build_latent_cache(pairs, vae, root, latent_cache.CacheConfig(episodes_per_shard=4))
    return root


@pytest.fixture(scope="module")
def episode_dirs(tmp_path_factory):
    """Episode folders per scenario; the last drive episode terminates (for the reward trainer)."""
    root = tmp_path_factory.mktemp("episodes")
    for scenario, episodes in _episodes(seed=100).items():
        for i, ep in enumerate(episodes):
            if scenario == "drive" and i == 2:
                ep.terminated[-1], ep.truncated[-1] = True, False
            save_episode(ep, root / scenario / episode_filename(i))
    return root


def _specs(cache):
    return tuple(DatasetSpec(str(cache), s, w) for s, w in (("drive", 1.0), ("explore", 2.0), ("manipulation", 1.0)))


def _data(cache, max_history: int = 6) -> JointLatentData:
    return JointLatentData(_specs(cache), get_preset("debug"), 1, max_history, LAYOUT)


def _model(seed: int = 0) -> AstraTransformer:
    with torch.random.fork_rng():
        torch.manual_seed(seed)
        return AstraTransformer(get_preset("debug"))


# --------------------------------------------------------------------------------------- train_step


def test_a_few_steps_reduce_the_loss_on_a_fixed_batch(cache):
    data, model = _data(cache), _model()
    batch = data.batch(4, step_generator(0, "data", 0))
    optimizer = torch.optim.AdamW(model.parameters(), lr=3e-3)
    losses = []
    for _ in range(12):
        loss, logs = train_step(model, batch, StepConfig(), step_generator(0, "noise", 0))  # same draws every step
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        losses.append(float(logs["loss_flow"]))
    assert all(np.isfinite(losses)) and logs["moe_balance"] > 0
    assert losses[-1] < 0.5 * losses[0], losses


def _leaves(tree) -> list[torch.Tensor]:
    found: list[torch.Tensor] = []
    map_tensors(tree, lambda t: found.append(t) or t)
    return found


def test_data_parallel_ranks_draw_their_rows_of_the_global_draws(cache):
    """Two ranks with 3 rows each make exactly the draws one process with 6 rows makes (draw_share).

    Exact when the ranks' packed batches have the global batch's shapes, as here (history of one
    latent); otherwise every rank still draws its own rows of the step's one stream.
    """
    data, model = _data(cache, max_history=1), _model()
    cfg = StepConfig(history_noise_p=0.5, action_dropout=0.3, moe_balance_weight=0.0)
    whole = prepare_inputs(data.batch(6, step_generator(0, "data", 3)), cfg, step_generator(0, "noise", 3))
    for rank in range(2):
        rows = slice(3 * rank, 3 * rank + 3)
        part = data.batch(6, step_generator(0, "data", 3), rows)
        mine = draw_share(part, (rank, 2), lambda b: prepare_inputs(b, cfg, step_generator(0, "noise", 3)))
        expected = map_tensors(whole, lambda t, rows=rows: t[rows])
        torch.testing.assert_close(_leaves(mine), _leaves(expected), rtol=0, atol=0)
    loss, _ = train_step(model, data.batch(6, step_generator(0, "data", 3)), cfg, step_generator(0, "noise", 3))
    halves = [
        train_step(model, data.batch(6, step_generator(0, "data", 3), slice(3 * r, 3 * r + 3)), cfg,
                   step_generator(0, "noise", 3), share=(r, 2))[0]
        for r in range(2)
    ]  # fmt: skip
    torch.testing.assert_close(loss, sum(halves) / 2)  # DDP averages the ranks' gradients of these losses


def test_episode_start_rows_begin_at_the_reset_frame(cache):
    """episode_start_p = 1 draws only histories that start at an episode's first latent; 0 changes nothing."""
    uniform = _data(cache).draw(64, torch.Generator().manual_seed(0))
    assert any(int(_data(cache).datasets[d.dataset].windows[d.window][1]) + d.offset > 0 for d in uniform)
    plain = JointLatentData(_specs(cache), get_preset("debug"), 1, 6, LAYOUT, episode_start_p=0.0)
    assert plain.draw(64, torch.Generator().manual_seed(0)) == uniform  # no extra draw when off
    data = JointLatentData(_specs(cache), get_preset("debug"), 1, 6, LAYOUT, episode_start_p=1.0)
    draws = data.draw(64, torch.Generator().manual_seed(0))
    assert {d.offset for d in draws} == {0}
    assert {int(data.datasets[d.dataset].windows[d.window][1]) for d in draws} == {0}
    assert len({(d.dataset, d.window) for d in draws}) > 3  # every episode's first window, not one
    batch = data.load(draws[:4])
    assert batch.target.shape[0] == 4
    with pytest.raises(ValueError, match="episode_start_p"):
        JointLatentData(_specs(cache), get_preset("debug"), 1, 6, LAYOUT, episode_start_p=1.5)


def _long_history_batch(data: JointLatentData, rows: int = 6):
    """Every row with a 6-latent history, so the 4x, 2x and 1x groups all hold latents."""
    draws = [WindowDraw(dataset=i % 3, window=i, history=6, offset=0) for i in range(rows)]
    return data.load(draws)


def test_noise_as_mask_noises_only_the_chosen_scale(cache):
    data = _data(cache)
    batch = _long_history_batch(data)
    assert sorted(g.scale for g in batch.frame_pack.history) == [1, 2, 4]
    for scale in (1, 2, 4):
        cfg = StepConfig(history_noise_p=1.0, history_noise_scales=(scale,), action_dropout=0.0)
        inputs = prepare_inputs(batch, cfg, step_generator(0, "noise", scale))
        assert bool(inputs.history_noised.all())
        for before, after in zip(batch.frame_pack.history, inputs.frame_pack.history, strict=True):
            same = [torch.equal(getattr(before, f), getattr(after, f)) for f in ("frame_pos", "action_row", "valid")]
            assert all(same) and before.scale == after.scale
            rows_changed = (before.latents != after.latents).flatten(1).any(dim=1)
            assert bool(rows_changed.all()) if before.scale == scale else not bool(rows_changed.any())
        assert torch.equal(inputs.actions.values, batch.actions.values)  # dropout off: actions untouched
        torch.testing.assert_close(
            inputs.noisy - inputs.timestep.view(-1, 1, 1, 1, 1) / 1000 * inputs.target_velocity,
            batch.target,
            rtol=0,
            atol=1e-5,
        )  # x_s - s (eps - x0) = x0: targets untouched
    # sigma = 1: the noised group is pure noise, independent of the history latents it replaced.
    cfg = StepConfig(history_noise_p=1.0, history_noise_sigma=(1.0, 1.0), action_dropout=0.0)
    zeroed_groups = tuple(
        dataclasses.replace(g, latents=torch.zeros_like(g.latents)) for g in batch.frame_pack.history
    )
    zeroed = dataclasses.replace(batch, frame_pack=dataclasses.replace(batch.frame_pack, history=zeroed_groups))
    noised = [prepare_inputs(b, cfg, step_generator(1, "noise", 0)).frame_pack.history for b in (batch, zeroed)]
    one_x = [next(g.latents for g in groups if g.scale == 1) for groups in noised]
    assert torch.equal(one_x[0], one_x[1])
    off = prepare_inputs(batch, StepConfig(history_noise_p=0.0, action_dropout=0.0), step_generator(0, "noise", 0))
    assert off.frame_pack is batch.frame_pack and not bool(off.history_noised.any())


def _newest_positions(frame_pack: FramePackInputs) -> torch.Tensor:
    """[B] temporal position of each row's newest full-resolution history token."""
    ones = [g.frame_pos.masked_fill(~g.valid, float("-inf")) for g in frame_pack.history if g.scale == 1]
    return torch.cat(ones, dim=1).max(dim=1).values


def test_self_forcing_replaces_only_the_newest_history_latent_by_the_models_own_sample(cache):
    data = JointLatentData(_specs(cache), get_preset("debug"), 1, 6, LAYOUT, prefix=True)
    draws = [WindowDraw(dataset=i % 3, window=i, history=1 + i % 6, offset=0) for i in range(12)]
    batch = data.load(draws)
    assert batch.prefix is not None and batch.prefix_actions is not None
    plain = _data(cache).load(draws)  # the main pack does not depend on the prefix
    torch.testing.assert_close(_leaves(batch.frame_pack), _leaves(plain.frame_pack), rtol=0, atol=0)
    eligible = batch.history_length >= 2
    # the prefix predicts exactly the newest history latent: same position, same action row
    torch.testing.assert_close(
        batch.prefix.target_frame_pos[eligible, 0], _newest_positions(batch.frame_pack)[eligible]
    )
    target_row = batch.prefix_actions.values[torch.arange(12), batch.prefix.target_action_row[:, 0]]
    flags = flag_columns(get_preset("debug"), batch.actions.modality)
    for i in torch.nonzero(eligible).flatten().tolist():
        history_rows = [g.action_row[i][g.valid[i]] for g in batch.frame_pack.history if g.scale == 1]
        newest = batch.actions.values[i, int(torch.cat(history_rows)[-1])].clone()
        assert newest[flags[i]] == 1 and target_row[i, flags[i]] == 0  # past / to-generate flag
        newest[flags[i]] = 0
        torch.testing.assert_close(target_row[i], newest)
    model, sampler = _model().eval(), SamplerConfig(num_steps=2, shift=1.0, guidance_scale=1.0)
    noise = torch.randn(batch.target.shape, generator=torch.Generator().manual_seed(1))
    uniform = torch.tensor([0.2, 0.9] * 6)  # p = 0.5 picks the even rows
    forced, rows = self_force(model, batch, 0.5, sampler, (uniform, noise))
    assert rows.tolist() == [bool(e) and i % 2 == 0 for i, e in enumerate(eligible.tolist())]
    assert 0 < int(rows.sum()) < int(eligible.sum())
    own = sample_chunk(
        model, noise, context=None, frame_pack=batch.prefix, actions=batch.prefix_actions, config=sampler
    )
    before, _ = newest_history_latent(batch.frame_pack)
    after, _ = newest_history_latent(forced.frame_pack)
    torch.testing.assert_close(after[rows], own[rows, :, 0], rtol=1e-4, atol=1e-5)
    assert torch.equal(after[~rows], before[~rows])
    assert not torch.allclose(after[rows], before[rows])
    changed = 0
    for old, new in zip(batch.frame_pack.history, forced.frame_pack.history, strict=True):
        for f in ("frame_pos", "action_row", "valid"):
            assert torch.equal(getattr(old, f), getattr(new, f))
        token = (old.latents != new.latents).transpose(1, 2).flatten(2).any(dim=2)  # [B, T] tokens changed
        assert not bool(token[~rows].any()) and bool(token.sum(dim=1).le(1).all())  # one token per row at most
        changed += int(token.sum())
    assert changed == int(rows.sum())
    assert torch.equal(forced.target, batch.target) and forced.actions is batch.actions
    unchanged, none = self_force(model, batch, 0.5, sampler, (torch.ones(12), noise))
    assert unchanged is batch and not bool(none.any())
    with pytest.raises(ValueError, match="prefix=True"):
        self_force(model, plain, 0.5, sampler, (uniform, noise))
    with pytest.raises(ValueError, match="sampler="):
        train_step(model, batch, StepConfig(self_forcing_p=0.5), step_generator(0, "noise", 0))
    with pytest.raises(ValueError, match="chunk_latents=1"):
        JointLatentData(_specs(cache), get_preset("debug"), 2, 6, LAYOUT, prefix=True)


def test_self_forcing_trains_and_logs_its_share_of_rows(cache, tmp_path):
    cfg = StepConfig(self_forcing_p=1.0)
    result = train_world_model.train(_run_config(cache, tmp_path, total_steps=3, checkpoint_every=3, step=cfg))
    rows = [r for r in result.rows if "train/loss" in r]
    assert result.step == 3 and rows and all(np.isfinite(r["train/loss"]) for r in rows)
    shares = [r["train/self_forced"] for r in rows]  # every row with >= 2 history latents
    assert all(0 <= v <= 1 for v in shares) and sum(shares) > 0
    with pytest.raises(ValueError, match="distill-from"):
        _run_config(cache, tmp_path / "d", step=cfg, distill_from=str(tmp_path))


def test_motion_mask_weights_the_cells_that_change_from_the_newest_history_latent(cache):
    latents = torch.randn(2, 3, 3, 4, 4)  # [B, C, T, h, w]; row 0's newest valid token is t = 1 (position 7)
    group = TokenGroup(
        scale=1,
        latents=latents,
        frame_pos=torch.tensor([[0.0, 7.0, 9.0], [0.0, 1.0, 2.0]]),
        action_row=torch.zeros(2, 3, dtype=torch.long),
        valid=torch.tensor([[True, True, False], [False, False, False]]),
    )
    pack = FramePackInputs((group,), torch.full((2, 1), 10.0), torch.zeros(2, 1, dtype=torch.long))
    newest, present = newest_history_latent(pack)
    assert torch.equal(newest[0], latents[0, :, 1]) and present.tolist() == [True, False]
    target = latents[:, :, 1:2].clone()  # [B, C, F=1, h, w]: row 0 repeats its newest latent ...
    target[0, :, 0, 2, 3] += 5.0  # ... but for one cell that moves
    batch = _long_history_batch(_data(cache), rows=2)
    batch = dataclasses.replace(batch, target=target, frame_pack=pack)
    mask = motion_mask(batch, weight=4.0, clip=8.0)  # [B, 1, F, h, w]
    assert mask.shape == (2, 1, 1, 4, 4)
    assert float(mask[0, 0, 0, 2, 3]) == pytest.approx(1 + 4.0 * 8.0)  # change / mean change = 16, capped at 8
    assert bool((mask[0].flatten()[:-5] == 1).all()) and bool((mask[1] == 1).all())  # static cells; no history
    assert torch.equal(motion_mask(batch, weight=0.0, clip=8.0), torch.ones_like(mask))


def test_motion_weight_changes_the_loss_but_not_the_logged_mse(cache):
    data = _data(cache)
    batch = _long_history_batch(data)
    model = _model()
    plain, plain_logs = train_step(model, batch, StepConfig(), step_generator(0, "noise", 0))
    moving, moving_logs = train_step(model, batch, StepConfig(motion_weight=4.0), step_generator(0, "noise", 0))
    assert moving.item() != pytest.approx(plain.item(), rel=1e-4) and moving.requires_grad
    torch.testing.assert_close(moving_logs["mse"], plain_logs["mse"])  # the same draws, logged unweighted
    with pytest.raises(ValueError, match="motion_weight"):
        StepConfig(motion_weight=-1.0)


def test_mean_latents_average_every_latent_of_each_dataset(cache):
    data = _data(cache)
    means = data.mean_latents()
    assert len(means) == 3
    for dataset, mean in zip(data.datasets, means, strict=True):
        every = torch.cat([dataset.load_episode(e)["latents"].float() for e in range(len(dataset.episodes))], dim=1)
        torch.testing.assert_close(mean, every.mean(dim=1))
    first = data.datasets[0].mean_latent(max_episodes=1)
    torch.testing.assert_close(first, data.datasets[0].load_episode(0)["latents"].float().mean(dim=1))


def test_datasets_that_share_a_log_label_are_refused_with_the_fix(cache):
    twins = (DatasetSpec(str(cache), "drive"), DatasetSpec(str(cache), "drive", 2.0))
    with pytest.raises(ValueError, match="share the log label 'drive'.*name="):
        JointLatentData(twins, get_preset("debug"), 1, 6, LAYOUT)
    named = (twins[0], dataclasses.replace(twins[1], name="probe"))
    assert [s.label for s in JointLatentData(named, get_preset("debug"), 1, 6, LAYOUT).specs] == ["drive", "probe"]


def test_detail_mask_weights_the_cells_that_differ_from_their_datasets_mean(cache):
    batch = _long_history_batch(_data(cache), rows=2)
    reference = tuple(torch.randn(batch.target.shape[1], *batch.target.shape[3:]) for _ in range(3))
    target = torch.stack([reference[i] for i in batch.dataset.tolist()])[:, :, None].clone()  # each row: its mean
    target[0, :, 0, 1, 2] += 3.0  # one cell of row 0 stands out
    target[1] += 0.5  # row 1 differs everywhere by the same amount
    batch = dataclasses.replace(batch, target=target)
    mask = detail_mask(batch, reference, weight=2.0, clip=8.0)  # [B, 1, F, h, w]
    cells = mask[0].numel()
    assert float(mask[0, 0, 0, 1, 2]) == pytest.approx(1 + 2.0 * 8.0)  # difference / mean = cells, capped at 8
    assert bool((mask[0].flatten().sort().values[:-1] == 1).all()) and cells > 8
    torch.testing.assert_close(mask[1], torch.full_like(mask[1], 3.0))  # 1 + 2 * (d / mean d = 1)
    both = loss_mask(batch, StepConfig(motion_weight=4.0, detail_weight=2.0), reference)
    torch.testing.assert_close(both, motion_mask(batch, 4.0, 8.0) + mask - 1)
    assert loss_mask(batch, StepConfig(), None) is None
    with pytest.raises(ValueError, match="mean latents"):
        loss_mask(batch, StepConfig(detail_weight=2.0), None)
    with pytest.raises(ValueError, match="do not match"):
        detail_mask(batch, tuple(r[:, :2] for r in reference), weight=2.0, clip=8.0)
    with pytest.raises(ValueError, match="detail_weight"):
        StepConfig(detail_weight=-1.0)


def test_detail_weight_trains_and_changes_the_loss(cache, tmp_path):
    data = _data(cache)
    batch = _long_history_batch(data)
    model = _model()
    plain, _ = train_step(model, batch, StepConfig(), step_generator(0, "noise", 0))
    cfg = StepConfig(detail_weight=4.0)
    weighted, _ = train_step(model, batch, cfg, step_generator(0, "noise", 0), reference=data.mean_latents())
    assert weighted.item() != pytest.approx(plain.item(), rel=1e-4)
    result = train_world_model.train(_run_config(cache, tmp_path, total_steps=2, checkpoint_every=2, step=cfg))
    assert result.step == 2 and all(np.isfinite(r["train/loss"]) for r in result.rows if "train/loss" in r)


def test_action_dropout_nulls_whole_rows_and_nothing_else(cache):
    data = _data(cache)
    batch = data.load([WindowDraw(dataset=i % 3, window=i, history=1 + i % 6, offset=0) for i in range(16)])
    cfg = StepConfig(history_noise_p=0.0, action_dropout=0.5)
    inputs = prepare_inputs(batch, cfg, step_generator(3, "noise", 0))
    dropped = inputs.actions_dropped
    assert 0 < int(dropped.sum()) < 16
    values, original = inputs.actions.values, batch.actions.values
    assert bool((values[dropped] == 0).all())  # the null action: every column zero, flag included
    assert torch.equal(values[~dropped], original[~dropped])
    assert bool((original[dropped].abs().sum(dim=(1, 2)) > 0).all())  # those rows did carry actions
    assert torch.equal(inputs.actions.modality, batch.actions.modality)
    assert inputs.frame_pack is batch.frame_pack


def test_batches_mix_modalities_with_per_row_flags(cache):
    data = _data(cache)
    batch = data.batch(32, step_generator(0, "data", 5))
    assert set(batch.actions.modality.tolist()) == {1, 2, 3}  # vehicle, robot, keyboard slots
    assert batch.actions.values.shape[-1] == 17  # padded to the keyboard width (16 + flag)
    columns = flag_columns(get_preset("debug"), batch.actions.modality)  # [B]
    flags = batch.actions.values[torch.arange(32)[:, None], :, columns[:, None]][:, 0]  # [B, A]
    targets = batch.frame_pack.target_action_row[:, 0]
    assert bool((flags[torch.arange(32), targets] == 0).all())  # target rows: flag 0
    assert bool((flags[:, 0] == 1).all())  # the start slot: flag 1
    again = data.batch(32, step_generator(0, "data", 5))
    assert torch.equal(again.target, batch.target) and torch.equal(again.actions.values, batch.actions.values)


def test_action_normalizer_keeps_the_null_row_and_pools_stats():
    rows = torch.tensor([[0.5, 1.0, 0.0], [-0.5, 1.0, 0.0], [1.5, 1.0, 0.0]])
    norm = ActionNormalizer.from_rows("x", rows)
    assert torch.equal(norm.apply(torch.zeros(2, 3)), torch.zeros(2, 3))
    assert norm.apply(rows)[:, 1].tolist() == [1.0, 1.0, 1.0] and norm.scale[2] == 1.0  # constant and empty columns
    torch.testing.assert_close(norm.invert(norm.apply(rows)), rows)
    halves = [
        {"count": n, "mean": r.mean(0).tolist(), "std": r.std(0, unbiased=False).tolist()}
        for n, r in ((1, rows[:1]), (2, rows[1:]))
    ]
    np.testing.assert_allclose(ActionNormalizer.from_stats("x", halves).scale, norm.scale, rtol=1e-12)


# --------------------------------------------------------------------------------------- world-model runs


def _run_config(cache, run_dir, **changes):
    base = train_world_model.PRESETS["debug"]
    defaults = dict(total_steps=8, checkpoint_every=4, warmup_steps=2, progress=False)
    defaults["datasets"] = _specs(cache)
    return dataclasses.replace(base, run_dir=str(run_dir), **{**defaults, **changes})


@pytest.fixture(scope="module")
def straight_run(cache, tmp_path_factory):
    run_dir = tmp_path_factory.mktemp("straight")
    return train_world_model.train(_run_config(cache, run_dir)), run_dir


def _losses(rows, first: int):
    return [r["train/loss"] for r in rows if "train/loss" in r and r["step"] > first]


def test_resume_reproduces_the_uninterrupted_run_bit_for_bit(cache, straight_run, tmp_path):
    straight, straight_dir = straight_run
    first = train_world_model.train(_run_config(cache, tmp_path, stop_after=4))
    assert first.step == 4 and first.final is None and latest_checkpoint(tmp_path).name == "step_00000004"
    torch.manual_seed(12345)  # a "fresh process": the global RNG state is different, every object is rebuilt
    resumed = train_world_model.train(_run_config(cache, tmp_path))
    assert resumed.step == 8 and [r["step"] for r in resumed.rows] == [5, 6, 7, 8]
    assert _losses(resumed.rows, 4) == _losses(straight.rows, 4)  # exact float equality, step by step
    for name, value in load_pretrained(straight.final).state_dict().items():
        assert torch.equal(value, load_pretrained(resumed.final).state_dict()[name]), name
    straight_csv = [line.split(",")[:12] for line in (straight_dir / "metrics.csv").read_text().splitlines()]
    resumed_csv = [line.split(",")[:12] for line in (tmp_path / "metrics.csv").read_text().splitlines()]
    assert straight_csv == resumed_csv  # the CSV of the resumed run holds each step once, identical values


def test_exported_world_model_loads_with_everything_an_env_needs(cache, straight_run):
    result, run_dir = straight_run
    model = load_pretrained(result.final)
    config, extra = read_pretrained_config(result.final)
    assert config == get_preset("debug") and isinstance(model, AstraTransformer)
    index = latent_cache.read_index(cache)
    assert extra["vae"]["identity"]["hash"] == index["vae"]["hash"]
    assert {s: (e["modality"], e["feature"]) for s, e in extra["scenarios"].items()} == {
        "drive": ("vehicle", "vehicle_command"),
        "explore": ("keyboard", "keyboard"),
        "manipulation": ("robot", "robot_command"),
    }
    drive_stats = index["features"]["vehicle_command"]["stats"]
    expected = ActionNormalizer.from_stats("vehicle_command", drive_stats)
    assert extra["scenarios"]["drive"]["action_normalization"]["scale"] == list(expected.scale)
    assert extra["chunk_latents"] == 1 and extra["layout"]["mode"] == "exact" and extra["training"]["weights"] == "ema"
    assert extra["sampler"]["num_denoise_steps"] >= 1 and extra["training"]["step"] == 8
    assert load_pretrained(run_dir / "checkpoints" / "step_00000008" / "model") is not None


def test_history_1x_reaches_the_exported_layout_and_the_rollout(cache, tmp_path):
    result = train_world_model.train(_run_config(cache, tmp_path, total_steps=2, checkpoint_every=2, history_1x=2))
    _, extra = read_pretrained_config(result.final)
    assert extra["layout"]["num_1x"] == 2
    save_vae(SmallVAE.from_preset("debug").eval(), tmp_path / "vae", preset="debug")
    layout = load_bundle(result.final, "drive", vae=tmp_path / "vae").rollout.layout
    assert layout.num_1x == 2 and layout.window == 16 + 2 + 2  # num_4x + num_2x + num_1x
    with pytest.raises(ValueError, match="--history-1x=0 must be >= 1"):
        _run_config(cache, tmp_path, history_1x=0)
    for given, kept in ((None, 2), (1, 1)):  # a fine-tune keeps its start model's layout unless told otherwise
        start = str(result.final)
        tuned = _run_config(cache, tmp_path / f"ft{given}", total_steps=1, init_from=start, history_1x=given)
        assert read_pretrained_config(train_world_model.train(tuned).final)[1]["layout"]["num_1x"] == kept


@pytest.mark.parametrize(
    ("changes", "key"), [({"num_experts": 0}, "cam_encoder"), ({"action_injection": "cross_attn"}, "action_attn")]
)
def test_ablation_architectures_train_and_export(cache, tmp_path, changes, key):
    result = train_world_model.train(_run_config(cache, tmp_path, total_steps=2, checkpoint_every=2, **changes))
    config, _ = read_pretrained_config(result.final)
    assert config == get_preset("debug").replace(**changes)
    model = load_pretrained(result.final)
    trained = {k: v for k, v in model.state_dict().items() if key in k and k.endswith("weight")}
    assert trained and any(v.abs().sum() > 0 for v in trained.values())  # zero-initialised, then trained
    with pytest.raises(ValueError, match="cannot apply to --init-from"):
        _run_config(cache, tmp_path, init_from=str(result.final), **changes)


def test_fine_tuning_keeps_the_action_normalisation_of_the_init_model(cache, straight_run, tmp_path):
    """Data with other action statistics (e.g. the agent's own, in the Dyna loop) must not rescale the actions."""
    straight, _ = straight_run
    episodes = [drive_episode(6, 8, seed=300 + i, size=SIZE) for i in range(2)]
    for ep in episodes:
        ep.actions[:, 1] = 1.0  # full gas throughout: another gas RMS than the init model's data
    other = tmp_path / "other-cache"
    with torch.random.fork_rng():
        torch.manual_seed(0)
        vae = SmallVAE.from_preset("debug").eval()
    latent_cache.build_latent_cache([(f"gas-{i}", ep) for i, ep in enumerate(episodes)], vae, other)
    specs = (DatasetSpec(str(other), "drive", 1.0),)
    fitted = JointLatentData(specs, get_preset("debug"), 1, 6, LAYOUT).normalizers[0]
    _, before = read_pretrained_config(straight.final)
    kept = before["scenarios"]["drive"]["action_normalization"]["scale"]
    assert fitted.scale[1] != pytest.approx(kept[1])  # the new data alone would change the gas scale
    run = _run_config(cache, tmp_path / "ft", datasets=specs, init_from=str(straight.final), total_steps=2)
    _, after = read_pretrained_config(train_world_model.train(run).final)
    assert after["scenarios"]["drive"]["action_normalization"]["scale"] == kept


def test_checkpoint_writes_are_atomic(tmp_path):
    target = tmp_path / "ckpt"
    with atomic_folder(target) as tmp:
        (tmp / "a.txt").write_text("old")
    with pytest.raises(RuntimeError), atomic_folder(target) as tmp:
        (tmp / "a.txt").write_text("half-written")
        raise RuntimeError("killed")
    assert (target / "a.txt").read_text() == "old" and sorted(p.name for p in tmp_path.iterdir()) == ["ckpt"]


def test_cli_every_flag_has_help_and_presets_resolve(cache, capsys):
    from astra_gym.utils.cli_args import preset_parser

    parser = preset_parser(train_world_model.TrainConfig, train_world_model.PRESETS, "small-cpu", None)
    assert all(action.help for action in parser._actions)
    with pytest.raises(SystemExit) as printed_and_exited:
        train_world_model.main(
            [
                "--preset",
                "debug",
                "--dataset",
                f"scenario=drive,path={cache},weight=2",
                "--history-noise-scales",
                "1",
                "2",
                "--ema-decay",
                "none",
                "--print-config",
            ]
        )
    assert printed_and_exited.value.code == 0
    printed = json.loads(capsys.readouterr().out)
    assert printed["datasets"][0]["weight"] == 2.0 and printed["step"]["history_noise_scales"] == [1, 2]
    assert printed["ema_decay"] is None and printed["model_preset"] == "debug"
    with pytest.raises(ValueError, match="scenario"):
        DatasetSpec.parse(f"path={cache}")


# --------------------------------------------------------------------------------------- VAE and reward trainers


def test_vae_trainer_writes_a_loadable_normalised_vae(episode_dirs, tmp_path):
    cfg = dataclasses.replace(
        train_vae.PRESETS["debug"],
        episodes=(str(episode_dirs / "drive"), str(episode_dirs / "explore")),
        out=str(tmp_path),
        total_steps=4,
        progress=False,
        holdout_fraction=0.34,
    )
    folder = train_vae.train_vae(cfg)
    vae = load_vae(folder)
    meta = json.loads((folder / "config.json").read_text())
    assert np.isfinite(meta["metrics"]["holdout_psnr_db"])
    assert not torch.equal(vae.latents_std, torch.ones(4)) and float(vae.latent_count) == 16 * 4 * 4  # frames x h x w
    # The cache builder reads the same weights and records the same VAE identity.
    cache_vae = latent_cache.load_vae("debug", str(folder / "vae.safetensors"))
    assert latent_cache.vae_identity(cache_vae)["hash"] == meta["identity"]["hash"]
    assert "eval/psnr" in (tmp_path / "metrics.csv").read_text().splitlines()[0]


def test_vae_trainer_fine_tunes_a_saved_vae_of_the_same_preset(episode_dirs, tmp_path):
    base = dataclasses.replace(
        train_vae.PRESETS["debug"], episodes=(str(episode_dirs / "drive"),), total_steps=2, progress=False
    )
    first = load_vae(train_vae.train_vae(dataclasses.replace(base, out=str(tmp_path / "a"))))
    # lr 0: the fine-tune keeps the weights it started from, which a fresh init with another seed does not
    again = dataclasses.replace(base, out=str(tmp_path / "b"), lr=0.0, seed=1)
    tuned = load_vae(train_vae.train_vae(dataclasses.replace(again, init_from=str(tmp_path / "a" / "final"))))
    fresh = load_vae(train_vae.train_vae(dataclasses.replace(again, out=str(tmp_path / "c"))))
    key = "encoder.0.weight"
    assert torch.equal(tuned.state_dict()[key], first.state_dict()[key])
    assert not torch.equal(fresh.state_dict()[key], first.state_dict()[key])
    with pytest.raises(ValueError, match="pass the preset it was trained with"):
        train_vae.train_vae(dataclasses.replace(again, vae_preset="small", init_from=str(tmp_path / "a" / "final")))


def test_reward_trainer_writes_a_loadable_model_with_metrics(episode_dirs, tmp_path):
    cfg = dataclasses.replace(
        train_reward.PRESETS["debug"],
        episodes=(str(episode_dirs / "drive"),),
        out=str(tmp_path),
        total_steps=4,
        progress=False,
        holdout_fraction=0.34,
    )
    model, meta = load_reward_model(train_reward.train_reward(cfg))
    assert meta["scenario"] == "drive" and meta["feature"] == "vehicle_command"
    assert {"eval/reward_mae", "eval/termination_accuracy"} <= set(meta["metrics"])
    reward, logit = model(torch.zeros(2, 1, 3, SIZE, SIZE), torch.zeros(2, 7))
    assert reward.shape == logit.shape == (2,)
    pool = train_reward.TransitionPool(
        _episodes()["drive"], "vehicle_command", ActionNormalizer.identity("vehicle_command", 7), num_frames=3
    )
    frames, rows, rewards, *_ = pool.gather(torch.tensor([0, 5]))
    episode = _episodes()["drive"][0]
    # Step t sees the 3 newest frames after it, frames[t-1 .. t+1]; at t = 0 frame 0 is repeated.
    assert torch.equal(frames[0], train_reward.uint8_to_pixels(episode.frames[[0, 0, 1]]))
    assert torch.equal(frames[1], train_reward.uint8_to_pixels(episode.frames[[4, 5, 6]]))
    assert rows.shape == (2, 7) and rewards[1] == float(episode.rewards[5])
    # Class balancing: the one terminal step of 42 weighs as much as the 41 others (balance 1), or 1 (balance 0).
    episodes = _episodes()["drive"]
    episodes[0].terminated[-1] = True
    pool = train_reward.TransitionPool(episodes, "vehicle_command", ActionNormalizer.identity("vehicle_command", 7), 1)
    assert (
        len(pool) == 42 and train_reward._pos_weight(pool, 1.0) == 41.0 and train_reward._pos_weight(pool, 0.0) == 1.0
    )


# --------------------------------------------------------------------------------------- the whole pipeline


def _bank(scenario: str, sim_config: dict) -> FrameBank:
    """Two hand-made start contexts of ``scenario``, as if recorded with ``sim_config``."""
    frames = np.random.default_rng(0).integers(0, 255, (2, 2, 64, 64, 3), dtype=np.uint8)
    meta = {"scenario": scenario, "sim_config": sim_config}
    return FrameBank(frames, np.array([5, 6]), np.zeros((2, 0), np.float32), np.zeros(2, np.int64), meta)


def _check_recording_settings(world_model, vae_folder, tmp_path) -> None:
    """``--sim-config`` is recorded resolved for every scenario, ``--frame-bank`` is carried and started from,
    and a bank recorded with other settings is refused (at bundling, and by the env)."""
    import gymnasium as gym

    from astra_gym.envs.core import model_frame_bank, model_sim_config

    skip3 = save_frame_bank(_bank("manipulation", {"frame_skip": 3}), tmp_path / "skip3.npz")
    stock = save_frame_bank(_bank("manipulation", {"frame_skip": 1}), tmp_path / "stock.npz")
    out = bundle.make_bundle("rec", world_model, vae_folder, [], tmp_path / "rec", sim_config={"frame_skip": 3},
                             frame_banks=[skip3])  # fmt: skip
    assert {s: model_sim_config(out, s) for s in ("drive", "explore")} == {"drive": {"frame_skip": 3}} | {
        "explore": {"frame_skip": 3}
    }
    assert model_frame_bank(out, "manipulation") == out / "frame_bank-manipulation.npz"
    assert model_frame_bank(out, "drive") is None and model_sim_config("debug", "drive") == {}
    assert "frame_skip" in (out / "MODEL_CARD.md").read_text()
    env = gym.make("Astra-Manipulation-v0", checkpoint=str(out), device="cpu")
    _, info = env.reset(seed=0)
    assert env.unwrapped.core.bank.sim_config == {"frame_skip": 3} and info["sim_seed"] in (5, 6)
    with pytest.raises(ValueError, match="frame_bank --scenario manipulation --checkpoint"):
        gym.make("Astra-Manipulation-v0", checkpoint=str(out), device="cpu", frame_bank=str(stock))
    with pytest.raises(ValueError, match="frame_bank --scenario manipulation --checkpoint"):
        bundle.make_bundle("x", world_model, vae_folder, [], tmp_path / "x", sim_config={"frame_skip": 3},
                           frame_banks=[stock])  # fmt: skip
    with pytest.raises(ValueError, match="no field"):  # Drive's and Explore's configs have no camera
        bundle.make_bundle("x", world_model, vae_folder, [], tmp_path / "x", sim_config={"camera": "front"})
    assert bundle.sim_setting("camera=front") == ("camera", "front") and bundle.sim_setting("frame_skip=4")[1] == 4


def _check_int8_bundle(small, half) -> None:
    """int8 storage: the world model's matrices in int8 with scales, the rest (reward models too) as in float16."""
    with safe_open(small / "world_model" / "model.safetensors", "pt") as f:
        dtypes = {k: f.get_tensor(k).dtype for k in f.keys()}
    assert torch.int8 in dtypes.values() and set(dtypes.values()) == {torch.int8, torch.float16}
    assert read_pretrained_config(small / "world_model") == read_pretrained_config(half / "world_model")
    reward = "reward/drive/reward.safetensors"
    assert (small / reward).read_bytes() == (half / reward).read_bytes()
    half_state = load_pretrained(half / "world_model").state_dict()
    for key, value in load_pretrained(small / "world_model").state_dict().items():
        assert value.dtype == torch.float16, key
        bound = half_state[key].float().abs().max() / 127  # a whole step of the coarsest row
        assert (value.float() - half_state[key].float()).abs().max() <= bound, key


def _check_float16_bundle(half, world_model, reward_folder) -> None:
    """float16 storage: half the bytes, the same config and metadata, weights within fp16 rounding."""
    with safe_open(half / "world_model" / "model.safetensors", "pt") as f:
        assert {f.get_tensor(k).dtype for k in f.keys()} == {torch.float16}
    assert read_pretrained_config(half / "world_model") == read_pretrained_config(world_model)
    full_state = load_pretrained(world_model).state_dict()
    for key, value in load_pretrained(half / "world_model", dtype=torch.float32).state_dict().items():
        torch.testing.assert_close(value, full_state[key], rtol=1e-3, atol=1e-4)
    with safe_open(half / "reward" / "drive" / "reward.safetensors", "pt") as f:
        assert {f.get_tensor(k).dtype for k in f.keys() if f.get_tensor(k).is_floating_point()} == {torch.float16}
    half_reward, half_meta = load_reward_model(half / "reward" / "drive")
    full_reward, full_meta = load_reward_model(reward_folder)
    assert half_meta == full_meta
    for (key, value), full in zip(half_reward.state_dict().items(), full_reward.state_dict().values(), strict=True):
        assert value.dtype == full.dtype, key  # stored in float16, loaded back at the model's dtype
        torch.testing.assert_close(value, full, rtol=1e-3, atol=1e-4)


def _check_reward_on_imagined_pieces(reward_cfg, bundle_folder, tmp_path) -> None:
    """The bundle's own rollouts of the recorded actions as reward training data, scored apart."""
    imagined_cfg = dataclasses.replace(
        reward_cfg, out=str(tmp_path / "reward-imagined"), holdout_fraction=0.3, imagined=str(bundle_folder),
        imagined_horizon=2, imagined_starts=3, imagined_context=1, imagined_cache=str(tmp_path / "pieces"),
    )  # fmt: skip
    metrics = load_reward_model(train_reward.train_reward(imagined_cfg))[1]["metrics"]
    assert metrics["imagined_train_transitions"] == 2 * 3 * 2  # 2 training episodes, 3 pieces of 2 steps each
    assert metrics["train_transitions"] == 2 * 14 + 12
    assert {"eval/reward_mae", "eval_imagined/reward_mae", "eval_imagined/reward_mae_mean_baseline"} <= set(metrics)
    # The kept pieces are read back by the next run (same numbers), and refused for other settings.
    assert len(list((tmp_path / "pieces" / "train").glob("*.hdf5"))) == 6
    again = dataclasses.replace(imagined_cfg, out=str(tmp_path / "reward-imagined-2"))
    assert load_reward_model(train_reward.train_reward(again))[1]["metrics"][
        "eval_imagined/reward_mae"
    ] == pytest.approx(metrics["eval_imagined/reward_mae"])
    with pytest.raises(ValueError, match=r"other \['horizon'\]; give a new folder"):
        train_reward.train_reward(dataclasses.replace(again, imagined_horizon=1))
    with pytest.raises(ValueError, match=r"other \['task'\]"):  # the kept pieces carry the other task's rewards
        train_reward.train_reward(dataclasses.replace(again, task="tiles"))


def test_reward_trainer_learns_a_dense_task_relabelled_from_the_poses(episode_dirs, tmp_path):
    from astra_gym.data.tasks import get_task, relabel

    cfg = dataclasses.replace(
        train_reward.PRESETS["debug"],
        episodes=(str(episode_dirs / "manipulation"),),
        task="reach-push",
        out=str(tmp_path),
        total_steps=2,
        progress=False,
        holdout_fraction=0.0,
    )
    _, meta = load_reward_model(train_reward.train_reward(cfg))
    assert meta["metrics"]["config"]["task"] == "reach-push"
    episodes = _episodes(seed=100)["manipulation"]
    task = get_task("manipulation", "reach-push")
    relabelled = train_reward._relabelled(episodes, task)
    for before, after in zip(episodes, relabelled, strict=True):
        np.testing.assert_allclose(after.rewards, relabel(before.poses, before.rewards, task), rtol=1e-6)
        assert not np.allclose(after.rewards, before.rewards)
    assert train_reward._relabelled(episodes, get_task("manipulation"))[0] is episodes[0]


def _pose_reader_config(episode_dirs, out, **changes) -> train_reward.RewardTrainConfig:
    """A debug reward-trainer config that learns Manipulation's reach-push poses (one held-out episode)."""
    return dataclasses.replace(
        train_reward.PRESETS["debug"],
        episodes=(str(episode_dirs / "manipulation"),),
        task="reach-push",
        pose_weight=1.0,
        out=str(out),
        eval_every=0,
        progress=False,
        holdout_fraction=0.34,
        **changes,
    )


def test_reward_trainer_can_also_learn_the_tasks_poses(episode_dirs, tmp_path):
    """``--pose-weight``: a pose head learns the task's poses after each step (standardised), scored in metres;
    ``--pose-reward``: the reward is then the task's formula on those poses."""
    cfg = _pose_reader_config(episode_dirs, tmp_path / "pose", total_steps=30)
    model, meta = load_reward_model(train_reward.train_reward(cfg))
    assert model.config.pose_dim == 9 and model.config.pose_reward is None  # gripper, block and goal positions
    with open(tmp_path / "pose" / "metrics.csv") as f:
        losses = [float(row["train/pose_loss"]) for row in csv.DictReader(f) if row["train/pose_loss"]]
    assert len(losses) == 30 and np.mean(losses[-5:]) < np.mean(losses[:5])  # it learns them
    assert 0 < meta["metrics"]["eval/pose_mae"] < 1.0  # metres, on the held-out episode
    assert (model.pose_std > 0).all() and (model.pose_mean != 0).any()  # the standardisation is saved
    episodes = _episodes(seed=100)["manipulation"]
    pool = train_reward.TransitionPool(
        episodes, "robot_command", ActionNormalizer.identity("robot_command", 7), 1, ("ee_pos", "goal_pos")
    )
    after = np.r_[episodes[0].poses["ee_pos"][1], episodes[0].poses["goal_pos"][1]]
    np.testing.assert_allclose(pool.gather(torch.tensor([0]))[4][0].numpy(), after, rtol=1e-6)  # after step 0
    mean, std = train_reward.pose_scale(torch.tensor([[1.0, 2.0], [3.0, 2.0]]))  # a constant column keeps std 1
    assert torch.allclose(mean, torch.tensor([2.0, 2.0])) and torch.allclose(std, torch.tensor([2**0.5, 1.0]))
    with pytest.raises(ValueError, match="reads no poses"):
        train_reward.train_reward(dataclasses.replace(cfg, task=None))
    with pytest.raises(ValueError, match="needs --pose-weight"):
        dataclasses.replace(cfg, pose_weight=0.0, pose_reward=True)
    with pytest.raises(ValueError, match="no pose formula"):
        train_reward.train_reward(dataclasses.replace(cfg, task="progress", pose_reward=True))
    frames, actions = torch.zeros(2, 1, 3, SIZE, SIZE), torch.zeros(2, 7)
    with pytest.raises(ValueError, match="pose head"):
        load_reward_model(train_reward.train_reward(dataclasses.replace(cfg, pose_weight=0.0, total_steps=1)))[0](
            frames, actions, poses=True
        )
    model, meta = load_reward_model(train_reward.train_reward(dataclasses.replace(cfg, pose_reward=True)))
    assert model.config.pose_reward == "reach-push" and np.isfinite(meta["metrics"]["eval/reward_mae"])
    reward, _, poses = model(frames, actions, poses=True)
    expected = -((poses[:, :3] - poses[:, 3:6]).norm(dim=1) + (poses[:, 3:6] - poses[:, 6:]).norm(dim=1))
    torch.testing.assert_close(reward, expected)


def test_reward_trainer_anchors_each_step_on_its_episodes_start_frame(episode_dirs, tmp_path):
    """``--anchor-every N``: step t's anchor is frame N * (t // N), where an env episode of N steps would have
    started; the saved model reads it and refuses to score without one."""
    episodes = _episodes(seed=100)["manipulation"]
    pool = train_reward.TransitionPool(
        episodes, "robot_command", ActionNormalizer.identity("robot_command", 7), 1, anchor_every=3
    )
    steps = torch.tensor([0, 2, 3, 5])  # episode 0's steps: anchors at frames 0, 0, 3, 3
    anchors = pool.gather(steps)[5]
    frames = episodes[0].frames
    expected = torch.stack([uint8_to_pixels(frames[[i]]) for i in (0, 0, 3, 3)])
    torch.testing.assert_close(anchors, expected)
    plain = train_reward.TransitionPool(episodes, "robot_command", ActionNormalizer.identity("robot_command", 7), 1)
    assert plain.gather(steps)[5] is None
    cfg = _pose_reader_config(episode_dirs, tmp_path / "anchored", total_steps=3, pose_reward=True, anchor_every=4)
    model, meta = load_reward_model(train_reward.train_reward(cfg))
    assert model.config.anchor and meta["metrics"]["config"]["anchor_every"] == 4
    assert np.isfinite(meta["metrics"]["eval/pose_mae"])
    with pytest.raises(ValueError, match="pass anchor="):
        model(torch.zeros(2, 1, 3, SIZE, SIZE), torch.zeros(2, 7))
    with pytest.raises(ValueError, match="anchor-every=-1"):
        dataclasses.replace(cfg, anchor_every=-1)
    with pytest.raises(ValueError, match="must fit in one anchored episode"):
        dataclasses.replace(cfg, imagined="debug", imagined_horizon=8)


def test_pipeline_vae_cache_world_model_reward_bundle(episode_dirs, tmp_path):
    """The README recipe at debug size: every hand-off (VAE -> caches -> world model -> reward -> bundle)."""
    scenarios = ("drive", "manipulation", "explore")
    vae_cfg = dataclasses.replace(
        train_vae.PRESETS["debug"],
        episodes=tuple(str(episode_dirs / s) for s in scenarios),
        out=str(tmp_path / "vae"),
        total_steps=2,
        progress=False,
    )
    vae_folder = train_vae.train_vae(vae_cfg)
    for s in scenarios:  # the documented cache command, with the trained weights
        latent_cache.main(
            [
                "--episodes",
                str(episode_dirs / s),
                "--vae",
                "debug",
                "--vae-weights",
                str(vae_folder / "vae.safetensors"),
                "--out",
                str(tmp_path / f"cache-{s}"),
            ]
        )
    specs = tuple(DatasetSpec(str(tmp_path / f"cache-{s}"), s) for s in scenarios)
    wm = train_world_model.train(
        dataclasses.replace(
            train_world_model.PRESETS["debug"],
            datasets=specs,
            run_dir=str(tmp_path / "wm"),
            total_steps=2,
            progress=False,
            vae=str(vae_folder),
        )
    )
    reward_cfg = dataclasses.replace(
        train_reward.PRESETS["debug"],
        episodes=(str(episode_dirs / "drive"),),
        out=str(tmp_path / "reward"),
        total_steps=2,
        progress=False,
        action_norm=str(wm.final),
    )
    reward_folder = train_reward.train_reward(reward_cfg)
    out = bundle.make_bundle("test", wm.final, vae_folder, [reward_folder], tmp_path / "bundle")
    manifest = read_bundle(out)
    assert sorted(manifest["scenarios"]) == sorted(scenarios)
    assert manifest["scenarios"]["drive"]["reward_model"] == out / "reward" / "drive"
    assert manifest["scenarios"]["explore"]["reward_model"] is None
    _, reward_meta = load_reward_model(manifest["scenarios"]["drive"]["reward_model"])
    assert (
        reward_meta["action_normalization"]["scale"] == manifest["scenarios"]["drive"]["action_normalization"]["scale"]
    )
    assert load_vae(manifest["vae"]).latent_channels == load_pretrained(manifest["world_model"]).config.in_channels
    assert "drive" in (out / "MODEL_CARD.md").read_text()
    _check_reward_on_imagined_pieces(reward_cfg, out, tmp_path)
    half = bundle.make_bundle(
        "half", wm.final, vae_folder, [reward_folder], tmp_path / "half", weights_dtype="float16"
    )
    _check_float16_bundle(half, wm.final, reward_folder)
    _check_recording_settings(wm.final, vae_folder, tmp_path)
    small = bundle.make_bundle("int8", wm.final, vae_folder, [reward_folder], tmp_path / "int8", weights_dtype="int8")
    _check_int8_bundle(small, half)
    with pytest.raises(ValueError, match="choose one of"):
        bundle.make_bundle("x", wm.final, vae_folder, [], tmp_path / "x", weights_dtype="int4")
    with pytest.raises(ValueError, match="VAE"):  # a VAE other than the caches' is refused
        bundle.make_bundle(
            "bad",
            wm.final,
            train_vae.train_vae(dataclasses.replace(vae_cfg, seed=1, out=str(tmp_path / "vae2"))),
            [],
            tmp_path / "bad",
        )


# --------------------------------------------------------------------------------------- Drive recipe additions


def test_time_budget_stops_checkpoints_and_exports_the_weights_so_far(cache, tmp_path):
    result = train_world_model.train(_run_config(cache, tmp_path, total_steps=50, log_every=2, time_budget_min=1e-9))
    assert result.step == 2 and result.final is not None  # stopped at the first budget check (a log step)
    assert latest_checkpoint(tmp_path).name == "step_00000002"
    assert load_pretrained(result.final).config is not None


def test_data_workers_pack_the_same_batches(cache, straight_run, tmp_path):
    straight, _ = straight_run
    workers = train_world_model.train(_run_config(cache, tmp_path, data_workers=2))
    assert _losses(workers.rows, 0) == _losses(straight.rows, 0)  # same batches, so the same losses step by step


def _launch_two_processes(cache, run_dir, *flags: str) -> None:
    """``train_world_model`` in 2 CPU processes (torchrun + gloo), batch 2 each, as _run_config's run."""
    datasets = [f"--dataset=scenario={s.scenario},path={s.root},weight={s.weight}" for s in _specs(cache)]
    command = [
        sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
        "-m", "astra_gym.training.train_world_model", "--preset", "debug", *datasets, "--run-dir", str(run_dir),
        "--total-steps", "8", "--checkpoint-every", "4", "--warmup-steps", "2", "--no-progress",
        "--batch-size", "2", "--max-history", "1", "--moe-balance-weight", "0", *flags,
    ]  # fmt: skip
    env = {**os.environ, "ACCELERATE_USE_CPU": "true", "OMP_NUM_THREADS": "1"}
    done = subprocess.run(command, env=env, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]


def test_two_processes_match_one_with_the_same_global_batch_and_resume(cache, tmp_path):
    """2 ranks x batch 2 = 1 process x batch 4: same losses and weights (1e-5), and a resume works.

    Exact up to float summation order because the ranks draw their rows of the global draws and
    every packed batch has the same shapes (a history of one latent); the MoAE balance loss (off
    here) is computed per rank, as in any data-parallel MoE trainer, so with it the runs differ a bit.
    """
    step = dataclasses.replace(train_world_model.PRESETS["debug"].step, moe_balance_weight=0.0)
    one = train_world_model.train(_run_config(cache, tmp_path / "one", batch_size=4, max_history=1, step=step))
    _launch_two_processes(cache, tmp_path / "two")
    _launch_two_processes(cache, tmp_path / "resumed", "--stop-after", "4")
    assert (
        latest_checkpoint(tmp_path / "resumed").name == "step_00000004"
        and not (tmp_path / "resumed" / "final").exists()
    )
    _launch_two_processes(cache, tmp_path / "resumed")
    reference = load_pretrained(one.final).state_dict()
    for run in ("two", "resumed"):
        rows = [line.split(",") for line in (tmp_path / run / "metrics.csv").read_text().splitlines()[1:]]
        np.testing.assert_allclose([float(r[1]) for r in rows], _losses(one.rows, 0), rtol=1e-5)
        weights = load_pretrained(tmp_path / run / "final").state_dict()
        for name, value in reference.items():
            torch.testing.assert_close(weights[name], value, rtol=1e-5, atol=1e-5, msg=f"{run}: {name}")


def test_reward_trainer_on_vae_reconstructions(episode_dirs, tmp_path):
    vae_cfg = dataclasses.replace(
        train_vae.PRESETS["debug"], episodes=(str(episode_dirs / "drive"),), out=str(tmp_path / "vae"),
        total_steps=2, progress=False, eval_every=0,
    )  # fmt: skip
    vae_folder = train_vae.train_vae(vae_cfg)
    episodes = _episodes()["drive"][:1]
    recon = train_reward._reconstructed(episodes, str(vae_folder), torch.device("cpu"))
    assert recon[0].frames.shape == episodes[0].frames.shape and recon[0].frames.dtype == np.uint8
    assert not np.array_equal(recon[0].frames, episodes[0].frames)  # the VAE's image domain, not the real frames
    assert np.array_equal(recon[0].rewards, episodes[0].rewards)
    cfg = dataclasses.replace(
        train_reward.PRESETS["debug"], episodes=(str(episode_dirs / "drive"),), out=str(tmp_path / "reward"),
        total_steps=2, progress=False, holdout_fraction=0.34, vae=str(vae_folder),
    )  # fmt: skip
    _, meta = load_reward_model(train_reward.train_reward(cfg))
    assert meta["scenario"] == "drive"
