"""Can a planner trust the world model? Imagined vs real returns of the candidates a planner samples.

MPC picks, among sampled action sequences, the one with the best *imagined* return. That works if
(1) the distribution it samples from holds good sequences and (2) the imagined returns rank the
candidates as the real simulator does. For each real start (after a reset, and mid-episode after
expert steps; seeds never used in training) and each starting distribution of the planner
(``centre``: the action space's centre, ``data``: the world model's training-data actions, see
:func:`~astra_gym.agents.mpc.world_model.behaviour_prior`), this draws ``--candidates`` sequences of
``--horizon`` steps, imagines them all in one batched rollout (reward model on the imagined frames)
and replays each in the real simulator from the same state. Per (start kind, distribution, horizon
h) it reports:

* ``real_mean``: the mean real return of the candidates (how good the distribution is);
* ``real_of_best`` / ``real_max``: the real return of the imagined-best candidate and of the
  really best one (their gap is what a planner loses to the model's errors);
* ``imagined_mean`` and ``spearman``: the imagined mean, and the rank agreement of imagined and real
  returns among the candidates (mean over starts; nan where every real return is equal);
* ``read_mean``, ``read_spearman`` and ``real_of_read_best``: the same reward model read on the
  candidates' *real* frames instead of imagined ones, its rank agreement with the real returns, and the
  real return of the candidate it puts first. This separates the two ways a planner is misled: a low
  ``read_spearman`` is the reward model's fault, a high one with a low ``spearman`` the world model's.

``--penalties`` λ... (any above 0) also records the world model's disagreement at every imagined step
(two draws, :meth:`~astra_gym.rollout.engine.WorldModelRollout.disagreement`: the env's
``uncertainty_penalty``) and the pixel error of each candidate's imagined frame at step h against the
real one, and reports:

* ``spread_error_spearman``: the rank agreement, among the candidates, of the summed spread and that
  pixel error (does the spread say where the model is wrong?), and ``spread_return_error_spearman``
  with the imagined return's absolute error;
* ``real_of_best_penalised``: per λ, the real return of the candidate whose imagined return minus λ
  times its summed spread is best (what the penalty does for a planner; λ = 0 is ``real_of_best``).

``--task`` (e.g. ``progress`` on Manipulation) scores both sides with an agent task: the bundle's
reward model of it imagines, and the real rewards are relabelled from the simulator's poses, as the
agent benchmarks score it.

    python -m benchmarks.planning_signal --env Astra-Drive-v0 --starts 4 --out results/planning_signal_drive.json
    python -m benchmarks.planning_signal --env Astra-Manipulation-v0 --task progress --out results/ps_manip.json
    python -m benchmarks.planning_signal --env Astra-Manipulation-v0 --task progress --penalties 0 1 4 \
        --out results/ps_manip_spread.json
"""

from __future__ import annotations

import dataclasses
import time
from dataclasses import dataclass

import numpy as np
import torch
from tqdm import tqdm

from astra_gym.agents.mpc.sampling import make_sampler
from astra_gym.agents.mpc.world_model import WorldModelDynamics, data_prior, load_engine
from astra_gym.data.replay import replay
from astra_gym.data.tasks import Task, get_task, relabel
from astra_gym.envs.core import model_sim_config
from astra_gym.envs.spaces import action_space
from astra_gym.envs.variants import variant
from astra_gym.evaluation.metrics import mse
from astra_gym.utils.cli_args import arg, parse_config
from benchmarks.action_following import Start, make_start, reward_on_frames
from benchmarks.common import spearman, write_results

__all__ = [
    "Args", "Imagined", "imagine", "imagined_rewards", "read_real", "real_rewards", "replay_candidates", "summarise",
    "main",
]  # fmt: skip


