"""WorldModelRollout: shapes, determinism, batch invariance, immutability, forks, partial resets, memory."""

import copy
import os

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from astra_gym.rollout.batch_invariance import FEW_ROWS, BatchInvariantMode
from astra_gym.rollout.bundle import debug_bundle
from astra_gym.rollout.engine import RolloutConfig, WorldModelRollout
from astra_gym.utils.pixels import pixels_to_uint8, uint8_to_pixels
from tests.rollout.inputs import action_rows, contexts


def _rollout(engine, context, seeds, rows):
    """(final state, frames [B, steps, P, H, W, 3]) of stepping ``rows`` [steps, B, F, d]."""
    state = engine.reset(context, seeds)
    frames = []
    for step_rows in rows:
        state, out = engine.step(state, step_rows)
        frames.append(out)
    return state, torch.stack(frames, dim=1)


# ----------------------------------------------------------------------------------------------
# 1. Shapes and dtypes
# ----------------------------------------------------------------------------------------------


def test_reset_and_step_shapes(engine):
    state = engine.reset(contexts(3), [0, 1, 2])
    assert state.batch_size == 3 and state.steps.tolist() == [0, 0, 0]
    assert state.history.length.tolist() == [2, 2, 2]  # two context latents per row
    state, frames = engine.step(state, action_rows(1, 3)[0])
    assert frames.dtype == torch.uint8 and frames.shape == (3, 1, 64, 64, 3)
    assert state.steps.tolist() == [1, 1, 1] and state.history.length.tolist() == [3, 3, 3]


def test_one_image_per_row_and_chunks_of_several_latents(bundle):
    engine = bundle.engine(num_denoise_steps=1, chunk_latents=3)
    state = engine.reset(contexts(2, frames=1)[:, 0], [0, 1])  # [B, H, W, 3]
    state, frames = engine.step(state, action_rows(1, 2, chunk=3)[0])
    assert engine.frames_per_step == 3 and frames.shape == (2, 3, 64, 64, 3)
    assert state.history.length.tolist() == [4, 4]


# ----------------------------------------------------------------------------------------------
# 2. Determinism and batch invariance
# ----------------------------------------------------------------------------------------------


def test_same_seed_gives_the_same_rollout_and_another_seed_differs(engine):
    rows = action_rows(4, 2)
    _, first = _rollout(engine, contexts(2), [5, 6], rows)
    _, again = _rollout(engine, contexts(2), [5, 6], rows)
    _, other = _rollout(engine, contexts(2), [5, 7], rows)
    assert torch.equal(first, again)
    assert torch.equal(first[0], other[0]) and not torch.equal(first[1], other[1])


@pytest.mark.parametrize("threads", [1, pytest.param(2, marks=pytest.mark.slow)])  # 2 threads: slow on busy CPUs
@pytest.mark.parametrize("guidance", [1.0, 2.0])
def test_each_row_of_a_batch_equals_its_batch_one_rollout(bundle, threads, guidance, request):
    """Rows of different ages (two restarted mid-way) in one batch equal batch-1 rollouts bit for bit."""
    previous = torch.get_num_threads()
    request.addfinalizer(lambda: torch.set_num_threads(previous))
    torch.set_num_threads(threads)
    engine = bundle.engine(num_denoise_steps=2, guidance_scale=guidance)
    batch, rows, fresh = 4, action_rows(6, 4), contexts(2, seed=9)
    state = engine.reset(contexts(batch), [10, 11, 12, 13])
    frames = []
    for k, step_rows in enumerate(rows):
        if k == 3:  # restart rows 1 and 3 from new contexts
            state = engine.reset_rows(state, torch.tensor([False, True, False, True]), fresh, [21, 23])
        state, out = engine.step(state, step_rows)
        frames.append(out)
    frames = torch.stack(frames, dim=1)  # [B, 6, 1, H, W, 3]
    for row in (0, 2):
        alone, alone_frames = _rollout(engine, contexts(batch)[row : row + 1], [10 + row], rows[:, row : row + 1])
        assert torch.equal(alone_frames[0], frames[row])
        assert torch.equal(alone.history.recent_latents[0], state.history.recent_latents[row])
    for fresh_row, row in enumerate((1, 3)):
        seed = 21 + 2 * fresh_row
        alone, alone_frames = _rollout(engine, fresh[fresh_row : fresh_row + 1], [seed], rows[3:, row : row + 1])
        assert torch.equal(alone_frames[0], frames[row, 3:])
        assert torch.equal(alone.history.recent_latents[0], state.history.recent_latents[row])


