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
  returns among the candidates (mean over starts; nan where every real return is equal).

``--task`` (e.g. ``progress`` on Manipulation) scores both sides with an agent task: the bundle's
reward model of it imagines, and the real rewards are relabelled from the simulator's poses, as the
agent benchmarks score it.

    python -m benchmarks.planning_signal --env Astra-Drive-v0 --starts 4 --out results/planning_signal_drive.json
    python -m benchmarks.planning_signal --env Astra-Manipulation-v0 --task progress --out results/ps_manip.json
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
from astra_gym.utils.cli_args import arg, parse_config
from benchmarks.action_following import Start, make_start
from benchmarks.common import spearman, write_results

__all__ = ["Args", "imagined_rewards", "real_rewards", "summarise", "main"]


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
    seed: int = arg(0, help="seeds the candidate draws and the model's noise")
    device: str = arg("cpu", help="world-model device")
    threads: int = arg(1, help="torch CPU threads")
    out: str = arg("results/planning_signal.json", help="JSON output")


def imagined_rewards(dynamics: WorldModelDynamics, start: Start, actions: np.ndarray, seed: int) -> np.ndarray:
    """Reward-model rewards [n, H] of n candidate sequences [n, H, ...] imagined from ``start``."""
    state = dynamics.encode(start.frames, [None, *start.actions], seed)
    children = dynamics.fork(state, len(actions))
    rewards = []
    for t in range(actions.shape[1]):
        children = dynamics.step(children, actions[:, t])
        rewards.append(dynamics.score(children, actions[:, t])[0])
    return np.stack(rewards, axis=1)


def real_rewards(scenario: str, start: Start, actions: np.ndarray, task: Task | None = None) -> np.ndarray:
    """Real rewards [n, H] of each sequence replayed from ``start`` (0 after the episode ends): the simulator's,
    or ``task``'s relabelled from the poses."""
    out = np.zeros(actions.shape[:2])
    for row, sequence in enumerate(actions):
        with replay(start.seed, start.prefix, scenario=scenario, **start.sim_config) as session:
            piece = session.continue_with(sequence)
        rewards = piece.rewards if task is None else relabel(piece.poses, piece.rewards, task)
        out[row, : len(rewards)] = rewards
    return out


def summarise(runs: list[dict], horizons: tuple[int, ...]) -> list[dict]:
    """One row per (kind, prior, h) over the starts (see the module docstring)."""
    rows = []
    for kind in dict.fromkeys(r["kind"] for r in runs):
        for prior in dict.fromkeys(r["prior"] for r in runs):
            group = [r for r in runs if r["kind"] == kind and r["prior"] == prior]
            for h in horizons:
                imagined = [np.asarray(r["imagined"])[:, :h].sum(axis=1) for r in group]
                real = [np.asarray(r["real"])[:, :h].sum(axis=1) for r in group]
                rho = [spearman(i, r) for i, r in zip(imagined, real, strict=True)]
                rows.append({
                    "kind": kind, "prior": prior, "h": h, "starts": len(group),
                    "real_mean": float(np.mean([r.mean() for r in real])),
                    "real_of_best": float(np.mean([r[np.argmax(i)] for i, r in zip(imagined, real, strict=True)])),
                    "real_max": float(np.mean([r.max() for r in real])),
                    "imagined_mean": float(np.mean([i.mean() for i in imagined])),
                    "spearman": float(np.nanmean(rho)) if np.isfinite(rho).any() else float("nan"),
                })  # fmt: skip
    return rows


def main(argv: list[str] | None = None) -> list[dict]:
    """CLI entry point (see the module docstring); returns the summary rows."""
    args = parse_config(Args, argv, __doc__)
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
    runs, begin = [], time.perf_counter()
    jobs = [(seed, kind) for seed in range(20000, 20000 + args.starts) for kind in args.kinds]
    for seed, kind in tqdm(jobs, desc="starts"):
        start = make_start(spec.scenario, seed, kind, 4, args.warm, **sim_config)
        for name, sampler in samplers.items():
            actions = sampler.sample(sampler.initial(args.horizon), args.candidates, rng)
            imagined = imagined_rewards(dynamics, start, actions, args.seed)
            real = real_rewards(spec.scenario, start, actions, task)
            runs.append(
                {"seed": seed, "kind": kind, "prior": name, "imagined": imagined.tolist(), "real": real.tolist()}
            )
    rows = summarise(runs, tuple(sorted({max(1, args.horizon // 2), args.horizon})))
    config = {**dataclasses.asdict(args), "checkpoint": checkpoint, "seconds": time.perf_counter() - begin}
    write_results(args.out, "planning_signal", config, rows + [{"runs": runs}], dynamics.engine.device)
    print("| start | distribution | h | real mean | real of imagined best | real max | imagined mean | spearman |")
    print("|---|---|---:|---:|---:|---:|---:|---:|")
    for r in rows:
        print(f"| {r['kind']} | {r['prior']} | {r['h']} | {r['real_mean']:.2f} | {r['real_of_best']:.2f} | "
              f"{r['real_max']:.2f} | {r['imagined_mean']:.2f} | {r['spearman']:+.2f} |")  # fmt: skip
    return rows


if __name__ == "__main__":
    main()
