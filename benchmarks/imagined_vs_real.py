"""Imagined vs real return of fixed action sequences: does the world model's reward agree with the simulator's?

An agent trained inside the world model maximises the *imagined* return (world model + reward
model). If the ordering of simple behaviours differs between imagination and the real simulator,
the agent learns the wrong behaviour however well it optimises. For each constant action of a
scenario this runs ``--envs`` imagined episodes (from frame-bank starts) and ``--real-episodes``
real episodes (seeds ``10000 + k``, the agent benchmark's evaluation seeds), ``--steps`` steps each,
and reports both mean returns and whether the two rankings of the actions agree (Spearman's rho).

    python -m benchmarks.imagined_vs_real --env Astra-Drive-v0 --checkpoint drive-v5 --steps 50

Writes ``--out`` (JSON) and prints a markdown table.
"""

from __future__ import annotations

import dataclasses
import sys
from dataclasses import dataclass

import gymnasium as gym
import numpy as np
import torch

import astra_gym  # noqa: F401 - registers the ids
from astra_gym.agents.evaluation import evaluate
from astra_gym.agents.real_env import make_real_env
from astra_gym.agents.train_sb3 import EVAL_SEED_OFFSET
from astra_gym.envs.variants import variant
from astra_gym.utils.cli_args import arg, parse_config
from benchmarks.common import spearman, write_results

# Constant actions per scenario, in each simulator's own action space.
ACTIONS: dict[str, dict[str, list[float]]] = {
    "drive": {"gas": [0, 1, 0], "gas+left": [-0.5, 0.5, 0], "gas+right": [0.5, 0.5, 0], "idle": [0, 0, 0],
              "brake": [0, 0, 0.8]},
    "manipulation": {"+x": [1, 0, 0, 0], "-x": [-1, 0, 0, 0], "+y": [0, 1, 0, 0], "-y": [0, -1, 0, 0],
                     "still": [0, 0, 0, 0]},
    # MOVE_FORWARD, MOVE_BACKWARD, TURN_LEFT, TURN_RIGHT, MOVE_LEFT, MOVE_RIGHT
    "explore": {"forward": [1, 0, 0, 0, 0, 0], "forward+left": [1, 0, 1, 0, 0, 0], "turn right": [0, 0, 0, 1, 0, 0],
                "still": [0, 0, 0, 0, 0, 0]},
}  # fmt: skip


def imagined_returns(env_id: str, action: np.ndarray, num_envs: int, steps: int, kwargs: dict) -> np.ndarray:
    """[num_envs] imagined returns of ``steps`` constant actions from seeded frame-bank starts."""
    envs = gym.make_vec(env_id, num_envs=num_envs, max_episode_steps=steps, **kwargs)
    envs.reset(seed=0)
    total, alive = np.zeros(num_envs), np.ones(num_envs, bool)
    for _ in range(steps):
        _, reward, terminated, truncated, _ = envs.step(np.tile(action, (num_envs, 1)))
        total += reward * alive
        alive &= ~(terminated | truncated)
    envs.close()
    return total


class ConstantPolicy:
    """The same action at every step (an :class:`~astra_gym.agents.evaluation.Policy`)."""

    def __init__(self, action: np.ndarray) -> None:
        self.action = action

    def reset(self, obs: np.ndarray, info: dict) -> None:
        """Nothing to reset."""

    def act(self, obs: np.ndarray, info: dict) -> np.ndarray:
        return self.action


def real_returns(env_id: str, action: np.ndarray, episodes: int, steps: int, checkpoint: str | None) -> np.ndarray:
    """[episodes] real returns of ``steps`` constant actions (the agent benchmark's evaluation seeds), in the
    simulator set up like ``checkpoint``'s training data."""
    env = make_real_env(env_id, steps, checkpoint=checkpoint)
    try:
        result = evaluate(env, ConstantPolicy(action), [EVAL_SEED_OFFSET + k for k in range(episodes)])
    finally:
        env.close()
    return np.asarray(result.returns)


@dataclass(frozen=True)
class Args:
    """Flags of ``imagined_vs_real`` (each field's help is its ``--help`` text)."""

    env: str = arg("Astra-Drive-v0", help="Astra id (its real simulator is the reference)")
    checkpoint: str | None = arg(None, help="world model; none = the variant's bundle")
    steps: int = arg(50, help="steps per episode (imagined and real)")
    envs: int = arg(8, help="imagined episodes per action (one batched rollout)")
    real_episodes: int = arg(3, help="real episodes per action")
    threads: int = arg(1, help="torch CPU threads")
    out: str = arg("results/imagined_vs_real.json", help="JSON results file")


def main(argv: list[str] | None = None) -> dict:
    """CLI entry point (see the module docstring)."""
    args = parse_config(Args, argv, __doc__)
    torch.set_num_threads(args.threads)
    scenario = variant(args.env).scenario
    kwargs = {"checkpoint": args.checkpoint} if args.checkpoint else {}
    rows = []
    for name, values in ACTIONS[scenario].items():
        action = np.asarray(values, dtype=np.float32 if scenario != "explore" else np.int8)
        imagined = imagined_returns(args.env, action, args.envs, args.steps, kwargs)
        real = real_returns(args.env, action, args.real_episodes, args.steps, args.checkpoint)
        rows.append({"action": name, "values": values, "imagined_mean": float(imagined.mean()),
                     "imagined_std": float(imagined.std()), "real_mean": float(real.mean()),
                     "real_std": float(real.std())})  # fmt: skip
    rho = spearman([r["imagined_mean"] for r in rows], [r["real_mean"] for r in rows])
    print(f"| action | imagined return ({args.envs} eps) | real return ({args.real_episodes} eps) |")
    print("|---|---:|---:|")
    for r in rows:
        imagined = f"{r['imagined_mean']:.2f} ± {r['imagined_std']:.2f}"
        print(f"| {r['action']} | {imagined} | {r['real_mean']:.2f} ± {r['real_std']:.2f} |")
    print(f"rank agreement (Spearman rho): {rho:.2f}")
    command = "python -m benchmarks.imagined_vs_real " + " ".join(sys.argv[1:] if argv is None else argv)
    config = dataclasses.asdict(args) | {"command": command, "spearman_rho": rho}
    write_results(args.out, "imagined_vs_real", config, rows, torch.device("cpu"))
    return {"rows": rows, "spearman_rho": rho}


if __name__ == "__main__":
    main()