def test_every_framepack_group_is_packed_even_when_no_row_fills_it(engine):
    """A row's token layout must not depend on its neighbours (pack drops groups nobody fills)."""
    young = engine.reset(contexts(2), [0, 1])  # 2 latents per row: the 4x and 2x slots are empty
    frame_pack, values = engine._pack(young.history, engine._target_rows(action_rows(1, 2)[0], 2))
    assert [g.scale for g in frame_pack.history] == [4, 2, 1]
    assert not frame_pack.history[0].valid.any() and values.shape[0] == 2


def test_batch_invariant_mode_linears_and_activations_match_row_by_row_results():
    torch.manual_seed(0)
    layer = torch.nn.Linear(32, 48)
    x = torch.randn(16, 32)
    with torch.no_grad(), BatchInvariantMode():
        batched = layer(x)
        rows = torch.cat([layer(x[i : i + 1]) for i in range(16)])
        few = layer(x.view(8, 2, 32))
        few_rows = torch.cat([layer(x.view(8, 2, 32)[i : i + 1]) for i in range(8)])
        many = layer(torch.randn(2, FEW_ROWS, 32))
        activations = {name: (f(batched), torch.cat([f(r) for r in batched.split(1)])) for name, f in (
            ("silu", torch.nn.SiLU()), ("gelu", torch.nn.GELU(approximate="tanh")))}  # fmt: skip
    assert torch.equal(batched, rows) and torch.equal(few, few_rows)
    torch.testing.assert_close(batched, F.linear(x, layer.weight, layer.bias))
    assert many.shape == (2, FEW_ROWS, 48)
    for name, (together, alone) in activations.items():
        assert torch.equal(together, alone), name
    torch.testing.assert_close(activations["silu"][0], F.silu(batched))


# ----------------------------------------------------------------------------------------------
# 3. Explicit, immutable state
# ----------------------------------------------------------------------------------------------


def test_step_leaves_its_input_state_usable_and_unchanged(engine):
    state = engine.reset(contexts(2), [3, 4])
    latents_before = state.history.recent_latents.clone()
    generator_before = state.generators[0].get_state().clone()
    rows = action_rows(1, 2)[0]
    first_state, first = engine.step(state, rows)
    second_state, second = engine.step(state, rows)
    assert torch.equal(first, second)
    assert torch.equal(state.history.recent_latents, latents_before)
    assert torch.equal(state.generators[0].get_state(), generator_before)
    assert not torch.equal(first_state.generators[0].get_state(), generator_before)


def test_fork_with_shared_noise_reproduces_the_parent_continuation(engine):
    rows = action_rows(3, 1)
    parent = engine.reset(contexts(1), [8])
    children = engine.fork(parent, 3, noise="shared")
    _, expected = _rollout(engine, contexts(1), [8], rows)
    got = []
    for step_rows in rows:
        children, frames = engine.step(children, np.repeat(step_rows, 3, axis=0))
        got.append(frames)
    got = torch.stack(got, dim=1)
    for child in range(3):
        assert torch.equal(got[child], expected[0])


def test_fork_with_independent_noise_is_reproducible_and_siblings_differ(engine):
    parent = engine.reset(contexts(2), [1, 2])
    rows = np.repeat(action_rows(1, 1)[0], 4, axis=0)  # the same action for every child
    _, once = engine.step(engine.fork(parent, 2), rows)
    _, twice = engine.step(engine.fork(parent, 2), rows)
    assert torch.equal(once, twice)
    assert not torch.equal(once[0], once[1])  # siblings of parent row 0
    assert torch.equal(parent.generators[0].get_state(), engine.reset(contexts(2), [1, 2]).generators[0].get_state())


