"""Action following and long horizons against the real simulator, from the same real starts.

For ``--starts`` S unseen simulator seeds and K = 4 distinct constant actions per scenario, the real
simulator and the Astra env start from the SAME state (the env gets the real context frames and the
actions that produced them) and both hold each action for ``--long`` steps. Reported per start kind
(``reset``: right after a real reset, the car at rest; ``mid``: after ``--warm`` steps of the
data's expert policy):

* **action identification** at ``--horizon`` H: for each start and action k, is the imagined frame
  at step H closest (pixel MSE) to the real branch of the same action? Chance is 1/K. One noise
  draw per start decides a close call (e.g. full gas against brake), so ``--noise-draws`` D repeats
  the test with D draws of the imagined branches (``identification_over_draws``; the first draw is
  the reported ``identification``).
* **PSNR and SSIM** against the real frames at steps 1, 8, 32 and 64 (those within ``--long``).
* **ego-car presence** (drive): share of imagined frames, at those steps and over all steps, in
  which CarRacing's car is visible (:func:`astra_gym.evaluation.details.car_present`); the real
  frames' share is reported next to it.
* **scene change** at H per action: mean absolute pixel change from the start frame, real and
  imagined (an imagined branch that changes less than the real one under-acts: e.g. a car that
  neither speeds up under gas nor stops under brake).
* **diagnosis** (what to blame): the real return of each branch next to the reward model's return
  on the REAL frames and on the imagined frames, their per-step MAE, and the rank agreement
  (Spearman) of the K actions' returns within each start; and the PSNR of teacher-forced one-step
  predictions (from the real frames so far) next to the free-running rollout's over steps 1..H.
  Reward model wrong on real frames: the reward model's error. Right on real, wrong on imagined:
  the world model's. Teacher-forced good, free-running bad: compounding error. ``reset`` vs ``mid``
  rows show the start-state effect.

    python -m benchmarks.action_following --env Astra-Drive-v0 --checkpoint drive-v5 --starts 16 --noise-draws 4 \\
        --out benchmarks/results/action_following_drive_drive-v5.json

Writes ``--out`` (JSON) and prints a markdown summary. Seeds are ``--seed-offset + s``, never used
for training data (the recorder derives its seeds from (dataset seed, episode)).
"""

from __future__ import annotations

import dataclasses
import sys
from dataclasses import dataclass, field

import gymnasium as gym
import numpy as np
import torch
from tqdm import tqdm

import astra_gym  # noqa: F401 - registers the ids
from astra_gym.data.policies import make_policy
from astra_gym.data.replay import replay
from astra_gym.data.tasks import Task, get_task, relabel
from astra_gym.envs.spaces import EXPLORE_BUTTONS, action_rows
from astra_gym.envs.variants import variant
from astra_gym.evaluation.details import car_present
from astra_gym.evaluation.metrics import PSNR_CAP_DB, psnr, ssim
from astra_gym.utils.cli_args import arg, parse_config
from benchmarks.common import sampler_overrides, spearman, write_results

# K = 4 distinct constant actions per scenario, in the simulator's own action space.
ACTIONS: dict[str, dict[str, list[float]]] = {
    "drive": {"steer left": [-1, 0, 0], "steer right": [1, 0, 0], "full gas": [0, 1, 0], "brake": [0, 0, 0.8]},
    "manipulation": {"+x": [1, 0, 0, 0], "-x": [-1, 0, 0, 0], "+y": [0, 1, 0, 0], "-y": [0, -1, 0, 0]},
    # MOVE_FORWARD, MOVE_BACKWARD, TURN_LEFT, TURN_RIGHT, MOVE_LEFT, MOVE_RIGHT
    "explore": {"forward": [1, 0, 0, 0, 0, 0], "backward": [0, 1, 0, 0, 0, 0], "turn left": [0, 0, 1, 0, 0, 0],
                "turn right": [0, 0, 0, 1, 0, 0]},
}  # fmt: skip
REPORT_STEPS = (1, 8, 32, 64)
NOISE_DRAW_STRIDE = 100_000  # env seeds of the extra noise draws: start seed + stride * j, clear of the starts'


