"""Does the learned simulator rank behaviours as the real one does? Scripted behaviours, the same real starts.

An agent trained inside maximises the imagined return. If the world model and its reward model
rank simple behaviours differently from the real simulator (say, random motion above standing
still), the agent learns the wrong behaviour however well it optimises. For ``--starts`` S unseen
simulator seeds (start kinds of :func:`benchmarks.action_following.make_start`), each behaviour acts
``--steps`` H steps in the real simulator:

* ``expert``: the data's scripted expert (:func:`astra_gym.data.policies.make_policy`: it drives the
  track, reaches for and pushes the block, walks to the vest), i.e. what a good agent would do;
* ``still``: the zero action;
* ``random``: the data's random-hold exploration policy.

Its real actions are then replayed open loop in the Astra env from the same real context
(:func:`benchmarks.agent_diagnosis.open_loop`). Reported per start kind:

* per behaviour, the real return (the task's), the reward model's return on the real frames, and
  the imagined (open-loop) return;
* the rank agreement (Spearman, mean over starts) of the behaviours' returns: real against the
  reward model on real frames (the reader alone), and real against imagined (reader and world
  model together);
* the margins that decide what an agent learns: expert minus still and random minus still, real
  and imagined;
* per behaviour, how much the frames change per step (mean absolute difference of consecutive frames in
  grey levels, steps 1 to H, so the VAE's reconstruction of the start frame does not count), real and
  imagined. A still arm changes nothing in FetchPush; an imagined scene that keeps changing under it
  boils, and its block and goal wander (session 29: 2.2 grey levels per step);
* with a reward model that computes its reward from predicted poses (``train_reward --pose-reward``),
  what moved: per behaviour and pose key (e.g. gripper, block, goal), how far it moved over the run
  in the simulator, as the reader reads the real frames, and as it reads the imagined ones, and the
  reader's mean error on each (:data:`POSE_SOURCES`). A still arm whose imagined block or goal moves
  is a world model that loses the scene (session 24: the goal marker fades within 10 steps).

The reward model ranks wrongly on real frames: fix the reader. Right on real, wrong imagined: the
world model does not carry the behaviours' consequences.

    python -m benchmarks.behaviour_ranking --env Astra-Manipulation-v0 --task progress --checkpoint B --starts 10

Writes ``--out`` (JSON) and prints a markdown table.
"""

from __future__ import annotations

import dataclasses
import sys
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import torch

import astra_gym  # noqa: F401 - registers the ids
from astra_gym.data.policies import make_policy
from astra_gym.data.replay import ReplaySession
from astra_gym.envs.spaces import EXPLORE_BUTTONS
from astra_gym.utils.cli_args import arg, parse_config
from astra_gym.world_model.potential_reward import PotentialReward
from benchmarks.agent_diagnosis import (
    open_loop,
    pose_reader,
    read_poses,
    real_run,
    real_starts,
    reward_model_on_real,
    start_env,
)
from benchmarks.common import sampler_overrides, spearman, write_results

BEHAVIOURS = ("expert", "still", "random")
RETURNS = ("real", "reward_model_on_real", "imagined")
CHANGES = ("change_real", "change_imagined")  # mean absolute change of consecutive frames, steps 1..H (grey levels)
POSE_SOURCES = ("real", "read_real", "read_imagined")  # the simulator's poses, the reader on real / imagined frames


def behaviour(name: str, scenario: str, seed: int) -> tuple[Callable, Callable]:
    """``(begin, act)`` for :func:`benchmarks.agent_diagnosis.real_run`: a scripted behaviour of ``BEHAVIOURS``."""
    if name == "still":
        return (lambda session: None), (lambda session: np.zeros(session.env.action_space.shape))
    if name not in BEHAVIOURS:
        raise ValueError(f"unknown behaviour {name!r}; choose from {', '.join(BEHAVIOURS)}")
    policy = make_policy(name, scenario, EXPLORE_BUTTONS if scenario == "explore" else ())

    def begin(session: ReplaySession) -> None:
        policy.reset(session.env, np.random.default_rng(seed))

    return begin, lambda session: np.asarray(policy.act(session.obs, session.env))


