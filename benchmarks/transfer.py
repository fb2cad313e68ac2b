"""Do agents trained inside work in the real simulator? Saved agents and baselines on the same real episodes.

Every policy plays the same ``--episodes`` real episodes (seeds ``10000 + k``: the evaluation
seeds of ``train_sb3``, never used for training or data), full length unless ``--max-steps``:

* ``random``: uniform random actions; ``constant``: one fixed action (``--constant``, full gas
  for Drive by default);
* each ``--agent NAME=PATH.zip``: a saved SB3 model (e.g. PPO trained inside, PPO trained in the
  real simulator, at any checkpoint), acting on the mode of its action distribution; with
  ``--sampled`` also as ``NAME-sampled``, sampling actions as it did in training (a Gaussian
  policy whose mean sits at a clipped bound, e.g. gas just below 0, drives only when sampled).

For every agent it reports the return above random as a share of ``--reference``'s (the
issue's transfer ratio: (inside - random) / (real - random)).

    python -m benchmarks.transfer --env Astra-Drive-v0 --episodes 10 \\
        --agent inside=runs/sb3/drive-v1-inside-100k/final_model.zip \\
        --agent real=runs/sb3/drive-real-100k/final_model.zip --reference real \\
        --out benchmarks/results/transfer_drive.json
"""

from __future__ import annotations

import dataclasses
import sys
from dataclasses import dataclass

import numpy as np
import torch
from stable_baselines3 import PPO

import astra_gym  # noqa: F401 - registers the ids
from astra_gym.agents.evaluation import RandomPolicy, SB3Policy, evaluate
from astra_gym.agents.plots import save_bars
from astra_gym.agents.real_env import make_real_env
from astra_gym.agents.train_sb3 import EVAL_SEED_OFFSET
from astra_gym.envs.variants import variant
from astra_gym.utils.cli_args import arg, parse_config
from benchmarks.common import write_results
from benchmarks.imagined_vs_real import ConstantPolicy

DEFAULT_CONSTANT = {"drive": [0.0, 1.0, 0.0], "manipulation": [0.0, 0.0, 0.0, 0.0], "explore": [1, 0, 0, 0, 0, 0]}


@dataclass(frozen=True)
class Args:
    """Flags of ``transfer`` (each field's help is its ``--help`` text)."""

    env: str = arg("Astra-Drive-v0", help="an Astra id (its scenario's simulator is used)")
    agent: tuple[str, ...] = arg((), help="NAME=PATH of a saved SB3 PPO model; repeat", parse=str, append=True)
    reference: str | None = arg(None, help="agent NAME whose return above random is 100 %")
    episodes: int = arg(10, help="real episodes per policy")
    max_steps: int | None = arg(None, help="episode cap (none = the variant's)")
    task: str | None = arg(None, help="the real simulator's task (astra_gym.data.tasks); none = its own reward")
    checkpoint: str | None = arg(
        None, help="set the real simulator up like this world model's training data (e.g. camera); none = variant's"
    )
    constant: tuple[float, ...] | None = arg(None, help="the constant policy's action (none = the scenario's)")
    sampled: bool = arg(False, help="also play every agent with sampled actions (NAME-sampled)")
    threads: int = arg(1, help="torch threads")
    out: str = arg("results/transfer.json", help="JSON results path")
    plot: str | None = arg(None, help="also draw the returns as a bar chart (PNG path)")


def main(argv: list[str] | None = None) -> list[dict]:
    """CLI (see the module docstring); returns the result rows."""
    args = parse_config(Args, argv, __doc__)
    torch.set_num_threads(args.threads)
    scenario = variant(args.env).scenario
    env = make_real_env(args.env, args.max_steps, task=args.task, checkpoint=args.checkpoint)
    seeds = [EVAL_SEED_OFFSET + k for k in range(args.episodes)]
    constant = np.asarray(args.constant or DEFAULT_CONSTANT[scenario], env.action_space.dtype)
    policies = {"random": RandomPolicy(env.action_space, seed=0), "constant": ConstantPolicy(constant)}
    for spec in args.agent:
        name, path = spec.split("=", 1)
        model = PPO.load(path, device="cpu")
        policies[name] = SB3Policy(model)
        if args.sampled:
            policies[f"{name}-sampled"] = SB3Policy(model, deterministic=False, seed=0)
    rows = []
    for name, policy in policies.items():
        result = evaluate(env, policy, seeds).to_dict()
        rows.append({"policy": name, **result})
        print(f"{name}: {result['mean_return']:.2f} +- {result['std_return']:.2f} over {len(seeds)} episodes")
    env.close()
    by_name = {r["policy"]: r["mean_return"] for r in rows}
    if args.reference is not None:
        span = by_name[args.reference] - by_name["random"]
        for row in rows:
            row["share_of_reference_above_random"] = (row["mean_return"] - by_name["random"]) / span if span else None
    write_results(args.out, "transfer", {**dataclasses.asdict(args), "seeds": seeds}, rows, torch.device("cpu"))
    if args.plot:
        save_bars(
            [r["policy"] for r in rows],
            [r["mean_return"] for r in rows],
            [r["std_return"] for r in rows],
            args.plot,
            "real return (mean +- std)",
            f"{args.env}: real returns over {len(seeds)} unseen episodes",
            reference=by_name["random"],
            reference_label="random",
        )
    return rows


if __name__ == "__main__":
    main(sys.argv[1:])