@dataclass
class Start:
    """One real start: seed, the action prefix from the reset, and the context the env gets.

    Attributes:
        seed: Simulator seed.
        prefix: [P, ...] native actions from the reset to the start state.
        frames: uint8 [T, 64, 64, 3] context (the last is the start state).
        actions: [T - 1, ...] the actions between the context frames.
        sim_config: Simulator config overrides the start was made with (e.g. ``frame_skip``); the
            real branches replay with the same.
    """

    seed: int
    prefix: np.ndarray
    frames: np.ndarray
    actions: np.ndarray
    sim_config: dict = field(default_factory=dict)


def _native(scenario: str, action: list[float]) -> np.ndarray:
    return np.asarray(action, np.int64 if scenario == "explore" else np.float32)


def make_start(scenario: str, seed: int, kind: str, context: int, warm: int, **sim_config: object) -> Start:
    """The real start of ``kind`` ("reset" or "mid") for ``seed``, with a ``context``-frame context.

    ``sim_config`` overrides the simulator's config (:func:`astra_gym.data.sims.make_simulator`).
    """
    zero = np.zeros_like(_native(scenario, next(iter(ACTIONS[scenario].values()))))
    with replay(seed, None, scenario=scenario, **sim_config) as session:
        frames, actions = [session.frame()], []
        policy = make_policy("expert", scenario, EXPLORE_BUTTONS if scenario == "explore" else ())
        policy.reset(session.env, np.random.default_rng(seed))
        steps = (context - 1) if kind == "reset" else warm
        for _ in range(steps):
            action = zero if kind == "reset" else np.asarray(policy.act(session.obs, session.env), zero.dtype)
            branch = session.continue_with(action[None])
            frames.append(branch.frames[-1])
            actions.append(branch.actions[-1])
    frames, actions = np.stack(frames), np.stack(actions)
    return Start(seed, actions, frames[-context:], actions[len(actions) - (context - 1) :], dict(sim_config))


