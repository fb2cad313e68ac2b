"""Train a Stable-Baselines3 agent inside an Astra world-model env; evaluate it in the real simulator.

    python -m astra_gym.agents.train_sb3 --env Astra-Drive-v0 --algo ppo --total-timesteps 200000
    python -m astra_gym.agents.train_sb3 --env Astra-Drive-v0 --env-real ...     # baseline: train in the simulator
    python -m astra_gym.agents.train_sb3 --help                                   # every flag, with its default

Inside (default), the agent only ever sees imagined experience (DIAMOND's recipe): ``--num-envs``
world-model rows stepped in one batch (:class:`~astra_gym.agents.sb3_vec_env.AstraSB3VecEnv`),
every episode starting from real simulator frames (the variant's frame bank) and truncated after
``--imagined-horizon`` steps (short, so errors of the model do not compound), rewards and episode
ends from the learned reward model. With ``--env-real`` the same agent trains in the real
simulator wrapper (:func:`~astra_gym.agents.real_env.make_real_env`), full-length episodes.

Either way it is evaluated in the real simulator (same 64x64 frames, action space and frame skip
as the Astra env): every ``--eval-freq`` env steps by SB3's ``EvalCallback`` (``eval/mean_reward``),
and at the end on ``--eval-episodes`` seeded episodes. Outputs under ``--out/<run name>/``:

=========================  ========================================================
``args.json``              the flags of the run
``progress.csv``, events  SB3's log (``rollout/``, ``train/``, ``eval/``, ``time/``) as CSV and
                           TensorBoard events: ``tensorboard --logdir <out>``
``checkpoints/``           ``<algo>_<steps>_steps.zip`` every ``--save-freq`` env steps
``eval/``                  ``evaluations.npz`` and ``best_model.zip`` of the periodic evaluation
``final_model.zip``        the model after ``--total-timesteps``
``summary.json``           final real-simulator returns, wall-clock seconds, env steps
=========================  ========================================================
"""

from __future__ import annotations

import dataclasses
import json
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import torch
from gymnasium import spaces
from stable_baselines3 import A2C, PPO
from stable_baselines3.common.base_class import BaseAlgorithm
from stable_baselines3.common.callbacks import BaseCallback, CallbackList, CheckpointCallback, EvalCallback
from stable_baselines3.common.logger import configure
from stable_baselines3.common.vec_env import DummyVecEnv, VecEnv, VecMonitor, VecTransposeImage

import astra_gym  # noqa: F401  (registers the ids)
from astra_gym.agents.evaluation import SB3Policy, evaluate
from astra_gym.agents.plots import plot_progress
from astra_gym.agents.real_env import make_real_env
from astra_gym.agents.sb3_vec_env import AstraSB3VecEnv
from astra_gym.data.tasks import get_task
from astra_gym.envs.variants import variant
from astra_gym.utils.atomic import atomic_write_text
from astra_gym.utils.cli_args import arg, parse_config

__all__ = ["Args", "ALGOS", "make_train_env", "make_eval_env", "make_model", "train", "main"]

ALGOS: dict[str, type[BaseAlgorithm]] = {"ppo": PPO, "a2c": A2C}
EVAL_SEED_OFFSET = 10_000  # evaluation episodes use seeds no training env starts from


