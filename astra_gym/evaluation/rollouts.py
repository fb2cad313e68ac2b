"""Held-out rollout evaluation: a world model against the simulator's own continuation.

For every *start* (a frame index ``s`` of a held-out episode)::

    frames[s .. s+C-1]            C real context frames (reset of the rollout)
    actions[s+C-1 .. s+C-2+H]     the H = chunks x P real actions that followed (P frames per chunk)
    frames[s+C .. s+C-1+H]        the recorded real continuation = the simulator's continuation
                                  under those actions (checkable by ground-truth replay)

the model is rolled out twice from the same context and the same noise seed (common random
numbers): under the real actions (``gen_true``) and under random actions drawn like the data's
random policy, with its action persistence (``gen_random``, :func:`random_actions`). Frame ``i``
of a rollout is compared with ``frames[s+C+i]``; chunk k (1-based) holds rollout frames
``(k-1)P .. kP-1``.

Metrics (all per chunk and overall, see :func:`evaluate_rollouts`):

* fidelity: PSNR and SSIM of ``gen_true`` vs real (and of ``gen_random`` vs real);
* ΔPSNR = PSNR(real, gen_true) - PSNR(real, gen_random) (Genie);
* inverse dynamics: an IDM trained on real frames reads the actions back from the real video,
  from ``gen_true`` (true labels) and from ``gen_random`` (the random labels); the windows of the
  first transitions reach into the real context frames, identically for real and generated video;
* reward model: reward MAE / termination accuracy of the checkpoint's reward model on the real
  and on the generated frames against the recorded rewards;
* VAE ceiling: PSNR of the VAE's reconstruction of the real continuation, the best any rollout
  through that VAE could score;
* optional ground-truth replay (:func:`replay_continuations`): the simulator's own continuation
  under the *random* actions, so ``gen_random`` gets a fidelity score too, and a check that the
  replayed true-action continuation equals the recording.

Starts are evenly spaced over each episode's usable range (deterministic), every random draw is
seeded from ``(plan.seed, episode index, start)``, so a result is reproducible and independent of
the batch size (the rollout engine is batch invariant on CPU).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from astra_gym.data.action_codecs import FEATURES, INFERENCE_FEATURE, aggregate_rows, native_action_rows
from astra_gym.data.episodes import Episode
from astra_gym.data.policies import RandomHold, WorkspaceGuard, make_policy
from astra_gym.evaluation import metrics
from astra_gym.evaluation.idm import (
    InverseDynamicsModel,
    action_labels,
    predict,
    score_predictions,
    transition_windows,
)
from astra_gym.rollout.engine import WorldModelRollout
from astra_gym.utils.pixels import pixels_to_uint8, uint8_to_pixels

__all__ = [
    "EvalPlan",
    "EvalStart",
    "RolloutOutputs",
    "start_frames",
    "random_actions",
    "make_starts",
    "latent_rows",
    "context_rows",
    "run_rollouts",
    "reconstruct",
    "replay_continuations",
    "evaluate_rollouts",
]


@dataclass(frozen=True)
class EvalPlan:
    """What is rolled out from every start.

    Attributes:
        scenario: ``"drive"``, ``"manipulation"`` or ``"explore"``.
        context: Real context frames C (>= 1; ``(C - 1)`` a multiple of ``temporal_factor``).
        chunks: Chunks N generated per rollout.
        chunk_latents: Latents F per chunk (the engine's ``chunk_latents``).
        temporal_factor: The VAE's pixel frames per latent.
        starts_per_episode: Starts per episode, evenly spaced over its usable range.
        seed: Seed of the random actions and of the rollout noise.
    """

    scenario: str
    context: int
    chunks: int
    chunk_latents: int = 1
    temporal_factor: int = 1
    starts_per_episode: int = 4
    seed: int = 0

    def __post_init__(self) -> None:
        if self.scenario not in INFERENCE_FEATURE:
            raise ValueError(f"unknown scenario {self.scenario!r}; choose one of {sorted(INFERENCE_FEATURE)}")
        if min(self.context, self.chunks, self.chunk_latents, self.temporal_factor, self.starts_per_episode) < 1:
            raise ValueError(
                f"context, chunks, chunk_latents, temporal_factor and starts_per_episode must be >= 1: {self}"
            )
        if (self.context - 1) % self.temporal_factor:
            raise ValueError(
                f"context={self.context} frames do not make whole latents with temporal factor "
                f"{self.temporal_factor}; use 1 + k*{self.temporal_factor} frames"
            )

    @property
    def frames_per_chunk(self) -> int:
        """P = F * temporal_factor pixel frames per chunk."""
        return self.chunk_latents * self.temporal_factor

    @property
    def horizon(self) -> int:
        """H = N * P generated frames per rollout."""
        return self.chunks * self.frames_per_chunk

    @property
    def steps_needed(self) -> int:
        """Actions an episode must have after a start: ``C - 1 + H``."""
        return self.context - 1 + self.horizon


@dataclass(frozen=True)
class EvalStart:
    """One start of one held-out episode (module docstring).

    Attributes:
        episode: Index of the episode in the evaluated list.
        source: Where the episode came from (file path).
        start: Frame index s of the first context frame.
        frames: uint8 [C + H, H_px, W_px, 3] real context + real continuation.
        actions: [C - 1 + H, ...] native actions; ``actions[t]`` produced ``frames[t + 1]``.
        random_actions: Same shape; the first C - 1 rows equal ``actions``, the rest are random.
        rewards: [H] float32 recorded rewards of the continuation steps.
        terminated: [H] bool recorded terminations of the continuation steps.
        button_names: ViZDoom buttons of the action columns (explore), else None.
        noise_seed: Seed of both rollouts' noise.
    """

    episode: int
    source: str
    start: int
    frames: np.ndarray
    actions: np.ndarray
    random_actions: np.ndarray
    rewards: np.ndarray
    terminated: np.ndarray
    button_names: tuple[str, ...] | None
    noise_seed: int


def start_frames(num_steps: int, plan: EvalPlan) -> list[int]:
    """Evenly spaced start frames of an episode with ``num_steps`` actions ([] if it is too short)."""
    last = num_steps - plan.steps_needed
    if last < 0:
        return []
    return sorted({int(s) for s in np.linspace(0, last, plan.starts_per_episode).round()})


def random_actions(
    scenario: str, count: int, rng: np.random.Generator, button_names: Sequence[str] = ()
) -> np.ndarray:
    """``count`` native actions of the scenario's random data policy (random values, random hold times).

    The actions are drawn open-loop, since a rollout has no simulator state to react to: the
    values and hold times of the data's :class:`~astra_gym.data.policies.RandomHold`, without
    closed-loop wrappers such as :class:`~astra_gym.data.policies.WorkspaceGuard` (which flips
    Fetch motions that would leave the workspace).

    Args:
        scenario: Scenario name.
        count: Actions to draw.
        rng: The only source of randomness.
        button_names: ViZDoom buttons (explore).

    Returns:
        [count, ...] native actions (the recorder's dtypes: float32, or int8 buttons).
    """
    policy = make_policy("random", scenario, tuple(button_names))
    if isinstance(policy, WorkspaceGuard):
        policy = policy.policy
    if not isinstance(policy, RandomHold):
        raise TypeError(
            f"the {scenario} random policy is a {type(policy).__name__}, not an open-loop RandomHold; "
            "teach random_actions to unwrap it"
        )
    policy.reset(None, rng)  # RandomHold reads neither the env nor the observation
    actions = np.stack([policy.act(None, None) for _ in range(count)])
    return actions.astype(np.int8 if scenario == "explore" else np.float32)


def _seeds(plan: EvalPlan, episode: int, start: int) -> tuple[int, np.random.Generator]:
    """(noise seed, random-action generator) of one start."""
    noise = int(np.random.SeedSequence([plan.seed, 0, episode, start]).generate_state(1, np.uint32)[0])
    return noise, np.random.default_rng([plan.seed, 1, episode, start])


def make_starts(episodes: Sequence[tuple[str, Episode]], plan: EvalPlan) -> list[EvalStart]:
    """Every start of the held-out episodes.

    Args:
        episodes: (source, episode) pairs of ``plan.scenario``.
        plan: The evaluation plan.

    Returns:
        The starts, episode by episode (episodes shorter than ``plan.steps_needed`` give none).
    """
    starts = []
    for index, (source, ep) in enumerate(episodes):
        if ep.scenario != plan.scenario:
            raise ValueError(f"{source} is a {ep.scenario!r} episode; this evaluation is for {plan.scenario!r}")
        buttons = _buttons(source, ep) if plan.scenario == "explore" else None
        for s in start_frames(ep.num_steps, plan):
            starts.append(_make_start(index, source, ep, s, plan, buttons))
    return starts


def _buttons(source: str, ep: Episode) -> tuple[str, ...]:
    if "button_names" not in ep.attrs:
        raise ValueError(f"explore episode {source} has no attrs['button_names']; re-record it with astra_gym.data")
    return tuple(ep.attrs["button_names"])


def _make_start(index: int, source: str, ep: Episode, s: int, plan: EvalPlan, buttons: tuple | None) -> EvalStart:
    noise, rng = _seeds(plan, index, s)
    c, h = plan.context, plan.horizon
    actions = ep.actions[s : s + c - 1 + h]
    drawn = random_actions(plan.scenario, h, rng, buttons or ()).astype(actions.dtype)
    return EvalStart(
        episode=index,
        source=source,
        start=s,
        frames=ep.frames[s : s + c + h],
        actions=actions,
        random_actions=np.concatenate([actions[: c - 1], drawn]),
        rewards=ep.rewards[s + c - 1 : s + c - 1 + h],
        terminated=ep.terminated[s + c - 1 : s + c - 1 + h],
        button_names=buttons,
        noise_seed=noise,
    )


# ------------------------------------------------------------------------------------------------
# Action rows
# ------------------------------------------------------------------------------------------------


def latent_rows(
    scenario: str, actions: np.ndarray, temporal_factor: int, button_names: Sequence[str] | None = None
) -> np.ndarray:
    """Native actions of whole latents -> one model row per latent, in feature units.

    The checkpoint's action normalisation is applied by the engine (its ``action_scale``).

    Args:
        scenario: Scenario name (its inference feature is used).
        actions: [k * tf, ...] native actions; group j (steps j*tf .. j*tf+tf-1) produced latent j.
        temporal_factor: tf.
        button_names: ViZDoom buttons (explore).

    Returns:
        [k, d] float32 rows without the flag.
    """
    rows = native_action_rows(scenario, actions, None if button_names is None else list(button_names))
    if len(rows) % temporal_factor:
        raise ValueError(f"{len(rows)} actions do not fill whole latents of {temporal_factor} steps")
    aggregation = FEATURES[INFERENCE_FEATURE[scenario]].aggregation
    groups = rows.reshape(-1, temporal_factor, rows.shape[1])
    out = np.stack([aggregate_rows(g, aggregation) for g in groups]) if len(groups) else rows[:0]
    return out.astype(np.float32)


def context_rows(start: EvalStart, plan: EvalPlan) -> np.ndarray:
    """[L_c, d] rows of the context latents (exact convention: latent 0 gets the null row)."""
    prefix = latent_rows(plan.scenario, start.actions[: plan.context - 1], plan.temporal_factor, start.button_names)
    return np.concatenate([np.zeros((1, prefix.shape[1]), np.float32), prefix])


def _chunk_rows(starts: Sequence[EvalStart], plan: EvalPlan, k: int, random: bool) -> np.ndarray:
    """[B, F, d] rows of chunk k (0-based) of every start."""
    lo = plan.context - 1 + k * plan.frames_per_chunk
    rows = []
    for st in starts:
        actions = (st.random_actions if random else st.actions)[lo : lo + plan.frames_per_chunk]
        rows.append(latent_rows(plan.scenario, actions, plan.temporal_factor, st.button_names))
    return np.stack(rows)


# ------------------------------------------------------------------------------------------------
# Rollouts
# ------------------------------------------------------------------------------------------------


@dataclass
class RolloutOutputs:
    """What the model made of every start.

    Attributes:
        gen_true: uint8 [S, H, H_px, W_px, 3] rollouts under the real actions.
        gen_random: uint8 [S, H, H_px, W_px, 3] rollouts under the random actions (None when not rolled).
        vae_recon: uint8 [S, H, H_px, W_px, 3] VAE reconstruction of the real continuation.
        reward_gen: [S, N] predicted reward of each chunk of ``gen_true`` (None without reward model).
        reward_real: [S, N] predicted reward of each real chunk.
        termination_gen: [S, N] termination logits on ``gen_true``.
        termination_real: [S, N] termination logits on the real chunks.
    """

    gen_true: np.ndarray
    gen_random: np.ndarray | None
    vae_recon: np.ndarray
    reward_gen: np.ndarray | None = None
    reward_real: np.ndarray | None = None
    termination_gen: np.ndarray | None = None
    termination_real: np.ndarray | None = None


def run_rollouts(
    engine: WorldModelRollout,
    starts: Sequence[EvalStart],
    plan: EvalPlan,
    batch_size: int = 8,
    progress: Callable[[int, int], None] | None = None,
    random: bool = True,
) -> RolloutOutputs:
    """Rolls out every start under its true and its random actions (2 engine rows per start).

    Args:
        engine: The world model (``chunk_latents`` and VAE temporal factor must match ``plan``).
        starts: From :func:`make_starts`.
        plan: The evaluation plan.
        batch_size: Starts per engine call (2 * batch_size rows).
        progress: Called with (starts done, total) after each batch.
        random: Also roll out the random actions (False: one engine row per start, ``gen_random`` None).

    Returns:
        The rollouts, VAE reconstructions and (if the engine has a reward model) reward predictions.
    """
    if engine.config.chunk_latents != plan.chunk_latents or engine.temporal_factor != plan.temporal_factor:
        raise ValueError(
            f"the engine makes chunks of {engine.config.chunk_latents} latents x {engine.temporal_factor} frames but "
            f"the plan expects {plan.chunk_latents} x {plan.temporal_factor}; build the plan from the engine"
        )
    parts: list[dict[str, np.ndarray]] = []
    for lo in range(0, len(starts), batch_size):
        parts.append(_rollout_batch(engine, starts[lo : lo + batch_size], plan, random))
        if progress is not None:
            progress(min(lo + batch_size, len(starts)), len(starts))
    merged = {key: _concat([p[key] for p in parts]) for key in parts[0]} if parts else {}
    return RolloutOutputs(**merged)


def _concat(parts: list[np.ndarray | None]) -> np.ndarray | None:
    return None if parts[0] is None else np.concatenate(parts)


def _rollout_batch(
    engine: WorldModelRollout, starts: Sequence[EvalStart], plan: EvalPlan, random: bool = True
) -> dict[str, np.ndarray | None]:
    """Rollouts of one batch: rows 0..b-1 true actions, rows b..2b-1 (if ``random``) random actions, same noise."""
    b, c, copies = len(starts), plan.context, 2 if random else 1
    context = np.stack([st.frames[:c] for st in starts])
    ctx_rows = np.stack([context_rows(st, plan) for st in starts])
    seeds = [st.noise_seed for st in starts] * copies
    state = engine.reset(
        np.concatenate([context] * copies), seeds, context_actions=np.concatenate([ctx_rows] * copies)
    )
    real = np.stack([st.frames for st in starts])  # [b, C + H, ...]
    frames, rewards = [], []
    for k in range(plan.chunks):
        rows = [_chunk_rows(starts, plan, k, False)] + ([_chunk_rows(starts, plan, k, True)] if random else [])
        rows = np.concatenate(rows)
        state, chunk = engine.step(state, rows)
        frames.append(chunk.cpu().numpy())
        if engine.reward_model is not None:
            rewards.append(_score_chunk(engine, real, np.concatenate(frames, 1)[:b], rows[:b], c, plan, k))
    video = np.concatenate(frames, 1)  # [copies * b, H, ...]
    gen_random = video[b:] if random else None
    out = {"gen_true": video[:b], "gen_random": gen_random, "vae_recon": reconstruct(engine, real)[:, c:]}
    if rewards:
        for i, key in enumerate(("reward_gen", "termination_gen", "reward_real", "termination_real")):
            out[key] = np.stack([r[i] for r in rewards], 1)
    return out


def _score_chunk(
    engine: WorldModelRollout, real: np.ndarray, gen: np.ndarray, rows: np.ndarray, c: int, plan: EvalPlan, k: int
) -> tuple[np.ndarray, ...]:
    """Reward-model outputs for chunk k of the generated and of the real video.

    The reward model reads the newest ``num_frames`` frames up to the end of the chunk (context
    frames included, the first frame repeated if there are too few, as in its training) and the
    chunk's first action row, exactly like :meth:`WorldModelRollout.score`; it is called directly so
    that real and generated frames go through the same code.
    """
    end = c + (k + 1) * plan.frames_per_chunk  # frames of context + chunks 0..k
    gen_seq = np.concatenate([real[:, :c], gen], 1)[:, :end]
    outputs = [*_reward(engine, gen_seq, rows[:, 0]), *_reward(engine, real[:, :end], rows[:, 0])]
    return tuple(t.float().cpu().numpy() for t in outputs)


@torch.inference_mode()
def _reward(engine: WorldModelRollout, video: np.ndarray, rows: np.ndarray) -> tuple[torch.Tensor, torch.Tensor]:
    """(reward [B], termination logit [B]) of the newest frames of uint8 [B, T, H, W, 3] videos.

    ``rows`` [B, d] are in feature units; they are normalised with the engine's ``action_scale``.
    """
    model = engine.reward_model
    k = model.config.num_frames
    newest = video[:, -k:]
    if newest.shape[1] < k:  # too few frames: repeat the first
        newest = np.concatenate([np.repeat(newest[:, :1], k - newest.shape[1], 1), newest], 1)
    frames = torch.from_numpy(np.ascontiguousarray(newest)).to(engine.device)  # uint8 travels, not float32
    pixels = uint8_to_pixels(frames, channel_dim=-3)  # [B, k, 3, H, W]
    return model(pixels, torch.from_numpy(rows).float().to(engine.device) / engine.action_scale)


@torch.inference_mode()
def reconstruct(engine: WorldModelRollout, frames: np.ndarray) -> np.ndarray:
    """uint8 VAE encode + decode of [B, T, H, W, 3] whole sequences (the rollouts' fidelity ceiling)."""
    vae = engine.vae
    pixels = uint8_to_pixels(torch.from_numpy(frames).to(engine.device))
    decoded = vae.decode(vae.encode(pixels.to(vae.param_dtype)))
    out = pixels_to_uint8(decoded).cpu().numpy()
    if out.shape[1] < frames.shape[1]:  # trailing frames that make no whole latent
        out = np.concatenate([out, frames[:, out.shape[1] :]], 1)
    return out


# ------------------------------------------------------------------------------------------------
# Ground-truth replay (needs the simulators)
# ------------------------------------------------------------------------------------------------


def replay_continuations(
    episodes: Sequence[tuple[str, Episode]], starts: Sequence[EvalStart], plan: EvalPlan
) -> tuple[list[np.ndarray | None], list[dict[str, Any]]]:
    """The simulator's continuation of every start under its random actions, plus a replay check.

    For each start the simulator is rebuilt at the last context frame (reset with the episode's
    seed, then its action prefix, :func:`astra_gym.data.replay.replay`) twice: once continued with
    the recorded actions (compared with the recording) and once with the random actions.

    Args:
        episodes: The (source, episode) pairs the starts were made from.
        starts: From :func:`make_starts`.
        plan: The evaluation plan.

    Returns:
        (real_random, checks): per start, uint8 [H, H_px, W_px, 3] frames of the random-action
        continuation (None if the simulator ended the episode early), and a dict with
        ``max_abs_diff`` / ``equal`` of the replayed vs recorded true continuation.
    """
    from astra_gym.data.replay import replay  # needs the simulators (the `sims` extra)

    real_random, checks = [], []
    for st in starts:
        ep = episodes[st.episode][1]
        prefix = st.start + plan.context - 1
        with replay(ep, prefix) as session:
            again = session.continue_with(st.actions[plan.context - 1 :]).frames[1:]
        recorded = st.frames[plan.context :]
        same = again.shape == recorded.shape
        diff = int(np.abs(again.astype(np.int16) - recorded.astype(np.int16)).max()) if same else None
        checks.append(
            {"episode": st.episode, "start": st.start, "equal": bool(same and diff == 0), "max_abs_diff": diff}
        )
        with replay(ep, prefix) as session:
            branch = session.continue_with(st.random_actions[plan.context - 1 :]).frames[1:]
        real_random.append(branch if len(branch) == plan.horizon else None)
    return real_random, checks


# ------------------------------------------------------------------------------------------------
# Metrics
# ------------------------------------------------------------------------------------------------


def evaluate_rollouts(
    starts: Sequence[EvalStart],
    outputs: RolloutOutputs,
    plan: EvalPlan,
    idm: InverseDynamicsModel | None = None,
    real_random: Sequence[np.ndarray | None] | None = None,
) -> dict[str, Any]:
    """Every metric of the module docstring, per chunk and overall.

    Args:
        starts: The starts.
        outputs: :func:`run_rollouts` of those starts.
        plan: The evaluation plan.
        idm: IDM trained on real frames of the scenario (None skips the IDM metrics).
        real_random: :func:`replay_continuations` frames (None skips the replay metrics).

    Returns:
        JSON-ready ``{"per_chunk": [one dict per chunk], "summary": {...}}``; PSNR means are capped
        at :data:`~astra_gym.evaluation.metrics.PSNR_CAP_DB` (uncapped means and the count of
        exact frames are in the summary).
    """
    if not starts:
        raise ValueError("no evaluation starts: the held-out episodes are shorter than context - 1 + chunks x frames")
    if outputs.gen_random is None:
        raise ValueError("these outputs have no random-action rollouts; make them with run_rollouts(..., random=True)")
    real = np.stack([st.frames[plan.context :] for st in starts])  # [S, H, ...]
    frame = _frame_metrics(real, outputs)
    per_chunk = _per_chunk_frames(frame, plan.frames_per_chunk)
    summary = {name: metrics.summarize(values, _cap(name)) for name, values in frame.items()}
    if idm is not None:
        idm_chunks, summary["idm"] = _idm_metrics(idm, starts, outputs, plan)
        _merge(per_chunk, idm_chunks)
    if real_random is not None:
        replay_chunks, summary["replay_random"] = _replay_metrics(outputs, real_random, plan)
        _merge(per_chunk, replay_chunks)
    if outputs.reward_gen is not None:
        reward_chunks, summary["reward_model"] = _reward_metrics(starts, outputs, plan)
        _merge(per_chunk, reward_chunks)
    summary["num_starts"] = len(starts)
    summary["num_episodes"] = len({st.episode for st in starts})
    return {"per_chunk": per_chunk, "summary": summary}


def _cap(name: str) -> float | None:
    return metrics.PSNR_CAP_DB if "psnr" in name else None


def _frame_metrics(real: np.ndarray, outputs: RolloutOutputs) -> dict[str, np.ndarray]:
    """[S, H] per-frame arrays of every frame metric."""
    return {
        "psnr": metrics.psnr(real, outputs.gen_true),
        "ssim": metrics.ssim(real, outputs.gen_true),
        "psnr_random": metrics.psnr(real, outputs.gen_random),
        "ssim_random": metrics.ssim(real, outputs.gen_random),
        "delta_psnr": metrics.delta_psnr(real, outputs.gen_true, outputs.gen_random),
        "vae_recon_psnr": metrics.psnr(real, outputs.vae_recon),
    }


def _per_chunk_frames(frame: dict[str, np.ndarray], frames_per_chunk: int) -> list[dict[str, Any]]:
    """Per-chunk capped means of every frame metric (plus the exact-frame count of PSNR)."""
    rows = [{"chunk": k + 1} for k in range(frame["psnr"].shape[1] // frames_per_chunk)]
    for name, values in frame.items():
        for row, stats in zip(rows, metrics.per_chunk_summary(values, frames_per_chunk, _cap(name)), strict=True):
            row[name] = stats["mean_capped"]
            if name == "psnr":
                row["psnr_num_inf"] = stats["num_inf"]
    return rows


def _merge(rows: list[dict[str, Any]], extra: list[dict[str, Any]]) -> None:
    for row, more in zip(rows, extra, strict=True):
        row.update(more)


def _idm_metrics(
    idm: InverseDynamicsModel, starts: Sequence[EvalStart], outputs: RolloutOutputs, plan: EvalPlan
) -> tuple[list[dict[str, Any]], dict[str, Any]]:
    """IDM scores on real, VAE-reconstructed real (what survives the VAE: the ceiling of any
    generated video), generated (true labels) and random-action generated video.

    Per chunk: ``idm_<video>`` is the balanced accuracy, ``idm_<video>_accuracy`` the plain mean
    accuracy. Summary: :func:`~astra_gym.evaluation.idm.score_predictions` per video, plus
    ``ratio_generated_to_real`` (balanced accuracy, generated / real) and ``above_chance_ratio``
    ((generated - chance) / (real - chance): the share of the IDM's above-chance skill on real
    video that survives on generated video; 0 for a model that ignores its actions).
    """
    steps, chunk_of = _idm_transitions(idm, plan)
    chunk_index = np.tile(chunk_of, len(starts))
    summary, per_chunk = {}, [{} for _ in range(plan.chunks)]
    for name, (windows, true) in _idm_inputs(idm, starts, outputs, plan, steps).items():
        predicted = predict(idm, windows)
        summary[name] = score_predictions(predicted, true, idm.config.heads)
        for k in range(plan.chunks):
            mask = chunk_index == k
            scores = score_predictions(predicted[mask], true[mask], idm.config.heads)
            per_chunk[k][f"idm_{name}"] = scores["balanced_accuracy"]
            per_chunk[k][f"idm_{name}_accuracy"] = scores["mean_accuracy"]
    real, gen = summary["real"], summary["generated"]
    summary["ratio_generated_to_real"] = _safe_div(gen["balanced_accuracy"], real["balanced_accuracy"])
    summary["ratio_generated_to_vae_recon"] = _safe_div(
        gen["balanced_accuracy"], summary["vae_recon"]["balanced_accuracy"]
    )
    chance = real["balanced_chance"]
    summary["above_chance_ratio"] = _safe_div(gen["balanced_accuracy"] - chance, real["balanced_accuracy"] - chance)
    return per_chunk, summary


def _idm_transitions(idm: InverseDynamicsModel, plan: EvalPlan) -> tuple[np.ndarray, np.ndarray]:
    """Transitions t whose frame t+1 is generated (and that have the IDM's history), and their chunk."""
    first = max(plan.context - 1, idm.config.frames_before)
    steps = np.arange(first, plan.steps_needed)
    return steps, (steps - (plan.context - 1)) // plan.frames_per_chunk


def _idm_inputs(
    idm: InverseDynamicsModel, starts: Sequence[EvalStart], outputs: RolloutOutputs, plan: EvalPlan, steps: np.ndarray
) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """{video kind: (windows uint8 [S * n, ...], labels [S * n, heads])}; windows reach into the real context."""
    cfg = idm.config
    names = ("real", "vae_recon", "generated", "generated_random")
    out: dict[str, tuple[list, list]] = {name: ([], []) for name in names}
    for i, st in enumerate(starts):
        true = action_labels(cfg, st.actions, st.button_names)[steps]
        rand = action_labels(cfg, st.random_actions, st.button_names)
        videos = {
            "real": st.frames[plan.context :],
            "vae_recon": outputs.vae_recon[i],
            "generated": outputs.gen_true[i],
            "generated_random": outputs.gen_random[i],
        }
        labels = {"real": true, "vae_recon": true, "generated": true, "generated_random": rand[steps]}
        for name, video in videos.items():
            full = np.concatenate([st.frames[: plan.context], video])
            out[name][0].append(transition_windows(full, steps, cfg.frames_before))
            out[name][1].append(labels[name])
    return {name: (np.concatenate(w), np.concatenate(y)) for name, (w, y) in out.items()}


def _safe_div(a: float | None, b: float | None) -> float | None:
    return None if a is None or not b else float(a / b)


def _replay_metrics(
    outputs: RolloutOutputs, real_random: Sequence[np.ndarray | None], plan: EvalPlan
) -> tuple[list[dict[str, Any]], dict[str, Any]]:
    """Fidelity of the random-action rollouts against the simulator's random-action continuation."""
    keep = [i for i, frames in enumerate(real_random) if frames is not None]
    if not keep:
        return [{} for _ in range(plan.chunks)], {"count": 0}
    target = np.stack([real_random[i] for i in keep])
    values = {
        "psnr_replay_random": metrics.psnr(target, outputs.gen_random[keep]),
        "ssim_replay_random": metrics.ssim(target, outputs.gen_random[keep]),
    }
    rows = _per_chunk_frames({**values, "psnr": values["psnr_replay_random"]}, plan.frames_per_chunk)
    per_chunk = [{k: row[k] for k in values} for row in rows]
    summary = {name: metrics.summarize(v, _cap(name)) for name, v in values.items()}
    return per_chunk, {**summary, "num_starts": len(keep), "num_ended_early": len(real_random) - len(keep)}


def _reward_metrics(
    starts: Sequence[EvalStart], outputs: RolloutOutputs, plan: EvalPlan
) -> tuple[list[dict[str, Any]], dict[str, Any]]:
    """Reward MAE and termination accuracy on real and on generated chunks vs the recorded values."""
    p = plan.frames_per_chunk
    target = np.stack([st.rewards.reshape(-1, p).sum(1) for st in starts])  # [S, N]
    ended = np.stack([st.terminated.reshape(-1, p).any(1) for st in starts])
    summary, per_chunk = {}, [{} for _ in range(plan.chunks)]
    for name, reward, logit in (
        ("real", outputs.reward_real, outputs.termination_real),
        ("generated", outputs.reward_gen, outputs.termination_gen),
    ):
        error = np.abs(reward - target)
        summary[name] = {
            "reward_mae": float(error.mean()),
            "reward_rmse": float(np.sqrt((error**2).mean())),
            "termination_accuracy": float(np.mean((logit > 0) == ended)),
        }
        for k in range(plan.chunks):
            per_chunk[k][f"reward_mae_{name}"] = float(error[:, k].mean())
    summary["target_reward_mean"] = float(target.mean())
    summary["target_reward_std"] = float(target.std())
    return per_chunk, summary