@dataclass(frozen=True)
class Args:
    """Flags of ``planning_signal`` (each field's help is its ``--help`` text)."""

    env: str = arg("Astra-Drive-v0", help="Astra id: its world model imagines, its simulator replays")
    checkpoint: str | None = arg(None, help="world model (the env's checkpoint kwarg); none = the variant's bundle")
    task: str | None = arg(
        None,
        help="agent task (astra_gym.data.tasks) of both returns: its reward model imagines, the real rewards are "
        "relabelled from the poses; none = the simulator's own reward",
    )
    starts: int = arg(4, help="real starts per kind (seeds 20000, 20001, ...: never used in training)")
    kinds: tuple[str, ...] = arg(("reset", "mid"), help="start kinds: reset (at rest) and/or mid (after --warm)")
    warm: int = arg(60, help="expert steps before a mid start")
    priors: tuple[str, ...] = arg(("centre", "data"), help="planner starting distributions to compare")
    candidates: int = arg(16, help="sequences drawn per start and distribution")
    horizon: int = arg(16, help="steps per sequence; also reported at half of it")
    penalties: tuple[float, ...] = arg(
        (0.0,),
        help="uncertainty penalties λ to pick the imagined best with (imagined return - λ x summed spread); any "
        "above 0 records the model's spread (one more sampling pass per step)",
    )
    seed: int = arg(0, help="seeds the candidate draws and the model's noise")
    device: str = arg("cpu", help="world-model device")
    threads: int = arg(1, help="torch CPU threads")
    out: str = arg("results/planning_signal.json", help="JSON output")


@dataclass(frozen=True)
class Imagined:
    """n candidates imagined from one start.

    Attributes:
        rewards: float64 [n, H] reward-model rewards.
        frames: uint8 [n, H, h, w, 3] the newest frame after each step.
        spread: float64 [n, H] the model's disagreement at each step (None unless asked for).
    """

    rewards: np.ndarray
    frames: np.ndarray
    spread: np.ndarray | None = None


def imagine(
    dynamics: WorldModelDynamics, start: Start, actions: np.ndarray, seed: int, spread: bool = False
) -> Imagined:
    """The n candidate sequences [n, H, ...] imagined from ``start`` (with ``spread``, the disagreement too)."""
    state = dynamics.encode(start.frames, [None, *start.actions], seed)
    children = dynamics.fork(state, len(actions))
    rewards, frames, spreads = [], [], []
    for t in range(actions.shape[1]):
        before, children = children, dynamics.step(children, actions[:, t])
        rewards.append(dynamics.score(children, actions[:, t])[0])
        frames.append(children.recent_frames[:, -1].cpu().numpy())
        if spread:
            rows = dynamics.rows(actions[:, t])
            spreads.append(dynamics.engine.disagreement(before, rows, children).double().cpu().numpy())
    spread_out = np.stack(spreads, axis=1) if spread else None
    return Imagined(np.stack(rewards, axis=1), np.stack(frames, axis=1), spread_out)


def imagined_rewards(dynamics: WorldModelDynamics, start: Start, actions: np.ndarray, seed: int) -> np.ndarray:
    """Reward-model rewards [n, H] of n candidate sequences [n, H, ...] imagined from ``start``."""
    return imagine(dynamics, start, actions, seed).rewards


def replay_candidates(
    scenario: str, start: Start, actions: np.ndarray, task: Task | None = None
) -> tuple[np.ndarray, np.ndarray]:
    """Real rewards [n, H] (0 after the episode ends; the simulator's, or ``task``'s relabelled from the poses)
    and frames uint8 [n, H, h, w, 3] (the last one held after the end) of each sequence replayed from ``start``."""
    out, frames = np.zeros(actions.shape[:2]), []
    for row, sequence in enumerate(actions):
        with replay(start.seed, start.prefix, scenario=scenario, **start.sim_config) as session:
            piece = session.continue_with(sequence)
        rewards = piece.rewards if task is None else relabel(piece.poses, piece.rewards, task)
        out[row, : len(rewards)] = rewards
        got = piece.frames[1:]
        frames.append(np.concatenate([got, np.repeat(got[-1:], actions.shape[1] - len(got), axis=0)]))
    return out, np.stack(frames)


def real_rewards(scenario: str, start: Start, actions: np.ndarray, task: Task | None = None) -> np.ndarray:
    """Real rewards [n, H] of each sequence replayed from ``start`` (see :func:`replay_candidates`)."""
    return replay_candidates(scenario, start, actions, task)[0]


