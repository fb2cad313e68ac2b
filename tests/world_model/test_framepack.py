"""Tests of the FramePack history and packer (astra_gym.world_model.framepack)."""

from __future__ import annotations

import dataclasses

import pytest
import torch

from astra_gym.world_model.framepack import (
    FramePackHistory,
    FramePackLayout,
    corrupt_history,
    history_noise_mask,
    pack,
    referenced_action_rows,
    sample_history_length,
)

C, H, W, D, FRAMES = 2, 8, 8, 13, 8
HISTORY_CODE, TARGET_CODE = 1000.0, 2000.0


# ----------------------------------------------------------------------------- helpers


def latent(index: int, batch: int = 1) -> torch.Tensor:
    """[B, C, 1, H, W] latent whose every value is index + 1 (0 is reserved for empty slots)."""
    return torch.full((batch, C, 1, H, W), float(index + 1))


def action(code: float, batch: int = 1) -> torch.Tensor:
    """[B, 1, D] action row whose column 0 encodes ``code`` (other columns 0.5, flag column 7)."""
    row = torch.full((batch, 1, D), 0.5)
    row[..., 0] = code
    row[..., -1] = 7.0  # pack must overwrite the flag
    return row


def target_actions(batch: int = 1, frames: int = FRAMES) -> torch.Tensor:
    """[B, F, D] target rows; row j encodes TARGET_CODE + j."""
    return torch.cat([action(TARGET_CODE + j, batch) for j in range(frames)], dim=1)


def grown_history(length: int, batch: int = 1) -> FramePackHistory:
    """History after appending latents 0..length-1 one at a time; latent k carries code HISTORY_CODE + k."""
    history = FramePackHistory.empty(batch, C, H, W, D)
    for k in range(length):
        history = history.append(latent(k, batch), action(HISTORY_CODE + k, batch))
    return history


def memory_bytes(history: FramePackHistory) -> int:
    tensors = [getattr(history, f.name) for f in dataclasses.fields(history)]
    return sum(t.untyped_storage().nbytes() for t in tensors)


def slot_ids(group_latents: torch.Tensor, row: int = 0) -> list[int | None]:
    """Which latent fills each temporal slot of a group (None = zero padding)."""
    means = group_latents[row].mean(dim=(0, 2, 3))  # [T]
    return [None if v == 0 else int(v) - 1 for v in means.tolist()]


def right_aligned(indices: list[int], size: int) -> list[int | None]:
    return [None] * (size - len(indices)) + indices


def code_of(values: torch.Tensor, row: int, batch_row: int = 0) -> float | None:
    return None if row < 0 else float(values[batch_row, row, 0])


def by_scale(frame_pack) -> dict[int, object]:
    return {g.scale: g for g in frame_pack.history}


# ----------------------------------------------------------------------------- reference layouts


def expected_exact(length: int) -> dict[int, list[tuple]]:
    """Per scale: [(slots, frame_pos, action code, valid)] for mode='exact', latents 0..length-1."""
    ring = right_aligned(list(range(max(1, length - 19), length)), 19)  # first latent only in the start slot
    groups = {}
    for scale, lo, hi in ((4, 0, 16), (2, 16, 18)):
        tokens = []
        for t in range(lo, hi, scale):
            covered = ring[t : t + scale]
            real = [i for i in covered if i is not None]
            if real:
                tokens.append((covered, sum(real) / len(real), HISTORY_CODE + max(real), True))
            else:
                tokens.append((covered, 0.0, None, False))
        if any(tok[3] for tok in tokens):
            groups[scale] = tokens
    last = ring[18]
    groups[1] = [
        ([0], 0.0, HISTORY_CODE, True),
        ([last], float(last), HISTORY_CODE + last, True) if last is not None else ([None], 0.0, None, False),
    ]
    return groups