@dataclass(frozen=True)
class Args:
    """Flags of ``train_sb3`` (each field's help is its ``--help`` text)."""

    # ---- what to train where
    env: str = arg("Astra-Drive-v0", help="registered Astra id; its scenario's simulator is used for evaluation")
    algo: Literal["ppo", "a2c"] = arg("ppo", help="SB3 algorithm (CnnPolicy on the 64x64 frames)")
    env_real: bool = arg(False, help="train in the real simulator wrapper instead of the world model (baseline)")
    task: str | None = arg(
        None,
        help="the agent task (astra_gym.data.tasks, e.g. progress on Manipulation): the reward of every real "
        "evaluation and of --env-real training; inside, the bundle's reward model of that task scores the imagined "
        "steps; none = the simulator's own",
    )
    checkpoint: str | None = arg(
        None,
        help="world model (the env's checkpoint kwarg, e.g. debug); the real simulator is set up like its training "
        "data (e.g. its FetchPush camera), with --env-real too; none = variant's",
    )
    init_model: str | None = arg(None, help="continue training this saved model (.zip) instead of a fresh policy")
    frame_bank: str | None = arg(None, help="inside: start contexts (bank name or .npz path); none = the variant's")
    total_timesteps: int = arg(100_000, help="env steps to train for (imagined steps inside, real with --env-real)")
    num_envs: int = arg(8, help="parallel envs (inside: rows of one batched world-model step)")
    imagined_horizon: int = arg(50, help="inside: steps per imagined episode before truncation (tens, DIAMOND)")
    num_denoise_steps: int | None = arg(None, help="inside: Euler steps per generated chunk; none = the checkpoint's")
    uncertainty_penalty: float = arg(
        0.0,
        help="inside: the reward loses this times the world model's disagreement at each step (two draws; the "
        "env's uncertainty_penalty, MOPO's penalty), keeping the agent where the model is right; 0 = off",
    )
    rest_baseline: bool = arg(
        False,
        help="inside (Manipulation, Explore): the reward is the step's minus the do-nothing command's on the same "
        "noise (the env's rest_baseline), so what the model imagines whatever the action cancels",
    )
    # ---- algorithm hyperparameters (SB3 names; clip-range/batch-size/n-epochs are PPO only)
    n_steps: int = arg(128, help="steps per env per rollout (rollout = n_steps x num_envs)")
    batch_size: int = arg(256, help="PPO minibatch size")
    n_epochs: int = arg(4, help="PPO epochs per rollout")
    learning_rate: float = arg(2.5e-4, help="Adam learning rate")
    gamma: float = arg(0.99, help="discount factor")
    gae_lambda: float = arg(0.95, help="GAE lambda")
    clip_range: float = arg(0.1, help="PPO clipping range")
    ent_coef: float = arg(0.01, help="entropy bonus coefficient")
    log_std_init: float = arg(
        -1.0,
        help="Box actions: initial log std of the Gaussian policy (SB3's 0 = std 1 makes the mode useless "
        "on clipped pedals; agents/README.md)",
    )
    # ---- evaluation, checkpoints, logging
    seed: int = arg(0, help="seeds the envs (env i: seed + i), the policy and the evaluation episodes")
    eval_freq: int = arg(10_000, help="evaluate in the real simulator every this many env steps; 0 = never")
    eval_episodes: int = arg(5, help="real episodes per evaluation (and for the final evaluation; 0 = none)")
    eval_max_steps: int | None = arg(None, help="cap on real evaluation episode length; none = the variant's")
    save_freq: int = arg(50_000, help="save a checkpoint every this many env steps; 0 = never")
    out: str = arg("runs/sb3", help="output folder (one subfolder per run)")
    run_name: str | None = arg(None, help="run subfolder; none = <env>__<algo>__<inside|real>__<seed>__<time>")
    device: str = arg("auto", help="torch device of the policy and the world model: cpu, cuda[:N] or auto")
    threads: int = arg(1, help="torch CPU threads (1 on shared machines)")
    progress_bar: bool = arg(True, help="show SB3's progress bar")
    verbose: int = arg(0, help="SB3 verbosity (1 prints the training log)")

    def __post_init__(self) -> None:
        if self.num_envs < 1 or self.total_timesteps < 1 or self.imagined_horizon < 1:
            raise ValueError("--num-envs, --total-timesteps and --imagined-horizon must be >= 1")
        if not self.uncertainty_penalty >= 0:
            raise ValueError(f"--uncertainty-penalty {self.uncertainty_penalty}: give a number >= 0 (0 = off)")
        if self.task is not None:
            get_task(variant(self.env).scenario, self.task)  # an unknown task raises, listing the choices
        if self.n_steps * self.num_envs < 2:
            raise ValueError("n_steps x num_envs must be >= 2 (advantage normalisation); raise --n-steps")


def make_train_env(args: Args) -> VecEnv:
    """The training VecEnv: batched world-model rows (inside) or real simulators (``--env-real``), monitored."""
    if args.env_real:
        thunks = [
            lambda: make_real_env(args.env, task=args.task, checkpoint=args.checkpoint) for _ in range(args.num_envs)
        ]
        return VecMonitor(DummyVecEnv(thunks))
    kwargs: dict[str, Any] = {"max_episode_steps": args.imagined_horizon}
    if args.checkpoint is not None:
        kwargs["checkpoint"] = args.checkpoint
    if args.num_denoise_steps is not None:
        kwargs["num_denoise_steps"] = args.num_denoise_steps
    if args.frame_bank is not None:
        kwargs["frame_bank"] = args.frame_bank
    if args.device != "auto":
        kwargs["device"] = args.device
    if args.task is not None:
        kwargs["task"] = args.task  # the bundle's reward model of that task (it names the fix if it has none)
    if args.uncertainty_penalty > 0:
        kwargs["uncertainty_penalty"] = args.uncertainty_penalty
    if args.rest_baseline:
        kwargs["rest_baseline"] = True
    return VecMonitor(AstraSB3VecEnv.make(args.env, args.num_envs, **kwargs))


def frames_per_step(train_env: VecEnv) -> int:
    """Frames one step of the training env generates (the real env must hold actions as long)."""
    venv = train_env.unwrapped
    return venv.venv.engine.frames_per_step if isinstance(venv, AstraSB3VecEnv) else 1


def make_eval_env(args: Args, steps_per_action: int) -> VecEnv:
    """One real simulator for SB3's ``EvalCallback`` (wrapped like the training env; seeded)."""
    env = VecTransposeImage(
        VecMonitor(
            DummyVecEnv(
                [
                    lambda: make_real_env(
                        args.env, args.eval_max_steps, steps_per_action, task=args.task, checkpoint=args.checkpoint
                    )
                ]
            )
        )
    )
    env.seed(args.seed + EVAL_SEED_OFFSET)
    return env