def test_select_and_put_round_trip(engine):
    state = engine.reset(contexts(3), [0, 1, 2])
    state, _ = engine.step(state, action_rows(1, 3)[0])
    picked = engine.select(state, [2, 0])
    assert picked.batch_size == 2 and torch.equal(picked.history.recent_latents[0], state.history.recent_latents[2])
    back = engine.put(state, [2, 0], picked)
    for name in ("recent_latents", "recent_actions", "recent_index", "length"):
        assert torch.equal(getattr(back.history, name), getattr(state.history, name))
    with pytest.raises(ValueError, match="duplicates"):
        engine.put(state, [1, 1], picked)


def test_reset_rows_restarts_only_the_selected_rows(engine):
    state = engine.reset(contexts(3), [0, 1, 2])
    state, _ = engine.step(state, action_rows(1, 3)[0])
    restarted = engine.reset_rows(state, torch.tensor([False, True, False]), contexts(1, seed=5), [42])
    assert restarted.history.length.tolist() == [3, 2, 3] and restarted.steps.tolist() == [1, 0, 1]
    for row in (0, 2):
        assert torch.equal(restarted.history.recent_latents[row], state.history.recent_latents[row])
        assert torch.equal(restarted.generators[row].get_state(), state.generators[row].get_state())
    fresh = engine.reset(contexts(1, seed=5), [42])
    assert torch.equal(restarted.history.recent_latents[1], fresh.history.recent_latents[0])


# ----------------------------------------------------------------------------------------------
# 4. Action rows, context rows and rewards
# ----------------------------------------------------------------------------------------------


def test_context_rows_are_normalised_and_the_first_latent_carries_the_null_row(bundle):
    scale = (2.0, 1.0, 1.0, 4.0, 1.0, 1.0, 1.0)
    engine = WorldModelRollout(bundle.transformer, bundle.vae, bundle.rollout, action_scale=scale)
    rows = action_rows(1, 1)[0].repeat(2, axis=1)  # [1, 2, 7]
    state = engine.reset(contexts(1), [0], context_actions=rows)
    stored = state.history.recent_actions[0, -2:, :7]
    assert torch.equal(stored[0], torch.zeros(7))
    torch.testing.assert_close(stored[1], torch.from_numpy(rows[0, 1]) / torch.tensor(scale), rtol=0, atol=0)


def test_action_scale_divides_the_rows_before_the_model(bundle):
    scale = (2.0, 4.0, 0.5, 1.0, 1.0, 1.0, 1.0)
    config = bundle.rollout.replace(num_denoise_steps=1)
    scaled = WorldModelRollout(bundle.transformer, bundle.vae, config, bundle.reward_model, action_scale=scale)
    plain = WorldModelRollout(bundle.transformer, bundle.vae, config, bundle.reward_model)
    rows = action_rows(1, 1)[0]
    divided = (torch.from_numpy(rows) / torch.tensor(scale)).numpy()
    _, a = scaled.step(scaled.reset(contexts(1), [0]), rows)
    _, b = plain.step(plain.reset(contexts(1), [0]), divided)
    assert torch.equal(a, b)


def test_score_reads_the_newest_frames_kept_in_the_state(bundle):
    from astra_gym.world_model.reward_model import RewardModel, get_reward_model_preset

    reward_model = RewardModel(get_reward_model_preset("debug", 7, num_frames=3)).eval()
    config = bundle.rollout.replace(num_denoise_steps=1)
    engine = WorldModelRollout(bundle.transformer, bundle.vae, config, reward_model)
    context = contexts(1, frames=1)
    state = engine.reset(context, [0])
    assert state.recent_frames.shape == (1, 3, 64, 64, 3)  # the single context frame repeated ...
    with torch.no_grad():  # ... as the VAE reconstructs it: the domain of the generated frames
        start = pixels_to_uint8(bundle.vae.decode(bundle.vae.encode(uint8_to_pixels(torch.from_numpy(context)))))
    assert torch.equal(state.recent_frames, start.repeat(1, 3, 1, 1, 1))
    assert not torch.equal(start, torch.from_numpy(context))
    rows = action_rows(1, 1)[0]
    state, frames = engine.step(state, rows)
    expected_frames = torch.cat([start.repeat(1, 2, 1, 1, 1), frames], dim=1)
    assert torch.equal(state.recent_frames, expected_frames)
    reward, logit = engine.score(state, rows)
    pixels = expected_frames.permute(0, 1, 4, 2, 3).float() / 127.5 - 1.0
    with torch.no_grad():
        want_reward, want_logit = reward_model(pixels, torch.from_numpy(rows[:, 0]))
    torch.testing.assert_close(reward, want_reward)
    torch.testing.assert_close(logit, want_logit)