def read_real(dynamics: WorldModelDynamics, start: Start, frames: np.ndarray, actions: np.ndarray) -> np.ndarray:
    """The reward model's rewards [n, H] on the real frames uint8 [n, H, h, w, 3] of n candidates [n, H, ...]
    replayed from ``start`` (NaN without a reward model)."""
    seq = np.concatenate([np.repeat(start.frames[-1:][None], len(frames), axis=0), frames], axis=1)
    rows = np.stack([dynamics.rows(actions[:, t])[:, 0] for t in range(actions.shape[1])], axis=1)  # [n, H, d]
    return reward_on_frames(dynamics, seq, rows)


def summarise(runs: list[dict], horizons: tuple[int, ...], penalties: tuple[float, ...] = (0.0,)) -> list[dict]:
    """One row per (kind, prior, h) over the starts (see the module docstring); runs with a ``spread`` add its
    columns, with the imagined best picked at each of ``penalties``."""
    rows = []
    for kind in dict.fromkeys(r["kind"] for r in runs):
        for prior in dict.fromkeys(r["prior"] for r in runs):
            group = [r for r in runs if r["kind"] == kind and r["prior"] == prior]
            for h in horizons:
                imagined = [np.asarray(r["imagined"])[:, :h].sum(axis=1) for r in group]
                real = [np.asarray(r["real"])[:, :h].sum(axis=1) for r in group]
                rho = [spearman(i, r) for i, r in zip(imagined, real, strict=True)]
                row = {
                    "kind": kind, "prior": prior, "h": h, "starts": len(group),
                    "real_mean": float(np.mean([r.mean() for r in real])),
                    "real_of_best": float(np.mean([r[np.argmax(i)] for i, r in zip(imagined, real, strict=True)])),
                    "real_max": float(np.mean([r.max() for r in real])),
                    "imagined_mean": float(np.mean([i.mean() for i in imagined])),
                    "spearman": _mean_rho(rho),
                }  # fmt: skip
                if all("read" in r for r in group):
                    row |= _read_summary(group, h, real)
                if all("spread" in r for r in group):
                    row |= _spread_summary(group, h, imagined, real, penalties)
                rows.append(row)
    return rows


def _mean_rho(rho: list[float]) -> float:
    return float(np.nanmean(rho)) if np.isfinite(rho).any() else float("nan")


def _read_summary(group: list[dict], h: int, real: list[np.ndarray]) -> dict:
    """The reward model on the real frames: its columns of a summary row, for real returns [n] per start."""
    read = [np.asarray(r["read"])[:, :h].sum(axis=1) for r in group]
    return {
        "read_mean": float(np.mean([x.mean() for x in read])),
        "read_spearman": _mean_rho([spearman(x, r) for x, r in zip(read, real, strict=True)]),
        "real_of_read_best": float(np.mean([r[np.argmax(x)] for x, r in zip(read, real, strict=True)])),
    }


def _spread_summary(
    group: list[dict], h: int, imagined: list[np.ndarray], real: list[np.ndarray], penalties: tuple[float, ...]
) -> dict:
    """The spread's columns of a summary row (see the module docstring) for returns [n] per start."""
    spread = [np.asarray(r["spread"])[:, :h].sum(axis=1) for r in group]
    error = [np.asarray(r["frame_error"])[:, h - 1] for r in group]
    return_error = [np.abs(i - r) for i, r in zip(imagined, real, strict=True)]
    picks = {
        str(lam): float(np.mean([r[np.argmax(i - lam * s)] for i, r, s in zip(imagined, real, spread, strict=True)]))
        for lam in penalties
    }
    return {
        "spread_mean": float(np.mean([s.mean() for s in spread])),
        "spread_error_spearman": _mean_rho([spearman(s, e) for s, e in zip(spread, error, strict=True)]),
        "spread_return_error_spearman": _mean_rho([spearman(s, e) for s, e in zip(spread, return_error, strict=True)]),
        "real_of_best_penalised": picks,
    }


