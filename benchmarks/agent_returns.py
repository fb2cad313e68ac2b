"""Agent returns in the real simulators: does training or planning inside the world model transfer?

Per Astra id, every method is judged on the same real-simulator episodes (seeds ``--seed + 10000 +
k``, ``k < --eval-episodes``), through the wrapper that gives the simulator the Astra env's
interface (:mod:`astra_gym.agents.real_env`):

==============  ============================================================================
method          what
==============  ============================================================================
``random``      uniform random actions (seeded)
``ppo_real``    PPO trained ``--timesteps`` steps in the real simulator (the baseline)
``ppo_inside``  PPO trained ``--timesteps`` imagined steps inside the Astra env only (short
                episodes from frame-bank starts, rewards from the reward model), then
                evaluated in the real simulator
``mpc``         CEM/MPPI planning inside the world model at every real step
==============  ============================================================================

Both PPO runs get the same number of environment interactions and the same hyperparameters.
Reported per id: mean and std of the returns, the *transfer ratio* ``ppo_inside / ppo_real`` and,
since returns can be negative (CarRacing, FetchPush), the random-normalised transfer
``(ppo_inside - random) / (ppo_real - random)`` (1 = as good as training in the simulator, 0 = no
better than random); and the cost: wall-clock seconds, real and imagined steps of each method.

    python -m benchmarks.agent_returns --timesteps 200000 --eval-episodes 10 --markdown results/agents.md
    python -m benchmarks.agent_returns --quick        # smoke test: debug weights, drive only, seconds
    python -m benchmarks.agent_returns --merge a.json b.json --markdown all.md   # one table from several runs

Writes ``--out`` (JSON, :func:`benchmarks.common.write_results`) and prints a markdown table.
"""

from __future__ import annotations

import dataclasses
import json
import math
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import torch

from astra_gym.agents import train_sb3
from astra_gym.agents.evaluation import RandomPolicy, evaluate
from astra_gym.agents.mpc import run_mpc
from astra_gym.agents.real_env import make_real_env
from astra_gym.envs.spaces import action_space
from astra_gym.envs.variants import variant
from astra_gym.utils.atomic import atomic_write_text
from astra_gym.utils.cli_args import apply_overrides, arg, config_parser, exit_if_printing, parse_config
from astra_gym.utils.device import resolve_device
from benchmarks.common import write_results

METHODS = ("random", "ppo_real", "ppo_inside", "mpc")
REAL_IDS = ("Astra-Drive-v0", "Astra-Manipulation-v0", "Astra-Explore-v0")


@dataclass(frozen=True)
class Args:
    """Flags of ``agent_returns`` (each field's help is its ``--help`` text)."""

    envs: tuple[str, ...] = arg(REAL_IDS, help="Astra ids to benchmark (each in its real simulator)")
    methods: tuple[str, ...] = arg(METHODS, help=f"methods to run, of {' '.join(METHODS)}")
    checkpoint: str | None = arg(None, help="world model for ppo_inside and mpc; none = each variant's bundle")
    timesteps: int = arg(100_000, help="env interactions per PPO run (real for ppo_real, imagined for ppo_inside)")
    num_envs: int = arg(8, help="PPO parallel envs")
    n_steps: int = arg(128, help="PPO steps per env per rollout")
    batch_size: int = arg(256, help="PPO minibatch size")
    n_epochs: int = arg(4, help="PPO epochs per rollout")
    imagined_horizon: int = arg(50, help="ppo_inside: imagined episode length")
    eval_episodes: int = arg(5, help="real evaluation episodes per method (same seeds for all)")
    eval_max_steps: int | None = arg(None, help="cap on real evaluation episode length; none = the variant's")
    mpc_planner: Literal["cem", "mppi"] = arg("cem", help="mpc: planner")
    mpc_candidates: int = arg(64, help="mpc: candidate sequences per iteration")
    mpc_horizon: int = arg(8, help="mpc: imagined steps per candidate")
    mpc_iterations: int = arg(3, help="mpc: distribution updates per real step")
    seed: int = arg(0, help="seeds training, planning and (offset by 10000) the evaluation episodes")
    device: str = arg("auto", help="torch device: cpu, cuda[:N] or auto")
    threads: int = arg(1, help="torch CPU threads (1 on shared machines)")
    quick: bool = arg(False, help="smoke test: debug weights, drive only, tiny budgets (other flags still apply)")
    work_dir: str = arg("runs/agent_returns", help="folder of the PPO runs (models, logs)")
    out: str = arg("results/agent_returns.json", help="JSON results file")
    markdown: str | None = arg(None, help="also write the markdown tables to this file")

    def __post_init__(self) -> None:
        unknown = sorted(set(self.methods) - set(METHODS))
        if unknown:
            raise ValueError(f"unknown methods {unknown}; choose from {list(METHODS)}")
        if self.eval_episodes < 1:
            raise ValueError(f"--eval-episodes={self.eval_episodes}: every method needs at least 1 real episode")