def test_the_start_frames_stay_the_anchor_of_an_anchored_reward_model(bundle):
    """``start_frames`` are the reset's ``recent_frames`` for the whole episode, rows and forks included, and
    ``score`` gives their newest to an anchored reward model."""
    from astra_gym.world_model.reward_model import RewardModel, get_reward_model_preset

    torch.manual_seed(0)
    reward_model = RewardModel(get_reward_model_preset("debug", 7, anchor=True)).eval()
    config = bundle.rollout.replace(num_denoise_steps=1)
    engine = WorldModelRollout(bundle.transformer, bundle.vae, config, reward_model)
    state = engine.reset(contexts(2, frames=1), [0, 1])
    start = state.start_frames.clone()
    assert torch.equal(start, state.recent_frames)
    rows = action_rows(1, 2)[0]  # [B, F, d]
    for _ in range(2):
        state, _ = engine.step(state, rows)
    assert torch.equal(state.start_frames, start) and not torch.equal(state.recent_frames, start)
    reward, _ = engine.score(state, rows)
    pixels = [f.permute(0, 1, 4, 2, 3).float() / 127.5 - 1.0 for f in (state.recent_frames, start)]
    with torch.no_grad():
        anchored = reward_model(pixels[0], torch.from_numpy(rows[:, 0]), anchor=pixels[1])[0]
        other = reward_model(pixels[0], torch.from_numpy(rows[:, 0]), anchor=pixels[0])[0]
    torch.testing.assert_close(reward, anchored)
    assert not torch.allclose(reward, other)
    forked = engine.fork(state, 2)
    assert torch.equal(forked.start_frames, start.repeat_interleave(2, dim=0))
    assert torch.equal(state.put([1], state.select([0])).start_frames[1], start[0])


def test_disagreement_is_the_step_against_a_draw_on_sibling_noise_and_leaves_the_state_alone(engine):
    import dataclasses

    from astra_gym.rollout.state import derive_generator

    state = engine.reset(contexts(3), [0, 1, 2])
    rows = action_rows(1, 3)[0]
    before = [g.get_state().clone() for g in state.generators]
    stepped, _ = engine.step(state, rows)
    spread = engine.disagreement(state, rows, stepped)
    assert spread.shape == (3,) and bool((spread > 0).all())
    assert all(torch.equal(g.get_state(), b) for g, b in zip(state.generators, before, strict=True))
    torch.testing.assert_close(engine.disagreement(state, rows, stepped), spread, rtol=0, atol=0)
    sibling = dataclasses.replace(state, generators=tuple(derive_generator(g, 1) for g in state.generators))
    other, _ = engine.step(sibling, rows)
    by_hand = (other.history.recent_latents[:, :, -1:] - stepped.history.recent_latents[:, :, -1:]).square()
    torch.testing.assert_close(spread, by_hand.mean(dim=(1, 2, 3, 4)))
    two = engine.disagreement(state, rows, stepped, draws=2)
    assert not torch.equal(two, spread)  # the second draw counts


def test_disagreement_refuses_a_state_that_was_not_stepped_from_it(engine):
    state = engine.reset(contexts(2), [0, 1])
    rows = action_rows(2, 2)
    stepped, _ = engine.step(state, rows[0])
    twice, _ = engine.step(stepped, rows[1])
    with pytest.raises(ValueError, match="must be the state step"):
        engine.disagreement(state, rows[0], twice)
    with pytest.raises(ValueError, match="draws=0"):
        engine.disagreement(state, rows[0], stepped, draws=0)