def make_model(args: Args, env: VecEnv) -> BaseAlgorithm:
    """The SB3 algorithm with ``CnnPolicy`` (SB3 adds ``VecTransposeImage`` for the uint8 HWC frames)."""
    kwargs: dict[str, Any] = {
        "n_steps": args.n_steps,
        "learning_rate": args.learning_rate,
        "gamma": args.gamma,
        "gae_lambda": args.gae_lambda,
        "ent_coef": args.ent_coef,
    }
    if args.algo == "ppo":
        kwargs.update(batch_size=args.batch_size, n_epochs=args.n_epochs, clip_range=args.clip_range)
    if args.init_model is not None:  # keeps the saved policy and optimiser; the flags above set the new run
        return ALGOS[args.algo].load(args.init_model, env=env, device=args.device, seed=args.seed, **kwargs)
    if isinstance(env.action_space, spaces.Box):
        kwargs["policy_kwargs"] = {"log_std_init": args.log_std_init}
    return ALGOS[args.algo]("CnnPolicy", env, seed=args.seed, device=args.device, verbose=args.verbose, **kwargs)


def make_callbacks(args: Args, eval_env: VecEnv | None, run_dir: Path) -> list[BaseCallback]:
    """Periodic real-simulator evaluation and checkpointing (frequencies in env steps)."""
    callbacks: list[BaseCallback] = []
    if eval_env is not None:
        callbacks.append(
            EvalCallback(
                eval_env,
                n_eval_episodes=args.eval_episodes,
                eval_freq=max(args.eval_freq // args.num_envs, 1),
                log_path=str(run_dir / "eval"),
                best_model_save_path=str(run_dir / "eval"),
                deterministic=True,
                verbose=args.verbose,
            )
        )
    if args.save_freq > 0:
        callbacks.append(
            CheckpointCallback(
                save_freq=max(args.save_freq // args.num_envs, 1),
                save_path=str(run_dir / "checkpoints"),
                name_prefix=args.algo,
            )
        )
    return callbacks


def run_dir_of(args: Args) -> Path:
    """``--out/<run name>`` (cleanrl-style default name)."""
    where = "real" if args.env_real else "inside"
    name = args.run_name or f"{args.env}__{args.algo}__{where}__{args.seed}__{int(time.time())}"
    return Path(args.out) / name


def train(args: Args) -> tuple[BaseAlgorithm, dict]:
    """Trains per ``args`` and evaluates the final model in the real simulator.

    Returns:
        (the trained model, the summary also written to ``summary.json``).
    """
    run_dir = run_dir_of(args)
    run_dir.mkdir(parents=True, exist_ok=True)
    atomic_write_text(run_dir / "args.json", json.dumps(dataclasses.asdict(args), indent=2))
    env = make_train_env(args)
    steps_per_action = frames_per_step(env)
    eval_env = make_eval_env(args, steps_per_action) if args.eval_freq > 0 and args.eval_episodes > 0 else None
    model = make_model(args, env)
    model.set_logger(configure(str(run_dir), ["csv", "tensorboard"] + (["stdout"] if args.verbose else [])))
    start = time.perf_counter()
    callbacks = CallbackList(make_callbacks(args, eval_env, run_dir))
    model.learn(args.total_timesteps, callback=callbacks, progress_bar=args.progress_bar)
    train_seconds = time.perf_counter() - start
    model.save(run_dir / "final_model")
    env.close()
    if eval_env is not None:
        eval_env.close()
    summary = {
        "run_dir": str(run_dir),
        "mode": "real" if args.env_real else "inside",
        "env_steps": int(model.num_timesteps),
        "train_seconds": train_seconds,
        "final_eval": final_evaluation(args, model, steps_per_action),
    }
    atomic_write_text(run_dir / "summary.json", json.dumps(summary, indent=2))
    plot_progress(run_dir / "progress.csv", run_dir / "learning_curve.png", inside=not args.env_real)
    return model, summary


def final_evaluation(args: Args, model: BaseAlgorithm, steps_per_action: int) -> dict | None:
    """``--eval-episodes`` real episodes, seeds ``seed + 10000 + k`` (None when 0 episodes)."""
    if args.eval_episodes == 0:
        return None
    env = make_real_env(args.env, args.eval_max_steps, steps_per_action, task=args.task, checkpoint=args.checkpoint)
    try:
        seeds = [args.seed + EVAL_SEED_OFFSET + k for k in range(args.eval_episodes)]
        return evaluate(env, SB3Policy(model), seeds).to_dict()
    finally:
        env.close()


def main(argv: list[str] | None = None) -> dict:
    """CLI entry point (see the module docstring)."""
    args = parse_config(Args, argv, __doc__)
    torch.set_num_threads(args.threads)
    _, summary = train(args)
    final = summary["final_eval"]
    result = f"; real return {final['mean_return']:.2f} +- {final['std_return']:.2f}" if final else ""
    print(f"{summary['env_steps']} {summary['mode']} env steps in {summary['train_seconds']:.0f}s{result}")
    print(f"run folder: {summary['run_dir']}")
    return summary


if __name__ == "__main__":
    main()