QUICK = {
    "envs": ("Astra-Drive-v0",),
    "checkpoint": "debug",
    "timesteps": 64,
    "num_envs": 2,
    "n_steps": 16,
    "batch_size": 32,
    "n_epochs": 1,
    "imagined_horizon": 8,
    "eval_episodes": 1,
    "eval_max_steps": 5,
    "mpc_candidates": 4,
    "mpc_horizon": 2,
    "mpc_iterations": 1,
    "device": "cpu",
}


# ------------------------------------------------------------------------------------------------
# Methods: each returns {"mean_return", "std_return", "returns", ..., cost fields}
# ------------------------------------------------------------------------------------------------


def eval_seeds(args: Args) -> list[int]:
    """The evaluation episodes every method runs."""
    return [args.seed + train_sb3.EVAL_SEED_OFFSET + k for k in range(args.eval_episodes)]


def run_random(args: Args, env_id: str) -> dict:
    """Uniform random actions in the real simulator."""
    env = make_real_env(env_id, args.eval_max_steps, checkpoint=args.checkpoint)
    try:
        result = evaluate(env, RandomPolicy(action_space(variant(env_id).scenario), args.seed), eval_seeds(args))
    finally:
        env.close()
    return {**result.to_dict(), "real_train_steps": 0, "imagined_steps": 0, "train_seconds": 0.0}


def run_ppo(args: Args, env_id: str, real: bool) -> dict:
    """PPO trained in the real simulator or inside the world model; final real evaluation on the shared seeds."""
    method = "ppo_real" if real else "ppo_inside"
    train_args = train_sb3.Args(
        env=env_id,
        algo="ppo",
        env_real=real,
        checkpoint=args.checkpoint,
        total_timesteps=args.timesteps,
        num_envs=args.num_envs,
        imagined_horizon=args.imagined_horizon,
        n_steps=args.n_steps,
        batch_size=args.batch_size,
        n_epochs=args.n_epochs,
        seed=args.seed,
        eval_freq=0,
        eval_episodes=args.eval_episodes,
        eval_max_steps=args.eval_max_steps,
        save_freq=0,
        out=args.work_dir,
        run_name=f"{env_id}__{method}__{args.seed}",
        device=args.device,
        threads=args.threads,
        progress_bar=False,
    )
    _, summary = train_sb3.train(train_args)
    steps = summary["env_steps"]
    return {
        **summary["final_eval"],
        "real_train_steps": steps if real else 0,
        "imagined_steps": 0 if real else steps,
        "train_seconds": summary["train_seconds"],
        "run_dir": summary["run_dir"],
    }