# ----------------------------------------------------------------------------------------------
# 5. Memory stays flat
# ----------------------------------------------------------------------------------------------


def _rss_bytes() -> int:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


@pytest.mark.skipif(not os.path.exists("/proc/self/statm"), reason="needs Linux /proc")
def test_memory_is_flat_over_a_2000_step_rollout(bundle):
    engine = bundle.engine(num_denoise_steps=1)
    state = engine.reset(contexts(1), [0])
    rows = action_rows(1, 1)[0]
    for step in range(1, 2001):
        state, _ = engine.step(state, rows)
        if step == 100:
            bytes_100, rss_100 = state.nbytes(), _rss_bytes()
    assert state.nbytes() == bytes_100  # the state holds a fixed number of bytes
    assert _rss_bytes() - rss_100 < 16 * 2**20  # and the process does not grow with it
    assert int(state.history.length[0]) == 2002 and int(state.steps[0]) == 2000


# ----------------------------------------------------------------------------------------------
# 6. Errors
# ----------------------------------------------------------------------------------------------


def test_bad_inputs_raise_clear_errors(engine, bundle):
    state = engine.reset(contexts(2), [0, 1])
    with pytest.raises(ValueError, match=r"action_rows must be \[B, F, d\]"):
        engine.step(state, np.zeros((2, 1, 6), np.float32))
    with pytest.raises(ValueError, match="NaN or inf"):
        engine.step(state, np.full((2, 1, 7), np.nan, np.float32))
    with pytest.raises(ValueError, match="uint8"):
        engine.reset(contexts(2).astype(np.float32), [0, 1])
    with pytest.raises(ValueError, match="2 seeds for 3 rows"):
        engine.reset(contexts(3), [0, 1])
    with pytest.raises(ValueError, match="context_actions must be"):
        engine.reset(contexts(2), [0, 1], context_actions=np.zeros((2, 1, 7)))
    with pytest.raises(ValueError, match="n=0"):
        engine.fork(state, 0)
    with pytest.raises(ValueError, match="unknown action modality"):
        bundle.engine(modality="joystick")
    other_vae = debug_bundle("drive").vae.__class__(bundle.vae.config.replace(latent_channels=8))
    with pytest.raises(ValueError, match="4-channel latents but the VAE makes 8"):
        WorldModelRollout(bundle.transformer, other_vae, bundle.rollout)
    with pytest.raises(ValueError, match="mode='exact'"):
        RolloutConfig(modality="vehicle", layout=bundle.rollout.layout.__class__(mode="release"))


# ----------------------------------------------------------------------------------------------
# History K/V cache
# ----------------------------------------------------------------------------------------------


def test_history_cache_gives_the_uncached_rollout_for_a_causal_model(bundle):
    model = copy.deepcopy(bundle.transformer)
    model.config = model.config.replace(history_attention="causal")
    generator = torch.Generator().manual_seed(0)
    with torch.no_grad():  # the debug head is zero-initialised: make the output depend on the history
        model.head.head.weight.copy_(torch.randn(model.head.head.weight.shape, generator=generator) * 0.3)
    frames = {}
    for cached in (False, True):
        config = bundle.rollout.replace(num_denoise_steps=3, use_history_cache=cached)
        engine = WorldModelRollout(model, bundle.vae, config, bundle.reward_model, bundle.text_context)
        _, frames[cached] = _rollout(engine, contexts(2), [3, 4], action_rows(3, 2))
    baseline = bundle.engine(num_denoise_steps=3)
    _, full = _rollout(baseline, contexts(2), [3, 4], action_rows(3, 2))
    difference = (frames[True].int() - frames[False].int()).abs()
    assert difference.max() <= 1  # float rounding at the uint8 boundary only
    assert not torch.equal(frames[False], full)  # the perturbed causal model really differs
