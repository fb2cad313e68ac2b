"""Recorded episodes re-imagined by a world model, with the real simulator's rewards.

A reward model trained on real frames (or on the VAE's reconstructions of them) is asked, inside
the env, to score frames the world model made. Where the two differ, an agent trained inside finds
the difference: on Manipulation ``progress`` PPO's imagined return climbs to +5 per episode while
its real return stays below standing still (``benchmarks/RESULTS.md``, session 12).

This module makes the training data that closes the gap. From evenly spaced starts of recorded
episodes the world model is reset on ``context`` real frames (as the env resets on a frame bank's
contexts) and rolled out ``horizon`` steps under the actions that were actually taken next::

    frames    [context frame s+C-1 (VAE reconstruction)] + [H imagined frames]      H + 1 frames
    actions   actions[s+C-1 .. s+C-2+H]                                             H (the recorded ones)
    rewards   rewards[s+C-1 .. s+C-2+H]                                             the simulator's own

Each piece is an :class:`~astra_gym.data.episodes.Episode` (poses and step indices sliced alike,
``attrs["imagined"]`` saying where it came from), so any reward-model trainer reads it. A reward
model trained on them learns what the simulator paid for those actions, read from what the world
model made of them: where the model imagines progress that did not happen, the label says so.
Collected with an agent's own policy (``python -m astra_gym.agents.dyna``'s data), this covers the
states that agent exploits.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Sequence

import numpy as np

from astra_gym.data.episodes import Episode
from astra_gym.evaluation.rollouts import EvalPlan, EvalStart, make_starts, reconstruct, run_rollouts
from astra_gym.rollout.engine import WorldModelRollout

__all__ = ["imagine_episodes"]


def imagine_episodes(
    episodes: Sequence[Episode],
    engine: WorldModelRollout,
    horizon: int,
    starts_per_episode: int,
    context: int = 4,
    seed: int = 0,
    batch_size: int = 16,
    progress: Callable[[int, int], None] | None = None,
) -> list[Episode]:
    """Imagined pieces of ``episodes`` under their recorded actions (module docstring).

    Args:
        episodes: Recorded episodes of the engine's scenario (rewards already those of the task).
        engine: The world model, with its sampler (the env's).
        horizon: Imagined steps H per piece (a multiple of the engine's frames per chunk).
        starts_per_episode: Pieces per episode, evenly spaced (episodes too short give fewer or none).
        context: Real frames C the world model is reset on.
        seed: Seed of the rollout noise (per start, as in :mod:`astra_gym.evaluation.rollouts`).
        batch_size: Pieces rolled out per engine call.
        progress: Called with (pieces done, total) after each batch.

    Returns:
        One episode of H steps and H + 1 frames per start, episode by episode.

    Raises:
        ValueError: The episodes are of another scenario, or ``horizon`` does not fill whole chunks.
    """
    frames_per_chunk = engine.frames_per_step
    if horizon < 1 or horizon % frames_per_chunk:
        raise ValueError(
            f"horizon={horizon} must be a positive multiple of the engine's {frames_per_chunk} frames per chunk"
        )
    if not episodes:
        return []
    plan = EvalPlan(
        episodes[0].scenario,
        context,
        horizon // frames_per_chunk,
        engine.config.chunk_latents,
        engine.temporal_factor,
        starts_per_episode,
        seed,
    )
    starts = make_starts([(f"episode {i}", ep) for i, ep in enumerate(episodes)], plan)
    pieces = []
    for lo in range(0, len(starts), batch_size):
        batch = starts[lo : lo + batch_size]
        video = run_rollouts(engine, batch, plan, len(batch), random=False).gen_true  # [b, H, ...]
        first = reconstruct(engine, np.stack([st.frames[context - 1 : context] for st in batch]))  # [b, 1, ...]
        for st, f, v in zip(batch, first, video, strict=True):
            pieces.append(_piece(episodes[st.episode], st, np.concatenate([f, v]), plan))
        if progress is not None:
            progress(len(pieces), len(starts))
    return pieces


def _piece(ep: Episode, start: EvalStart, frames: np.ndarray, plan: EvalPlan) -> Episode:
    """The recorded episode's steps ``s+C-1 .. s+C-2+H`` with ``frames`` [H + 1, ...] as their frames."""
    lo = start.start + plan.context - 1
    hi = lo + plan.horizon
    truncated = ep.truncated[lo:hi].copy()
    truncated[-1] = not ep.terminated[hi - 1]  # the piece ends here, like a recording's step budget
    return dataclasses.replace(
        ep,
        frames=frames,
        actions=ep.actions[lo:hi],
        rewards=ep.rewards[lo:hi],
        terminated=ep.terminated[lo:hi],
        truncated=truncated,
        step_index=ep.step_index[lo : hi + 1],
        poses={key: value[lo : hi + 1] for key, value in ep.poses.items()},
        attrs={**ep.attrs, "imagined": {"first_step": lo, "context": plan.context, "horizon": plan.horizon}},
    )