def expected_release(length: int) -> dict[int, list[tuple]]:
    """Per scale: [(slots, frame_pos, action code, valid)] for mode='release' (bugs 1-2 kept, 4/5/16 fixed)."""
    ring = right_aligned(list(range(max(0, length - 19), length)), 19)  # the first latent may repeat here
    groups = {}
    for scale, lo, hi in ((4, 0, 16), (2, 16, 18)):
        covered = ring[lo:hi]
        real = [i for i in covered if i is not None]
        if not real:
            continue
        tokens = []
        for g in range((hi - lo) // scale):
            tau = real[min(g, len(real) - 1)]
            code = HISTORY_CODE + real[g] if g < len(real) else None
            tokens.append((covered[g * scale : (g + 1) * scale], float(tau), code, True))
        groups[scale] = tokens
    groups[1] = [([0], 0.0, HISTORY_CODE, True), ([length - 1], float(length - 1), TARGET_CODE, True)]
    return groups


def assert_matches(frame_pack, values, expected: dict[int, list[tuple]], length: int) -> None:
    groups = by_scale(frame_pack)
    assert sorted(groups) == sorted(expected), f"T={length}: groups {sorted(groups)}"
    for scale, tokens in expected.items():
        group = groups[scale]
        slots = [s for tok in tokens for s in tok[0]]
        assert slot_ids(group.latents) == slots, f"T={length} scale {scale}"
        assert group.frame_pos[0].tolist() == [tok[1] for tok in tokens], f"T={length} scale {scale}"
        codes = [code_of(values, r) for r in group.action_row[0].tolist()]
        assert codes == [tok[2] for tok in tokens], f"T={length} scale {scale}"
        assert group.valid[0].tolist() == [tok[3] for tok in tokens], f"T={length} scale {scale}"
    assert frame_pack.target_frame_pos[0].tolist() == [float(length + j) for j in range(FRAMES)]
    target_codes = [code_of(values, r) for r in frame_pack.target_action_row[0].tolist()]
    assert target_codes == [TARGET_CODE + j for j in range(FRAMES)]


# ----------------------------------------------------------------------------- layout


@pytest.mark.parametrize(
    "kwargs, needle",
    [
        ({"num_4x": 3}, "num_4x=3"),
        ({"num_2x": 1}, "num_2x=1"),
        ({"num_1x": 0}, "num_1x=0"),
        ({"mode": "fast"}, "mode='fast'"),
        ({"mode": "release", "keep_first": False}, "keep_first=False"),
        ({"max_start_distance": 5}, "max_start_distance=5"),
    ],
)
def test_layout_validation_names_the_value(kwargs, needle):
    with pytest.raises(ValueError, match=needle):
        FramePackLayout(**kwargs)


def test_layout_sizes():
    layout = FramePackLayout()
    assert (layout.window, layout.num_start, layout.num_slots) == (19, 1, 20)


# ----------------------------------------------------------------------------- index bookkeeping


@pytest.mark.parametrize("mode", ["exact", "release"])
def test_bookkeeping_at_every_length(mode):
    layout = FramePackLayout(mode=mode)
    reference = expected_exact if mode == "exact" else expected_release
    history = FramePackHistory.empty(1, C, H, W, D)
    footprint = memory_bytes(history)
    for k in range(64):
        history = history.append(latent(k), action(HISTORY_CODE + k))
        length = k + 1
        frame_pack, values = pack(history, target_actions(), layout)
        assert_matches(frame_pack, values, reference(length), length)
        assert slot_ids(by_scale(frame_pack)[1].latents)[0] == 0, f"first frame lost at T={length}"
        assert memory_bytes(history) == footprint, f"memory grew at T={length}"


@pytest.mark.parametrize("length", range(1, 31))
def test_release_reference_matches_training_selection(length):
    """The release reference above equals train_single's selection (§5.2 steps 4-6, s=0, c=T)."""
    expected = expected_release(length)
    real = lambda scale: [i for tok in expected.get(scale, []) for i in tok[0] if i is not None]  # noqa: E731
    assert real(4) == (list(range(max(0, length - 19), length - 3)) if length > 3 else [])
    assert real(2) == (list(range(max(0, length - 3), length - 1)) if length >= 2 else [])
    assert real(1) == [0, length - 1]


@pytest.mark.parametrize("mode", ["exact", "release"])
def test_flags_history_one_targets_zero(mode):
    frame_pack, values = pack(grown_history(5), target_actions(), FramePackLayout(mode=mode))
    rows = torch.cat([g.action_row[0][g.valid[0]] for g in frame_pack.history])
    history_rows = rows[(rows >= 0) & (rows < 20)]
    assert values[0, history_rows, -1].eq(1).all()
    assert values[0, frame_pack.target_action_row[0], -1].eq(0).all()
    assert values[0, 1:15].eq(0).all(), "empty slots must be null rows"


def test_chunked_appends_equal_single_appends():
    lat = torch.cat([latent(k) for k in range(27)], dim=2)
    act = torch.cat([action(HISTORY_CODE + k) for k in range(27)], dim=1)
    chunked = FramePackHistory.from_latents(lat[:, :, :3], act[:, :3])
    for start in range(3, 27, 8):
        chunked = chunked.append(lat[:, :, start : start + 8], act[:, start : start + 8])
    single = grown_history(27)
    for name in ("first_latent", "first_action", "first_index", "recent_latents", "recent_actions", "recent_index"):
        assert torch.equal(getattr(chunked, name), getattr(single, name)), name


def test_spatial_and_scale_conventions():
    history = FramePackHistory.from_latents(torch.randn(1, C, 30, 6, 10), action_width=D)
    exact, _ = pack(history, target_actions(), FramePackLayout())
    release, _ = pack(history, target_actions(), FramePackLayout(mode="release"))
    assert [g.spatial_scale for g in exact.history] == [4.0, 2.0, 1.0]
    assert [g.spatial_scale for g in release.history] == [1.0, 1.0, 1.0]
    four, two, one = exact.history
    assert (
        four.latents.shape[-2:] == (8, 16) and two.latents.shape[-2:] == (8, 12) and one.latents.shape[-2:] == (6, 10)
    )
    assert torch.equal(four.latents[..., 6, :10], four.latents[..., 5, :10]), "H is replicate-padded"
    assert torch.equal(four.latents[..., :6, 12], four.latents[..., :6, 9]), "W is replicate-padded"


def test_exact_without_first_frame():
    layout = FramePackLayout(keep_first=False)
    frame_pack, values = pack(grown_history(3), target_actions(), layout)
    groups = by_scale(frame_pack)
    assert slot_ids(groups[1].latents) == [2]
    assert slot_ids(groups[2].latents) == [0, 1] and groups[2].frame_pos[0].tolist() == [0.5]
    assert values.shape[1] == layout.num_slots + FRAMES == 19 + FRAMES


def test_max_start_distance_moves_only_the_start():
    layout = FramePackLayout(max_start_distance=20)
    near, _ = pack(grown_history(12), target_actions(), layout)
    far, _ = pack(grown_history(45), target_actions(), layout)
    assert by_scale(near)[1].frame_pos[0].tolist() == [0.0, 11.0]
    assert by_scale(far)[1].frame_pos[0].tolist() == [25.0, 44.0]
    assert far.target_frame_pos[0, 0] == 45.0


def test_flag_column_per_row():
    history = grown_history(4, batch=2)
    _, values = pack(history, target_actions(2), FramePackLayout(), flag_column=torch.tensor([7, 12]))
    assert values[0, 0, 7] == 1 and values[0, 0, 12] == 7.0  # row 0's column 12 is not its flag
    assert values[1, 0, 12] == 1 and values[1, 0, 7] == 0.5
    assert values[:, 20:, 7][0].eq(0).all() and values[:, 20:, 12][1].eq(0).all()


# ----------------------------------------------------------------------------- the release's misalignment


def release_head_lookup(trajectory: torch.Tensor, tau: int, length: int) -> float:
    """What HEAD's infer_demo reads for temporal position tau: row tau - w0 of rows 0..T+n-1 (§5.5)."""
    w0 = max(length - 20, 0)
    return float(trajectory[tau - w0])


@pytest.mark.parametrize("mode", ["exact", "release"])
def test_actions_aligned_where_release_inference_shifts_them(mode):
    length = 30
    trajectory = torch.arange(length + FRAMES, dtype=torch.float32)  # row k encodes k
    history = FramePackHistory.empty(1, C, H, W, D)
    for k in range(length):
        history = history.append(latent(k), action(float(trajectory[k])))
    targets = torch.cat([action(float(trajectory[length + j])) for j in range(FRAMES)], dim=1)
    frame_pack, values = pack(history, targets, FramePackLayout(mode=mode))

    ours = [code_of(values, r) for r in frame_pack.target_action_row[0].tolist()]
    assert ours == [float(length + j) for j in range(FRAMES)]
    head = [release_head_lookup(trajectory, length + j, length) for j in range(FRAMES)]
    assert head != ours and head == [float(20 + j) for j in range(FRAMES)]

    last = by_scale(frame_pack)[1]
    assert last.frame_pos[0, 1] == length - 1
    expected_last = float(length - 1) if mode == "exact" else float(length)  # release: bug 1 (first target's row)
    assert code_of(values, int(last.action_row[0, 1])) == expected_last
    assert release_head_lookup(trajectory, length - 1, length) == length - 11  # HEAD: 10 rows off
    if mode == "release":  # every other token reads the row of the latent whose τ it carries
        for group in frame_pack.history:
            for r, tau in zip(group.action_row[0].tolist(), group.frame_pos[0].tolist(), strict=True):
                if r >= 0 and tau != length - 1:
                    assert code_of(values, r) == tau


# ----------------------------------------------------------------------------- batching


def mixed_history(lengths: list[int]) -> FramePackHistory:
    """Rows with different lengths; row b's latent k has value 10*b + k + 1 and code 1000 + 10*b + k."""
    batch = len(lengths)
    history = FramePackHistory.empty(batch, C, H, W, D)
    for k in range(max(lengths)):
        rows = torch.tensor([k < n for n in lengths])
        lat = torch.cat([latent(10 * b + k) for b in range(batch)])
        act = torch.cat([action(HISTORY_CODE + 10 * b + k) for b in range(batch)])
        history = history.append(lat, act, rows=rows)
    return history


@pytest.mark.parametrize("mode", ["exact", "release"])
def test_batched_rows_equal_rows_alone(mode):
    lengths = [1, 2, 7, 30]
    layout = FramePackLayout(mode=mode)
    history = mixed_history(lengths)
    assert history.length.tolist() == lengths
    batched, batch_values = pack(history, target_actions(len(lengths)), layout)
    for b in range(len(lengths)):
        alone, alone_values = pack(history.select([b]), target_actions(), layout)
        batch_groups, alone_groups = by_scale(batched), by_scale(alone)
        for scale, group in batch_groups.items():
            if scale not in alone_groups:
                assert not group.valid[b].any()
                continue
            other = alone_groups[scale]
            valid = group.valid[b]
            assert torch.equal(valid, other.valid[0])
            assert torch.equal(group.frame_pos[b][valid], other.frame_pos[0][valid])
            assert torch.equal(batch_values[b, group.action_row[b]], alone_values[0, other.action_row[0]])
            assert torch.equal(group.latents[b], other.latents[0])
        assert torch.equal(batched.target_frame_pos[b], alone.target_frame_pos[0])
        assert torch.equal(batch_values[b], alone_values[0])


def test_empty_rows():
    history = FramePackHistory.empty(2, C, H, W, D)
    frame_pack, values = pack(history, target_actions(2), FramePackLayout())
    assert frame_pack.history == ()
    assert frame_pack.target_frame_pos[0].tolist() == list(map(float, range(FRAMES)))
    assert values.shape == (2, FRAMES, D) and values[..., -1].eq(0).all()
    partial = history.append(latent(0, 2), rows=torch.tensor([True, False]))
    with pytest.raises(ValueError, match=r"rows \[1\] have no history"):
        pack(partial, target_actions(2), FramePackLayout())


# ----------------------------------------------------------------------------- history operations


def test_append_rows_mask_leaves_other_rows():
    history = mixed_history([3, 3])
    after = history.append(latent(50, 2), action(HISTORY_CODE + 50, 2), rows=torch.tensor([False, True]))
    assert after.length.tolist() == [3, 4]
    for name in ("recent_latents", "recent_index", "recent_actions", "first_latent"):
        assert torch.equal(getattr(after, name)[0], getattr(history, name)[0]), name


def test_reset_rows_starts_over():
    history = mixed_history([25, 25])
    fresh = torch.cat([latent(70 + k) for k in range(3)], dim=2)
    fresh_actions = torch.cat([action(HISTORY_CODE + 70 + k) for k in range(3)], dim=1)
    reset = history.reset_rows(torch.tensor([True, False]), fresh, fresh_actions)  # only the masked rows given
    alone = FramePackHistory.from_latents(fresh, fresh_actions)
    assert reset.length.tolist() == [3, 25] and reset.next_index.tolist() == [3, 25]
    got, got_values = pack(reset.select([0]), target_actions(), FramePackLayout())
    want, want_values = pack(alone, target_actions(), FramePackLayout())
    assert torch.equal(got_values, want_values)
    for a, b in zip(got.history, want.history, strict=True):
        assert torch.equal(a.latents, b.latents) and torch.equal(a.frame_pos, b.frame_pos)
    assert torch.equal(reset.recent_latents[1], history.recent_latents[1])


def test_forking_helpers():
    history = mixed_history([4, 9])
    repeated = history.repeat_interleave(3)
    assert repeated.length.tolist() == [4, 4, 4, 9, 9, 9]
    assert torch.equal(repeated.select([3]).recent_latents, history.select([1]).recent_latents)
    assert torch.equal(history.select(torch.tensor([False, True])).length, torch.tensor([9]))
    copy = history.clone()
    assert copy.recent_latents.data_ptr() != history.recent_latents.data_ptr()
    assert torch.equal(copy.recent_latents, history.recent_latents)
    branch = copy.append(latent(99, 2))
    assert history.length.tolist() == [4, 9] and branch.length.tolist() == [5, 10]


def test_history_input_errors():
    history = FramePackHistory.empty(1, C, H, W, D)
    with pytest.raises(ValueError, match="latents must be"):
        history.append(torch.zeros(1, C + 1, 1, H, W))
    with pytest.raises(ValueError, match="actions must be"):
        history.append(latent(0), torch.zeros(1, 2, D))
    with pytest.raises(ValueError, match="action_width"):
        FramePackHistory.from_latents(latent(0))
    with pytest.raises(ValueError, match="holds 5 recent latents"):
        pack(FramePackHistory.empty(1, C, H, W, D, window=5), target_actions(), FramePackLayout())
    with pytest.raises(ValueError, match="columns"):
        pack(grown_history(2), torch.zeros(1, FRAMES, D + 1), FramePackLayout())


def test_referenced_action_rows():
    frame_pack, values = pack(grown_history(2), target_actions(), FramePackLayout())
    used = referenced_action_rows(frame_pack, values.shape[1])
    assert torch.nonzero(used[0]).flatten().tolist() == [0, 19] + list(range(20, 20 + FRAMES))


# ----------------------------------------------------------------------------- noise-as-mask


def packed_batch():
    history = FramePackHistory.from_latents(torch.randn(3, C, 25, H, W), action_width=D)
    return pack(history, target_actions(3), FramePackLayout())[0]


def test_corrupt_history_p0_is_identity():
    frame_pack = packed_batch()
    out = corrupt_history(frame_pack, torch.Generator().manual_seed(0), p=0.0, scales=(1, 2, 4))
    for a, b in zip(out.history, frame_pack.history, strict=True):
        assert torch.equal(a.latents, b.latents)


@pytest.mark.parametrize("scales", [(1,), (2, 4), (1, 2, 4)])
def test_corrupt_history_p1_changes_exactly_the_chosen_scales(scales):
    frame_pack = packed_batch()
    out = corrupt_history(frame_pack, torch.Generator().manual_seed(0), p=1.0, scales=scales)
    assert out.target_frame_pos is frame_pack.target_frame_pos
    assert out.target_action_row is frame_pack.target_action_row
    for a, b in zip(out.history, frame_pack.history, strict=True):
        assert a.frame_pos is b.frame_pos and a.action_row is b.action_row and a.valid is b.valid
        changed = (a.latents != b.latents).flatten(1).all(dim=1)  # [B] every element of the row changed
        assert changed.all() if a.scale in scales else torch.equal(a.latents, b.latents)


def test_corrupt_history_noise_level_and_determinism():
    frame_pack = packed_batch()
    group = dataclasses.replace(frame_pack.history[-1], latents=torch.zeros(3, C, 2, 64, 64))
    frame_pack = dataclasses.replace(frame_pack, history=(group,))
    first = corrupt_history(frame_pack, torch.Generator().manual_seed(3), p=1.0)
    again = corrupt_history(frame_pack, torch.Generator().manual_seed(3), p=1.0)
    other = corrupt_history(frame_pack, torch.Generator().manual_seed(4), p=1.0)
    assert torch.equal(first.history[0].latents, again.history[0].latents)
    assert not torch.equal(first.history[0].latents, other.history[0].latents)
    std = first.history[0].latents.flatten(1).std(dim=1)  # (1 - σ)·0 + σ·ε has std σ
    assert ((std > 0.6) & (std < 1.03)).all()


def test_history_noise_mask_rate():
    mask = history_noise_mask(4000, torch.Generator().manual_seed(0), p=0.8)
    assert abs(mask.float().mean().item() - 0.8) < 0.03
    with pytest.raises(ValueError, match="p=1.5"):
        history_noise_mask(2, torch.Generator(), p=1.5)


# ----------------------------------------------------------------------------- condition length


def test_sample_history_length_distribution():
    generator = torch.Generator().manual_seed(0)
    draws = [sample_history_length(generator, 30) for _ in range(3000)]
    share = lambda cond: sum(map(cond, draws)) / len(draws)  # noqa: E731
    assert abs(share(lambda n: n == 1) - 0.15) < 0.03
    assert min(draws) == 1 and max(draws) == 30 and all(n == 1 or n >= 2 for n in draws)
    assert share(lambda n: n == 8) > 0.1 + 0.75 / 29 - 0.03  # the 10 % "n = target" branch plus U's share
    spatial = [sample_history_length(generator, 30, dataset="spatialvid") for _ in range(3000)]
    assert abs(sum(n == 1 for n in spatial) / 3000 - 0.4) < 0.03


def test_sample_history_length_deterministic_and_bounded():
    a = [sample_history_length(torch.Generator().manual_seed(s), 12, clip_len=17) for s in range(50)]
    b = [sample_history_length(torch.Generator().manual_seed(s), 12, clip_len=17) for s in range(50)]
    assert a == b and max(a) <= 12
    with pytest.raises(ValueError, match="max_len=0"):
        sample_history_length(torch.Generator(), 0)
