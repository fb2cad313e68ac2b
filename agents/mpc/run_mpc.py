"""Run MPC in the real simulator, planning inside the world model.

Every step re-encodes the newest real frames, imagines ``--candidates`` action sequences of
``--horizon`` steps in one batched rollout, scores them with the reward model and executes the
first action of the plan in the real simulator (:mod:`astra_gym.agents.mpc.controller`)::

    python -m astra_gym.agents.mpc.run_mpc --env Astra-Drive-v0 --planner cem --episodes 3
    # plumbing check on random weights:
    python -m astra_gym.agents.mpc.run_mpc --checkpoint debug --max-steps 5 --candidates 8 --horizon 3

Episodes use the seeds ``--seed``, ``--seed + 1``, ...; the planner's randomness comes from one
generator seeded with ``--seed``. Prints one line per episode as it ends; ``--out`` holds the JSON
summary of the episodes so far (rewritten atomically after each).
"""

from __future__ import annotations

import dataclasses
import json
import time
import warnings
from dataclasses import dataclass
from typing import Literal

import torch

from astra_gym.agents.evaluation import EvalResult, evaluate
from astra_gym.agents.mpc.cem import CEMConfig, CEMPlanner
from astra_gym.agents.mpc.controller import MPCController
from astra_gym.agents.mpc.mppi import MPPIConfig, MPPIPlanner
from astra_gym.agents.mpc.planner import Planner
from astra_gym.agents.mpc.sampling import ActionPrior
from astra_gym.agents.mpc.value import SB3Value
from astra_gym.agents.mpc.world_model import WorldModelDynamics, data_prior, load_engine
from astra_gym.agents.real_env import make_real_env
from astra_gym.envs.spaces import action_space
from astra_gym.envs.variants import variant
from astra_gym.utils.atomic import atomic_write_text
from astra_gym.utils.cli_args import arg, parse_config

__all__ = ["Args", "make_planner", "make_controller", "run", "main"]


@dataclass(frozen=True)
class Args:
    """Flags of ``run_mpc`` (each field's help is its ``--help`` text)."""

    env: str = arg("Astra-Drive-v0", help="Astra id: its world model plans, its real simulator is controlled")
    checkpoint: str | None = arg(None, help="world model (the env's checkpoint kwarg); none = the variant's bundle")
    task: str | None = arg(
        None,
        help="agent task (astra_gym.data.tasks): the bundle's reward model of it plans, the real episodes are scored "
        "on it; none = the simulator's own reward",
    )
    planner: Literal["cem", "mppi"] = arg("cem", help="planning algorithm")
    horizon: int = arg(8, help="imagined steps per candidate sequence")
    candidates: int = arg(64, help="candidate sequences per iteration (the batch of one imagined rollout)")
    iterations: int = arg(3, help="distribution updates per control step")
    elites: int = arg(8, help="CEM: candidates the distribution is refit to")
    prior: Literal["data", "centre"] = arg(
        "data", help="where the search starts: the model's training-data actions, or the action space's centre"
    )
    init_std: float = arg(0.5, help="CEM with --prior centre: initial std of Box actions, fraction of the half range")
    temperature: float = arg(1.0, help="MPPI: softmax temperature of the returns")
    noise_std: float = arg(0.3, help="MPPI: exploration std of Box actions, fraction of the half range")
    discount: float = arg(0.99, help="discount of the imagined rewards")
    value: str | None = arg(
        None, help="SB3 model zip (train_sb3, inside the model) whose critic values the horizon's last frame"
    )
    context_frames: int = arg(4, help="newest real frames re-encoded as context every step")
    replan_every: int = arg(
        1,
        help="actions of each plan executed before planning again (K: 1/K of the cost); keep it below --horizon "
        "so that the rest of each plan warm-starts the next",
    )
    noise: Literal["shared", "independent"] = arg("shared", help="denoising noise of the candidates (shared = CRN)")
    rest_baseline: bool = arg(
        False,
        help="score each imagined step minus the do-nothing command's on the same noise (Manipulation, Explore; "
        "the envs' rest_baseline)",
    )
    num_denoise_steps: int | None = arg(None, help="Euler steps per imagined chunk; none = the checkpoint's")
    episodes: int = arg(1, help="real episodes to run")
    max_steps: int | None = arg(None, help="cap on real steps per episode; none = the variant's episode length")
    seed: int = arg(0, help="episode seeds are seed, seed+1, ...; also seeds the planner")
    device: str = arg("auto", help="world-model device: cpu, cuda[:N] or auto")
    threads: int = arg(1, help="torch CPU threads (1 on shared machines)")
    out: str | None = arg(None, help="JSON summary file; none = print only")