def run_start(env, scenario: str, start, steps: int, task, behaviours: tuple[str, ...], seed: int) -> dict:
    """{behaviour: {"real", "reward_model_on_real", "imagined": returns, "actions": [L, ...], and with a pose
    reader "poses": :func:`pose_drift`}} for one start."""
    out = {}
    reader = pose_reader(env, scenario)
    for name in behaviours:
        begin, act = behaviour(name, scenario, seed)
        real = real_run(act, scenario, start, steps, task, begin=begin)
        opened = open_loop(env, start, real, seed)
        out[name] = {
            "real": float(real["rewards"].sum()),
            "reward_model_on_real": float(reward_model_on_real(env, scenario, start, real).sum()),
            "imagined": float(opened["rewards"].sum()),
            "change_real": frame_change(real["frames"]),
            "change_imagined": frame_change(opened["frames"]),
            "actions": real["actions"],
        }
        if reader is not None:
            out[name]["poses"] = pose_drift(env, scenario, reader, start, real, opened["frames"])
    return out


def frame_change(frames: np.ndarray) -> float:
    """Mean absolute difference of consecutive uint8 frames [L, H, W, 3] (grey levels; 0 for L < 2)."""
    if len(frames) < 2:
        return 0.0
    return float(np.abs(np.diff(frames.astype(np.float32), axis=0)).mean())


def pose_drift(env, scenario: str, reader: tuple, start, real: dict, imagined: np.ndarray) -> dict[str, float]:
    """Per pose key of the reader's task: ``move_<key>_<source>``, the distance between its first and last
    position (sources :data:`POSE_SOURCES`; the start frame first), and ``error_<key>_<read source>``, the
    reader's mean distance from the simulator's position over the run's steps. Units: the poses' own (m)."""
    model, keys = reader
    actions = np.concatenate([real["actions"][:1], real["actions"]])  # the start frame read with the first action
    if isinstance(env.unwrapped.core.engine.reward_model, PotentialReward):
        actions = np.zeros_like(actions)  # a potential is read with zero rows, as the env reads it
    first = start.frames[-1:]
    truth = np.concatenate([real["poses"][k] for k in keys], axis=-1)  # [L + 1, P]
    found = {"real": truth}
    for source, frames in (("read_real", real["frames"]), ("read_imagined", imagined)):
        found[source] = read_poses(env, scenario, model, np.concatenate([first, frames]), actions, first[0])
    out, column = {}, 0
    for key in keys:
        width = real["poses"][key].shape[-1]
        part = slice(column, column + width)
        column += width
        for source, poses in found.items():
            out[f"move_{key}_{source}"] = float(np.linalg.norm(poses[-1, part] - poses[0, part]))
            if source != "real":
                out[f"error_{key}_{source}"] = float(np.linalg.norm(poses[1:, part] - truth[1:, part], axis=-1).mean())
    return out


def summarise(kind: str, runs: list[dict], behaviours: tuple[str, ...], steps: int) -> dict:
    """Means over the starts of one kind: returns per behaviour, rank agreements, margins over ``still``."""
    row = {"kind": kind, "starts": len(runs), "steps": steps}
    for name in behaviours:
        for key in RETURNS + CHANGES:
            if key in runs[0][name]:
                row[f"{name}_{key}"] = float(np.mean([r[name][key] for r in runs]))
    for key in RETURNS[1:]:
        rhos = [spearman([r[b]["real"] for b in behaviours], [r[b][key] for b in behaviours]) for r in runs]
        rhos = [x for x in rhos if np.isfinite(x)]
        row[f"rank_agreement_{key}"] = float(np.mean(rhos)) if rhos else None
    for name in behaviours:
        if "poses" in runs[0][name]:
            for key in runs[0][name]["poses"]:
                row[f"{name}_{key}"] = float(np.mean([r[name]["poses"][key] for r in runs]))
    if "still" in behaviours:
        for name in (b for b in behaviours if b != "still"):
            for key in ("real", "imagined"):
                row[f"{name}_minus_still_{key}"] = row[f"{name}_{key}"] - row[f"still_{key}"]
    return row


