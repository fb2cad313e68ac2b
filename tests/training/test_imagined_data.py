"""Recorded episodes re-imagined by a world model: the pieces are the model's rollouts under the
recorded actions, with the recorded rewards, poses and step indices of the same steps."""

from __future__ import annotations

import numpy as np
import pytest

from astra_gym.data.synthetic import drive_episode
from astra_gym.evaluation.rollouts import EvalPlan, make_starts, reconstruct, run_rollouts
from astra_gym.rollout.bundle import debug_bundle
from astra_gym.training.imagined_data import imagine_episodes


@pytest.fixture(scope="module")
def engine():
    return debug_bundle("drive").engine(num_denoise_steps=1)


def _episodes():
    episodes = [drive_episode(6, 6, seed=i, size=32) for i in range(2)]
    for ep in episodes:
        ep.rewards[:] = np.arange(ep.num_steps, dtype=np.float32) + 100 * ep.seed  # tell the steps apart
    return episodes


def test_pieces_are_the_model_rollouts_under_the_recorded_actions(engine):
    episodes = _episodes()
    pieces = imagine_episodes(episodes, engine, horizon=4, starts_per_episode=3, context=2, seed=7, batch_size=2)
    plan = EvalPlan("drive", context=2, chunks=4, starts_per_episode=3, seed=7)
    starts = make_starts([(f"episode {i}", ep) for i, ep in enumerate(episodes)], plan)
    assert len(pieces) == len(starts) == 6
    # The evaluation's true-action rollouts (which roll the random actions alongside, in a batch twice as large).
    expected = run_rollouts(engine, starts, plan, batch_size=len(starts)).gen_true
    for piece, start, video in zip(pieces, starts, expected, strict=True):
        ep, lo = episodes[start.episode], start.start + 1  # the last context frame
        assert piece.num_steps == 4 and piece.frames.shape == (5, 32, 32, 3)
        _close(piece.frames[1:], video)
        _close(piece.frames[:1], reconstruct(engine, ep.frames[None, lo : lo + 1])[0])
        assert not np.array_equal(piece.frames[1:], ep.frames[lo + 1 : lo + 5])  # imagined, not recorded
        np.testing.assert_array_equal(piece.actions, ep.actions[lo : lo + 4])
        np.testing.assert_array_equal(piece.rewards, ep.rewards[lo : lo + 4])
        np.testing.assert_array_equal(piece.step_index, ep.step_index[lo : lo + 5])
        np.testing.assert_array_equal(piece.poses["vehicle_xy"], ep.poses["vehicle_xy"][lo : lo + 5])
        assert piece.truncated.tolist() == [False, False, False, True] and not piece.terminated.any()
        assert piece.attrs["imagined"] == {"first_step": lo, "context": 2, "horizon": 4}


def _close(a: np.ndarray, b: np.ndarray) -> None:
    """Equal up to one grey level (a batch of other size rounds the last float bits differently)."""
    np.testing.assert_allclose(a.astype(np.int16), b.astype(np.int16), atol=1, rtol=0)


def test_run_rollouts_without_random_actions(engine):
    episodes = _episodes()[:1]
    plan = EvalPlan("drive", context=1, chunks=3, starts_per_episode=2)
    starts = make_starts([("e", episodes[0])], plan)
    both, alone = (run_rollouts(engine, starts, plan, random=r) for r in (True, False))
    assert alone.gen_random is None and both.gen_random is not None
    _close(alone.gen_true, both.gen_true)
    from astra_gym.evaluation.rollouts import evaluate_rollouts

    with pytest.raises(ValueError, match="random=True"):
        evaluate_rollouts(starts, alone, plan)


def test_bad_horizon_and_short_episodes(engine):
    with pytest.raises(ValueError, match="horizon=0"):
        imagine_episodes(_episodes(), engine, horizon=0, starts_per_episode=1)
    assert imagine_episodes(_episodes(), engine, horizon=40, starts_per_episode=2) == []  # 12 steps: too short
    assert imagine_episodes([], engine, horizon=4, starts_per_episode=2) == []