def make_planner(args: Args, space, prior: ActionPrior | None = None) -> Planner:
    """The planner named by ``args.planner`` for ``space``, starting its search at ``prior``."""
    if args.planner == "cem":
        config = CEMConfig(
            horizon=args.horizon,
            num_candidates=args.candidates,
            num_elites=min(args.elites, args.candidates),
            iterations=args.iterations,
            discount=args.discount,
            init_std=args.init_std,
        )
        return CEMPlanner(space, config, prior)
    config = MPPIConfig(
        horizon=args.horizon,
        num_candidates=args.candidates,
        iterations=args.iterations,
        temperature=args.temperature,
        noise_std=args.noise_std,
        discount=args.discount,
    )
    return MPPIPlanner(space, config, prior)


def make_controller(args: Args) -> MPCController:
    """World-model dynamics + planner + controller for ``args.env``."""
    spec = variant(args.env)
    checkpoint = args.checkpoint if args.checkpoint is not None else spec.checkpoint
    engine = load_engine(
        checkpoint, spec.scenario, args.device, task=args.task, num_denoise_steps=args.num_denoise_steps
    )
    value = SB3Value(args.value) if args.value else None
    dynamics = WorldModelDynamics(
        engine, spec.scenario, noise=args.noise, value=value, rest_baseline=args.rest_baseline
    )
    prior = data_prior(checkpoint, spec.scenario, args.device) if args.prior == "data" else None
    if args.prior == "data" and prior is None:  # e.g. the weight-free debug model
        warnings.warn(
            f"{checkpoint!r} records no action statistics of its data: planning from the centre", stacklevel=2
        )
    planner = make_planner(args, action_space(spec.scenario), prior)
    return MPCController(
        dynamics, planner, context_frames=args.context_frames, seed=args.seed, replan_every=args.replan_every
    )


def run(args: Args) -> dict:
    """Runs ``args.episodes`` real episodes under MPC.

    Returns:
        Summary: per-episode returns and lengths, imagined steps, planning and total seconds.
    """
    start = time.perf_counter()
    controller = make_controller(args)
    env = make_real_env(
        args.env,
        args.max_steps,
        frames_per_step=controller.dynamics.engine.frames_per_step,
        task=args.task,
        checkpoint=args.checkpoint,
    )

    def summary(result: EvalResult) -> dict:
        return {
            **result.to_dict(),
            "imagined_steps": controller.imagined_steps,
            "plan_seconds": controller.plan_seconds,
            "total_seconds": time.perf_counter() - start,
            "args": dataclasses.asdict(args),
        }

    def progress(result: EvalResult) -> None:  # one line and the summary so far, after every episode
        print(
            f"episode {len(result.seeds)}/{args.episodes} seed={result.seeds[-1]}: return {result.returns[-1]:.3f} "
            f"over {result.lengths[-1]} steps ({time.perf_counter() - start:.0f}s)",
            flush=True,
        )
        if args.out:
            atomic_write_text(args.out, json.dumps(summary(result), indent=2))

    try:
        result = evaluate(env, controller, [args.seed + k for k in range(args.episodes)], progress)
    finally:
        env.close()
    return summary(result)


def main(argv: list[str] | None = None) -> dict:
    """CLI entry point (see the module docstring)."""
    args = parse_config(Args, argv, __doc__)
    torch.set_num_threads(args.threads)
    summary = run(args)
    print(
        f"mean return {summary['mean_return']:.3f} | {summary['imagined_steps']} imagined steps | "
        f"planning {summary['plan_seconds']:.1f}s of {summary['total_seconds']:.1f}s"
    )
    return summary


if __name__ == "__main__":
    main()