def main(argv: list[str] | None = None) -> list[dict]:
    """CLI entry point (see the module docstring); returns the summary rows."""
    args = parse_config(Args, argv, __doc__)
    if any(lam < 0 for lam in args.penalties):
        raise ValueError(f"--penalties {args.penalties}: give numbers >= 0 (0 = the imagined return alone)")
    torch.set_num_threads(args.threads)
    spec = variant(args.env)
    checkpoint = args.checkpoint if args.checkpoint is not None else spec.checkpoint
    task = get_task(spec.scenario, args.task)  # an unknown task raises, listing the scenario's tasks
    engine = load_engine(checkpoint, spec.scenario, args.device, task=args.task)
    dynamics = WorldModelDynamics(engine, spec.scenario)
    priors = {"centre": None, "data": data_prior(checkpoint, spec.scenario, args.device)}
    if "data" in args.priors and priors["data"] is None:
        raise ValueError(f"{checkpoint!r} records no action statistics of its data; use --priors centre")
    sim_config = model_sim_config(checkpoint, spec.scenario)  # real starts look like the model's data
    samplers = {name: make_sampler(action_space(spec.scenario), prior=priors[name]) for name in args.priors}
    rng = np.random.default_rng(args.seed)
    spread = any(lam > 0 for lam in args.penalties)
    runs, begin = [], time.perf_counter()
    jobs = [(seed, kind) for seed in range(20000, 20000 + args.starts) for kind in args.kinds]
    for seed, kind in tqdm(jobs, desc="starts"):
        start = make_start(spec.scenario, seed, kind, 4, args.warm, **sim_config)
        for name, sampler in samplers.items():
            actions = sampler.sample(sampler.initial(args.horizon), args.candidates, rng)
            imagined = imagine(dynamics, start, actions, args.seed, spread=spread)
            real, real_frames = replay_candidates(spec.scenario, start, actions, task)
            run = {
                "seed": seed,
                "kind": kind,
                "prior": name,
                "imagined": imagined.rewards.tolist(),
                "real": real.tolist(),
                "read": read_real(dynamics, start, real_frames, actions).tolist(),
            }
            if spread:
                run["spread"] = imagined.spread.tolist()
                run["frame_error"] = mse(imagined.frames, real_frames).tolist()
            runs.append(run)
    rows = summarise(runs, tuple(sorted({max(1, args.horizon // 2), args.horizon})), args.penalties)
    config = {**dataclasses.asdict(args), "checkpoint": checkpoint, "seconds": time.perf_counter() - begin}
    write_results(args.out, "planning_signal", config, rows + [{"runs": runs}], dynamics.engine.device)
    print("| start | distribution | h | real mean | real of imagined best | real max | imagined mean | spearman | "
          "read on real: mean / spearman / real of its best |")  # fmt: skip
    print("|---|---|---:|---:|---:|---:|---:|---:|---|")
    for r in rows:
        read = f"{r['read_mean']:.2f} / {r['read_spearman']:+.2f} / {r['real_of_read_best']:.2f}"
        print(f"| {r['kind']} | {r['prior']} | {r['h']} | {r['real_mean']:.2f} | {r['real_of_best']:.2f} | "
              f"{r['real_max']:.2f} | {r['imagined_mean']:.2f} | {r['spearman']:+.2f} | {read} |")  # fmt: skip
    if spread:
        print(
            "\n| start | distribution | h | spread vs frame error (rho) | vs return error (rho) | real of best at "
            + " / ".join(f"λ {lam:g}" for lam in args.penalties)
            + " |"
        )
        print("|---|---|---:|---:|---:|---:|")
        for r in rows:
            picks = " / ".join(f"{v:.2f}" for v in r["real_of_best_penalised"].values())
            print(f"| {r['kind']} | {r['prior']} | {r['h']} | {r['spread_error_spearman']:+.2f} | "
                  f"{r['spread_return_error_spearman']:+.2f} | {picks} |")  # fmt: skip
    return rows


if __name__ == "__main__":
    main()