def real_branches(scenario: str, start: Start, steps: int, task: Task | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Real frames uint8 [K, steps, 64, 64, 3] and rewards [K, steps] of each constant action.

    ``task`` (None: the simulator's own reward) recomputes the rewards from the branch's poses.
    """
    task = task or get_task(scenario)
    frames, rewards = [], []
    for action in ACTIONS[scenario].values():
        with replay(start.seed, start.prefix, scenario=scenario, **start.sim_config) as session:
            if not np.array_equal(session.frame(), start.frames[-1]):
                raise RuntimeError(f"seed {start.seed}: replaying the prefix did not reproduce the start frame")
            ep = session.continue_with(np.repeat(_native(scenario, action)[None], steps, axis=0))
        got = ep.frames[1:]
        pad = steps - len(got)  # the simulator ended the episode: hold its last frame, reward 0
        frames.append(np.concatenate([got, np.repeat(got[-1:], pad, axis=0)]) if pad else got)
        got_rewards = relabel(ep.poses, ep.rewards, task)
        rewards.append(np.concatenate([got_rewards, np.zeros(pad)]) if pad else got_rewards)
    return np.stack(frames), np.stack(rewards).astype(np.float64)


def imagined_branches(envs: gym.vector.VectorEnv, scenario: str, start: Start, steps: int, seed: int):
    """The env's frames uint8 [K, steps, 64, 64, 3] and rewards [K, steps] from the same start."""
    actions = np.stack([_native(scenario, a) for a in ACTIONS[scenario].values()])
    envs.reset(seed=seed, options={"frames": start.frames, "actions": start.actions})
    frames, rewards = [], []
    for _ in range(steps):
        obs, reward, _, _, _ = envs.step(actions)
        frames.append(obs)
        rewards.append(reward)
    return np.stack(frames, axis=1), np.stack(rewards, axis=1).astype(np.float64)


def reward_on_frames(core, seq: np.ndarray, rows: np.ndarray) -> np.ndarray:
    """The env's reward model on given frames: [B, L] for frames uint8 [B, L + 1, H, W, 3] (the start frame
    first) and the action rows [B, L, d] of the L steps, read through the trainer's frame windows; NaN where
    the bundle has no reward model. The start frame is also an anchored reward model's anchor."""
    if core.engine.reward_model is None:
        return np.full(rows.shape[:2], np.nan)
    k = core.engine.reward_model.config.num_frames
    out = np.zeros(rows.shape[:2])
    for t in range(rows.shape[1]):
        window = seq[:, max(0, t + 2 - k) : t + 2]
        if window.shape[1] < k:  # before the start: repeat the oldest frame (as the trainer does)
            window = np.concatenate([np.repeat(window[:, :1], k - window.shape[1], axis=1), window], axis=1)
        out[:, t] = core.engine.score_frames(window, rows[:, t : t + 1], anchor=seq[:, :1])[0].double().cpu().numpy()
    return out


def reward_on_real(envs, scenario: str, start: Start, real: np.ndarray) -> np.ndarray:
    """The env's reward model on the REAL frames of each branch: [K, steps] (same rows as the env's)."""
    core = envs.unwrapped.core
    seq = np.concatenate([np.repeat(start.frames[-1:][None], len(real), axis=0), real], axis=1)  # [K, L+1, ...]
    actions = np.stack([_native(scenario, a) for a in ACTIONS[scenario].values()])
    rows = action_rows(scenario, core.check(actions, len(actions)), core.engine.action_dim)  # [K, d]
    return reward_on_frames(core, seq, np.repeat(rows[:, None], real.shape[1], axis=1))


def teacher_forced(envs, scenario: str, start: Start, real: np.ndarray, steps: int, seed: int) -> np.ndarray:
    """PSNR [K, steps] of one-step predictions from the REAL frames so far (teacher forcing).

    For step t the env restarts from the last T real frames before it (context, then branch) with
    their actions, and takes one step; the free-running rollout's PSNR at the same steps is the
    comparison that separates one-step error from compounding error.
    """
    actions = np.stack([_native(scenario, a) for a in ACTIONS[scenario].values()])  # [K, ...]
    count, context = len(actions), len(start.frames)
    frames = np.concatenate([np.repeat(start.frames[None], count, axis=0), real], axis=1)  # [K, T + L, ...]
    acts = np.concatenate(
        [np.repeat(start.actions[None], count, axis=0), np.repeat(actions[:, None], real.shape[1], axis=1)], axis=1
    )  # [K, T - 1 + L, ...]
    out = np.zeros((count, steps))
    for t in range(steps):
        ctx = frames[:, t : t + context]
        envs.reset(seed=seed + t, options={"frames": ctx, "actions": acts[:, t : t + context - 1]})
        obs, *_ = envs.step(actions)
        out[:, t] = np.minimum(psnr(real[:, t], obs), PSNR_CAP_DB)
    return out


def closest_branch(imagined: np.ndarray, real: np.ndarray) -> np.ndarray:
    """int [K]: the real branch closest (pixel MSE) to each imagined frame. Args: uint8 [K, H, W, 3] each."""
    a = imagined.astype(np.float32)[:, None]
    b = real.astype(np.float32)[None]
    distance = ((a - b) ** 2).mean(axis=(2, 3, 4))  # [K, K]
    return distance.argmin(axis=1)


def scene_change(start: np.ndarray, frames: np.ndarray) -> np.ndarray:
    """float [K]: mean absolute pixel change of each frame from the start frame.

    Args:
        start: uint8 [H, W, 3] start frame.
        frames: uint8 [K, H, W, 3] one frame per branch.
    """
    return np.abs(frames.astype(np.float32) - start.astype(np.float32)).mean(axis=(1, 2, 3))


def summarise(scenario: str, kind: str, runs: list[dict], horizon: int, long: int) -> dict:
    """One result row from the per-start runs of one kind."""
    closest = np.stack([r["closest"] for r in runs])  # [S, K]
    ident = closest == np.arange(closest.shape[1])
    row = {
        "scenario": scenario,
        "kind": kind,
        "starts": len(runs),
        "actions": list(ACTIONS[scenario]),
        "horizon": horizon,
        "identification": float(ident.mean()),
        "chance": 1.0 / len(ACTIONS[scenario]),
    }
    names = list(ACTIONS[scenario])
    row["identification_per_action"] = dict(zip(names, ident.mean(axis=0).tolist(), strict=True))
    draws = np.stack([r["closest_draws"] for r in runs])  # [S, D, K]
    hit = draws == np.arange(draws.shape[2])
    row["identification_over_draws"] = {
        "draws": draws.shape[1],
        "mean": float(hit.mean()),
        "per_action": dict(zip(names, hit.mean(axis=(0, 1)).tolist(), strict=True)),
        "per_draw": hit.mean(axis=(0, 2)).tolist(),
    }
    # confusion[a][b]: share of the starts whose imagined branch of action a is closest to the real branch of b
    shares = [[float((closest[:, i] == j).mean()) for j in range(len(names))] for i in range(len(names))]
    row["confusion"] = {a: dict(zip(names, shares[i], strict=True)) for i, a in enumerate(names)}
    change = {k: np.stack([r[f"change_{k}"] for r in runs]).mean(axis=0) for k in ("real", "imagined")}  # [K]
    row["scene_change_at_h"] = {a: {k: float(v[i]) for k, v in change.items()} for i, a in enumerate(names)}
    for step in (s for s in REPORT_STEPS if s <= long):
        row[f"psnr_{step}"] = float(np.mean([r["psnr"][:, step - 1].mean() for r in runs]))
        row[f"ssim_{step}"] = float(np.mean([r["ssim"][:, step - 1].mean() for r in runs]))
        if scenario == "drive":
            row[f"car_{step}"] = float(np.mean([r["car"][:, step - 1].mean() for r in runs]))
    if scenario == "drive":
        row["car_all_steps"] = float(np.mean([r["car"].mean() for r in runs]))
        per_action = np.stack([r["car"].mean(axis=1) for r in runs]).mean(axis=0)  # [K]
        row["car_all_steps_per_action"] = dict(zip(ACTIONS[scenario], per_action.tolist(), strict=True))
        row["car_real_all_steps"] = float(np.mean([r["car_real"].mean() for r in runs]))
    real_ret = np.stack([r["real_return"] for r in runs])  # [S, K]
    imag_ret = np.stack([r["imagined_return"] for r in runs])
    row["real_return"] = dict(zip(ACTIONS[scenario], real_ret.mean(0).tolist(), strict=True))
    row["imagined_return"] = dict(zip(ACTIONS[scenario], imag_ret.mean(0).tolist(), strict=True))
    rm_ret = np.stack([r["reward_model_real_return"] for r in runs])
    row["reward_model_on_real_return"] = dict(zip(ACTIONS[scenario], rm_ret.mean(0).tolist(), strict=True))
    rhos = [spearman(a, b) for a, b in zip(real_ret, imag_ret, strict=True)]
    row["return_rank_rho"] = float(np.nanmean(rhos)) if not np.all(np.isnan(rhos)) else None
    rhos = [spearman(a, b) for a, b in zip(real_ret, rm_ret, strict=True)]
    row["return_rank_rho_reward_model_on_real"] = float(np.nanmean(rhos)) if not np.all(np.isnan(rhos)) else None
    row["reward_mae_real_frames"] = float(np.mean([r["reward_mae_real_frames"] for r in runs]))
    row["reward_mae_imagined_frames"] = float(np.mean([r["reward_mae_imagined_frames"] for r in runs]))
    row["teacher_forced_psnr_1_to_h"] = float(np.mean([r["teacher_forced_psnr"].mean() for r in runs]))
    row["free_running_psnr_1_to_h"] = float(np.mean([r["psnr"][:, :horizon].mean() for r in runs]))
    return row  # fmt: skip


def run_start(
    envs, scenario: str, start: Start, long: int, horizon: int, seed: int, task: Task | None = None, draws: int = 1
) -> dict:
    """Every per-start measurement (see the module docstring); ``draws - 1`` more noise draws of the
    imagined branches (env seeds ``seed + NOISE_DRAW_STRIDE * j``) repeat the identification test."""
    real, real_rewards = real_branches(scenario, start, long, task)
    imagined, imagined_rewards = imagined_branches(envs, scenario, start, long, seed)
    closest = [closest_branch(imagined[:, horizon - 1], real[:, horizon - 1])]
    for j in range(1, draws):
        again, _ = imagined_branches(envs, scenario, start, horizon, seed + NOISE_DRAW_STRIDE * j)
        closest.append(closest_branch(again[:, horizon - 1], real[:, horizon - 1]))
    out = {
        "closest": closest[0],
        "closest_draws": np.stack(closest),  # [draws, K]
        "change_real": scene_change(start.frames[-1], real[:, horizon - 1]),
        "change_imagined": scene_change(start.frames[-1], imagined[:, horizon - 1]),
        "psnr": np.minimum(psnr(real, imagined), PSNR_CAP_DB),  # [K, long]
        "ssim": ssim(real, imagined),
        "real_return": real_rewards.sum(axis=1),
        "imagined_return": imagined_rewards.sum(axis=1),
    }
    if scenario == "drive":
        out["car"], out["car_real"] = car_present(imagined), car_present(real)
    rm_real = reward_on_real(envs, scenario, start, real)
    out["reward_model_real_return"] = rm_real.sum(axis=1)
    out["reward_mae_real_frames"] = np.abs(rm_real - real_rewards).mean()
    modelled = envs.unwrapped.core.engine.reward_model is not None  # else the env's rewards are 0: no error to report
    out["reward_mae_imagined_frames"] = np.abs(imagined_rewards - real_rewards).mean() if modelled else np.nan
    out["teacher_forced_psnr"] = teacher_forced(envs, scenario, start, real, horizon, seed)  # [K, H]
    return out


@dataclass(frozen=True)
class Args:
    """Flags of ``action_following`` (each field's help is its ``--help`` text)."""

    env: str = arg("Astra-Drive-v0", help="an Astra id (its scenario picks the simulator)")
    checkpoint: str | None = arg(None, help="model bundle; none = the variant's")
    task: str | None = arg(
        None, help="agent task (astra_gym.data.tasks) of the real rewards and of the env's reward model; none = own"
    )
    starts: int = arg(8, help="real starts per kind")
    kinds: tuple[str, ...] = arg(("reset", "mid"), help="start kinds: reset and/or mid")
    horizon: int = arg(8, help="step of the identification test")
    noise_draws: int = arg(
        1, help="noise draws of the imagined branches per start for identification (the first is the reported one)"
    )
    long: int = arg(64, help="steps rolled out (PSNR/SSIM/car up to here)")
    warm: int = arg(40, help="expert-policy steps before a mid start")
    seed_offset: int = arg(20000, help="simulator seeds are offset + s")
    frame_skip: int | None = arg(
        None, help="the real simulator's frame skip (a model trained on data recorded at it); none = the scenario's"
    )
    denoise_steps: int | None = arg(None, help="override the bundle's sampler steps")
    guidance: float | None = arg(None, help="override the bundle's guidance scale")
    dtype: str | None = arg(None, help="env compute dtype (e.g. bfloat16, float32); none = the env's")
    batch_invariant: bool | None = arg(None, help="env kernels (false: the fast ones); none = the env's")
    threads: int = arg(1, help="torch threads")
    out: str = arg("results/action_following.json", help="JSON results path")


def main(argv: list[str] | None = None) -> dict:
    """CLI (see the module docstring); returns the written payload's rows."""
    args = parse_config(Args, argv, __doc__)
    if not set(args.kinds) <= {"reset", "mid"}:
        raise SystemExit(f"--kinds {' '.join(args.kinds)}: choose from reset and mid")
    if args.noise_draws < 1:
        raise SystemExit(f"--noise-draws {args.noise_draws}: give at least 1 (the reported draw)")
    torch.set_num_threads(args.threads)
    spec = variant(args.env)
    scenario = spec.scenario
    kwargs = {"checkpoint": args.checkpoint or spec.checkpoint}
    kwargs |= sampler_overrides(args.denoise_steps, args.guidance)
    if args.dtype is not None:
        kwargs["dtype"] = args.dtype
    if args.batch_invariant is not None:
        kwargs["batch_invariant"] = args.batch_invariant
    task = get_task(scenario, args.task)
    if args.task is not None:
        kwargs["task"] = args.task
    envs = gym.make_vec(args.env, num_envs=len(ACTIONS[scenario]), max_episode_steps=args.long + 1, **kwargs)
    context = envs.unwrapped.core.bank.context_length
    sim_config = dict(envs.unwrapped.core.sim_config)  # the model's recording settings, e.g. its camera
    if args.frame_skip is not None:
        sim_config["frame_skip"] = args.frame_skip
    rows = []
    for kind in args.kinds:
        runs = []
        for s in tqdm(range(args.starts), desc=f"{scenario} {kind} starts"):
            start = make_start(scenario, args.seed_offset + s, kind, context, args.warm, **sim_config)
            runs.append(run_start(envs, scenario, start, args.long, args.horizon, s, task, args.noise_draws))
        rows.append(summarise(scenario, kind, runs, args.horizon, args.long))
    config = {**dataclasses.asdict(args), "checkpoint": kwargs["checkpoint"], "context_frames": context}
    write_results(args.out, "action_following", config, rows, torch.device("cpu"))
    print(markdown(rows, kwargs["checkpoint"]))
    return {"rows": rows}


def markdown(rows: list[dict], checkpoint: str) -> str:
    """A markdown table of the result rows."""
    steps = [s for s in REPORT_STEPS if f"psnr_{s}" in rows[0]]
    head = ["model", "scenario", "start", f"action id @{rows[0]['horizon']} (chance)"]
    head += [f"PSNR @{s}" for s in steps] + (
        ["car @" + "/".join(map(str, steps)), "car all (real)"] if rows[0]["scenario"] == "drive" else []
    )
    head += ["return rank rho (RM on real)", "reward MAE real / imagined frames", "PSNR 1..H teacher-forced / free"]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for r in rows:
        cells = [checkpoint, r["scenario"], r["kind"], f"{r['identification']:.2f} ({r['chance']:.2f})"]
        cells += [f"{r[f'psnr_{s}']:.2f}" for s in steps]
        if r["scenario"] == "drive":
            cells += [
                "/".join(f"{r[f'car_{s}']:.2f}" for s in steps),
                f"{r['car_all_steps']:.2f} ({r['car_real_all_steps']:.2f})",
            ]
        rho, rho_rm = r["return_rank_rho"], r["return_rank_rho_reward_model_on_real"]
        cells.append(
            ("n/a" if rho is None else f"{rho:+.2f}") + " (" + ("n/a" if rho_rm is None else f"{rho_rm:+.2f}") + ")"
        )
        cells.append(f"{r['reward_mae_real_frames']:.3f} / {r['reward_mae_imagined_frames']:.3f}")
        cells.append(f"{r['teacher_forced_psnr_1_to_h']:.2f} / {r['free_running_psnr_1_to_h']:.2f}")
        lines.append("| " + " | ".join(cells) + " |")  # fmt: skip
    return "\n".join(lines)


if __name__ == "__main__":
    main(sys.argv[1:])