def run_mpc_method(args: Args, env_id: str) -> dict:
    """MPC in the real simulator, planning inside the world model."""
    mpc_args = run_mpc.Args(
        env=env_id,
        checkpoint=args.checkpoint,
        planner=args.mpc_planner,
        horizon=args.mpc_horizon,
        candidates=args.mpc_candidates,
        iterations=args.mpc_iterations,
        elites=max(1, args.mpc_candidates // 8),
        episodes=args.eval_episodes,
        max_steps=args.eval_max_steps,
        seed=eval_seeds(args)[0],  # episodes seed, seed + 1, ...: the shared evaluation seeds
        device=args.device,
        threads=args.threads,
    )
    summary = run_mpc.run(mpc_args)
    summary.pop("args")
    return {**summary, "real_train_steps": 0, "train_seconds": 0.0}


def run_method(args: Args, env_id: str, method: str) -> dict:
    """One method on one id, with its total wall-clock time."""
    start = time.perf_counter()
    if method == "random":
        result = run_random(args, env_id)
    elif method in ("ppo_real", "ppo_inside"):
        result = run_ppo(args, env_id, real=method == "ppo_real")
    else:
        result = run_mpc_method(args, env_id)
    return {"env": env_id, "method": method, **result, "wall_seconds": time.perf_counter() - start}


# ------------------------------------------------------------------------------------------------
# Summary and tables
# ------------------------------------------------------------------------------------------------


def transfer(rows: dict[str, dict]) -> dict:
    """Transfer ratio and random-normalised transfer of one id (None where undefined)."""
    mean = {m: rows[m]["mean_return"] for m in rows}
    inside, real, rand = mean.get("ppo_inside"), mean.get("ppo_real"), mean.get("random")
    ratio = inside / real if inside is not None and real not in (None, 0.0) else None
    normalised = None
    if None not in (inside, real, rand) and not math.isclose(real, rand):
        normalised = (inside - rand) / (real - rand)
    return {"transfer_ratio": ratio, "transfer_normalised": normalised}


def _fmt(value: float | None, spread: float | None = None) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "-"
    return f"{value:.2f}" if spread is None else f"{value:.2f} ± {spread:.2f}"


def markdown_tables(results: list[dict], methods: tuple[str, ...]) -> str:
    """Returns table (one row per id) and cost table (one row per id x method)."""
    head = ["env", *methods, "transfer (inside/real)", "normalised transfer"]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for entry in results:
        cells = [_fmt(entry["methods"][m]["mean_return"], entry["methods"][m]["std_return"]) for m in methods]
        cells += [_fmt(entry["transfer"]["transfer_ratio"]), _fmt(entry["transfer"]["transfer_normalised"])]
        lines.append("| " + " | ".join([entry["env"], *cells]) + " |")
    cost_head = ["env", "method", "real train steps", "imagined steps", "eval steps", "train s", "wall s"]
    lines += ["", "| " + " | ".join(cost_head) + " |", "|" + "---|" * len(cost_head)]
    for entry in results:
        for method in methods:
            row = entry["methods"][method]
            cells = [row["real_train_steps"], row["imagined_steps"], row["env_steps"]]
            cells = [str(int(c)) for c in cells] + [f"{row['train_seconds']:.1f}", f"{row['wall_seconds']:.1f}"]
            lines.append("| " + " | ".join([entry["env"], method, *cells]) + " |")
    return "\n".join(lines) + "\n"


def merge_results(paths: list[str]) -> list[dict]:
    """Joins the per-id methods of several result files (e.g. methods run in parallel processes).

    A method of an id may appear in one file only; the transfer is recomputed from the merged rows.
    Ids keep their first-seen order, methods the order of :data:`METHODS`.
    """
    merged: dict[str, dict[str, dict]] = {}
    for path in paths:
        payload = json.loads(Path(path).read_text(encoding="utf-8"))
        if payload.get("benchmark") != "agent_returns":
            raise SystemExit(f"{path} is not an agent_returns result (benchmark={payload.get('benchmark')!r})")
        for entry in payload["results"]:
            rows = merged.setdefault(entry["env"], {})
            for method, row in entry["methods"].items():
                if method in rows:
                    raise SystemExit(f"{entry['env']} {method} appears in two files; keep one")
                rows[method] = {**row, "source": str(path)}
    return [
        {"env": env, "methods": {m: rows[m] for m in METHODS if m in rows}, "transfer": transfer(rows)}
        for env, rows in merged.items()
    ]


def parse_args(argv: list[str] | None) -> Args:
    """Flags over the defaults, or over the ``--quick`` preset when it is given."""
    namespace = config_parser(Args, __doc__).parse_args(argv)
    base = dataclasses.replace(Args(), **QUICK) if getattr(namespace, "quick", False) else Args()
    return exit_if_printing(apply_overrides(base, namespace), namespace)


@dataclass(frozen=True)
class MergeArgs:
    """Arguments of ``agent_returns --merge`` (each field's help is its ``--help`` text)."""

    files: tuple[str, ...] = arg(help="agent_returns JSON files", positional=True)
    markdown: str | None = arg(None, help="also write the tables to this file")


def main_merge(argv: list[str]) -> dict:
    """``--merge FILE... [--markdown OUT]``: prints (and writes) the tables of the merged files."""
    args = parse_config(MergeArgs, argv, "python -m benchmarks.agent_returns --merge FILE [FILE ...]")
    results = merge_results(args.files)
    methods = tuple(m for m in METHODS if all(m in entry["methods"] for entry in results))
    table = markdown_tables(results, methods)
    print(table)
    if args.markdown:
        atomic_write_text(args.markdown, f"Merged from {', '.join(args.files)}\n\n{table}")
    return {"results": results, "markdown": table}


def main(argv: list[str] | None = None) -> dict:
    """Runs the benchmark; returns the results written to ``--out``."""
    argv = sys.argv[1:] if argv is None else argv
    if argv[:1] == ["--merge"]:
        return main_merge(argv[1:])
    args = parse_args(argv)
    torch.set_num_threads(args.threads)
    results = []
    for env_id in args.envs:
        rows = {method: run_method(args, env_id, method) for method in args.methods}
        results.append({"env": env_id, "methods": rows, "transfer": transfer(rows)})
    table = markdown_tables(results, args.methods)
    command = "python -m benchmarks.agent_returns " + " ".join(argv)
    print(table)
    config = {**dataclasses.asdict(args), "command": command}
    write_results(args.out, "agent_returns", config, results, resolve_device(args.device))
    if args.markdown:
        Path(args.markdown).parent.mkdir(parents=True, exist_ok=True)
        Path(args.markdown).write_text(f"`{command}`\n\n{table}")
    return {"config": dataclasses.asdict(args), "results": results, "markdown": table}


if __name__ == "__main__":
    main()