@dataclass(frozen=True)
class Args:
    """Flags of ``behaviour_ranking`` (each field's help is its ``--help`` text)."""

    env: str = arg("Astra-Drive-v0", help="an Astra id (its scenario picks the simulator)")
    checkpoint: str | None = arg(None, help="model bundle; none = the variant's")
    task: str | None = arg(None, help="agent task (astra_gym.data.tasks) of the rewards; none = the simulator's own")
    rest_baseline: bool = arg(
        False, help="score the imagined steps minus the do-nothing command's (the env's rest_baseline)"
    )
    behaviours: tuple[str, ...] = arg(BEHAVIOURS, help="scripted behaviours: expert, still, random")
    starts: int = arg(10, help="real starts per kind")
    kinds: tuple[str, ...] = arg(("reset",), help="start kinds: reset and/or mid")
    steps: int = arg(50, help="steps per run")
    warm: int = arg(40, help="expert-policy steps before a mid start")
    seed_offset: int = arg(10000, help="simulator seeds are offset + s (the agent benchmarks' evaluation seeds)")
    denoise_steps: int | None = arg(None, help="override the bundle's sampler steps")
    guidance: float | None = arg(None, help="override the bundle's guidance scale")
    threads: int = arg(1, help="torch threads")
    out: str = arg("results/behaviour_ranking.json", help="JSON results path")


def main(argv: list[str] | None = None) -> dict:
    """CLI (see the module docstring); returns the written payload's rows."""
    args = parse_config(Args, argv, __doc__)
    if not set(args.behaviours) <= set(BEHAVIOURS) or len(args.behaviours) < 2:
        raise SystemExit(f"--behaviours {' '.join(args.behaviours)}: choose two or more of {', '.join(BEHAVIOURS)}")
    scenario, env, task, checkpoint = start_env(args, sampler_overrides(args.denoise_steps, args.guidance))
    rows = []
    for kind in args.kinds:
        runs = [run_start(env, scenario, start, args.steps, task, args.behaviours, seed=s)
                for s, start in real_starts(args, env, kind)]  # fmt: skip
        row = summarise(kind, runs, args.behaviours, args.steps)
        kept = (*RETURNS, *CHANGES, "poses")
        row["per_start"] = [{b: {k: r[b][k] for k in kept if k in r[b]} for b in args.behaviours} for r in runs]
        rows.append(row)
    config = {**dataclasses.asdict(args), "checkpoint": checkpoint}
    write_results(args.out, "behaviour_ranking", config, rows, torch.device("cpu"))
    print(markdown(rows, args.behaviours))
    return {"rows": rows}


def markdown(rows: list[dict], behaviours: tuple[str, ...]) -> str:
    """A markdown table: one line per start kind and behaviour, then the agreements and margins."""
    head = ["start", "behaviour", "real return", "reward model on real", "imagined (open loop)"]
    head.append("frame change per step: real / imagined")
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for r in rows:
        for b in behaviours:
            cells = [r["kind"], b] + [f"{r[f'{b}_{k}']:+.2f}" for k in RETURNS]
            cells.append(" / ".join(f"{r[f'{b}_{k}']:.2f}" if f"{b}_{k}" in r else "n/a" for k in CHANGES))
            lines.append("| " + " | ".join(cells) + " |")
    for r in rows:
        agree = " / ".join("n/a" if r[f"rank_agreement_{k}"] is None else f"{r[f'rank_agreement_{k}']:+.2f}"
                           for k in RETURNS[1:])  # fmt: skip
        margins = [f"{k.split('_')[0]} - still ({k.split('_')[-1]}) {v:+.2f}" for k, v in r.items() if "_minus_" in k]
        summary = f"\n{r['kind']}: rank agreement with real, reward model on real / imagined {agree}"
        lines.append(f"{summary}; {', '.join(margins)}")
    return "\n".join(lines + _pose_table(rows, behaviours))


def _pose_table(rows: list[dict], behaviours: tuple[str, ...]) -> list[str]:
    """Markdown lines of the pose reader's drift (none without a pose reader)."""
    prefix, suffix = f"{behaviours[0]}_move_", "_read_real"
    keys = [k[len(prefix) : -len(suffix)] for k in rows[0] if k.startswith(prefix) and k.endswith(suffix)]
    if not keys:
        return []
    head = ["start", "behaviour", "pose", "moved: simulator / read real / read imagined", "error: real / imagined"]
    lines = ["", "| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for r in rows:
        for b in behaviours:
            for key in keys:
                moved = " / ".join(f"{r[f'{b}_move_{key}_{src}']:.3f}" for src in POSE_SOURCES)
                error = " / ".join(f"{r[f'{b}_error_{key}_{src}']:.3f}" for src in POSE_SOURCES[1:])
                lines.append(f"| {r['kind']} | {b} | {key} | {moved} | {error} |")
    return lines


if __name__ == "__main__":
    main(sys.argv[1:])
