"""Why does an agent trained inside not transfer? The same agent, from the same real starts, in both worlds.

For ``--starts`` S unseen simulator seeds (and each start kind of
:func:`benchmarks.action_following.make_start`: ``reset`` or ``mid``), the agent acts for
``--steps`` H steps

* **real**: in the real simulator, closed loop (it sees real frames);
* **open loop**: the Astra env starts from the same real context and replays the real run's actions
  (the world model's view of what the agent actually did);
* **imagined**: in the Astra env from the same context, closed loop (what training optimised).

Reported per kind, averaged over the starts:

* the real return (the task's), the reward model's return on the real frames, the open-loop and
  the closed-loop imagined returns: reward model wrong on real frames -> the reward model's error;
  right on real, wrong on open loop -> the world model's; open loop right, closed loop far above
  both -> the agent exploits the model;
* PSNR of the open-loop frames against the real ones at steps 1, 8 and H;
* the **policy gap**: the mean absolute difference between the agent's actions on the real frame
  and on the open-loop frame of the same step (same history, same actions so far), next to the
  **action spread**, the same difference between real frames of two different starts at the same
  step. A gap near the spread: the agent reads imagined frames as if they were another state.
  A gap near 0: it acts on imagined frames as on real ones;
* the mean action of the real and the imagined run (an agent that does the same on every real
  start has learned a reflex, not the task);
* on Manipulation, the **reach aim**: over the real steps where the gripper is more than
  ``REACH_DONE_M`` from the block (in the table plane), the mean cosine between the commanded xy
  motion and the gripper-to-block direction (the simulator's poses). An agent that reaches for
  the block wherever it is scores near 1; a fixed sweep or random motion near 0.

A contact sheet (``--out`` with ``.png``) shows, per start, the real, open-loop and imagined frames.

    python -m benchmarks.agent_diagnosis --env Astra-Manipulation-v0 --task progress \\
        --agent runs/sb3/inside/final_model.zip --checkpoint path/to/bundle --starts 10 --steps 50

Writes ``--out`` (JSON) and prints a markdown table.
"""

from __future__ import annotations

import dataclasses
import sys
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import gymnasium as gym
import numpy as np
import torch
from stable_baselines3 import PPO
from tqdm import tqdm

import astra_gym  # noqa: F401 - registers the ids
from astra_gym.data.replay import ReplaySession, replay
from astra_gym.data.tasks import Task, get_task, relabel
from astra_gym.envs.spaces import action_rows
from astra_gym.envs.variants import variant
from astra_gym.evaluation.metrics import PSNR_CAP_DB, psnr
from astra_gym.utils.atomic import atomic_write
from astra_gym.utils.cli_args import arg, parse_config
from astra_gym.utils.pixels import uint8_to_pixels
from benchmarks.action_following import Start, make_start, reward_on_frames
from benchmarks.common import write_results

SHEET_STEPS = 6  # frames per run in the contact sheet
REACH_DONE_M = 0.03  # gripper-block distance (m, xy) below which the reach aim stops counting a step


def reach_aim(poses: dict[str, np.ndarray], actions: np.ndarray) -> float | None:
    """Mean cosine between commanded xy motion and the gripper-to-block xy direction while reaching.

    Args:
        poses: The run's poses, ``[L + 1, 3]`` arrays keyed ``ee_pos`` and ``object_pos`` (FetchPush's);
            ``poses[k][t]`` is the state ``actions[t]`` acts on.
        actions: Native actions ``[L, >=2]`` whose first two entries move the gripper in x and y.

    Returns:
        The mean over the counted steps (cosine in [-1, 1]), or None when the poses lack those keys or
        no step counts (the gripper starts at the block, or never moves).
    """
    if not {"ee_pos", "object_pos"} <= set(poses):
        return None
    to_block = (poses["object_pos"][: len(actions)] - poses["ee_pos"][: len(actions)])[:, :2]
    move = np.asarray(actions, np.float64)[:, :2]
    distance, speed = np.linalg.norm(to_block, axis=1), np.linalg.norm(move, axis=1)
    counted = (distance > REACH_DONE_M) & (speed > 1e-6)
    if not counted.any():
        return None
    cosine = (to_block * move).sum(1)[counted] / (distance * speed)[counted]
    return float(cosine.mean())


def agent_actor(agent) -> Callable[[ReplaySession], np.ndarray]:
    """A saved agent as an actor of :func:`real_run`: its deterministic action on the session's frame."""
    return lambda session: agent.predict(session.frame(), deterministic=True)[0]


def real_run(
    act: Callable[[ReplaySession], np.ndarray],
    scenario: str,
    start: Start,
    steps: int,
    task: Task,
    begin: Callable[[ReplaySession], None] | None = None,
) -> dict:
    """An actor in the real simulator from ``start``, closed loop.

    Args:
        act: The next native action for the live session (e.g. :func:`agent_actor`).
        scenario: The simulator's scenario.
        start: The real start (its action prefix is replayed first).
        steps: Steps to run (fewer if the simulator ends the episode).
        task: The task that relabels the rewards.
        begin: Called once on the session at the start state (e.g. to reset a scripted policy).

    Returns:
        frames uint8 [L, 64, 64, 3], actions [L, ...], rewards [L] and poses ([L + 1, ...] per key).
    """
    frames, actions = [], []
    with replay(start.seed, start.prefix, scenario=scenario, **start.sim_config) as session:
        if not np.array_equal(session.frame(), start.frames[-1]):
            raise RuntimeError(f"seed {start.seed}: replaying the prefix did not reproduce the start frame")
        if begin is not None:
            begin(session)
        poses = {k: [v] for k, v in session.pose().items()}
        rewards = []
        for _ in range(steps):
            piece = session.continue_with(np.asarray(act(session))[None])
            frames.append(piece.frames[-1])
            actions.append(piece.actions[-1])
            rewards.append(piece.rewards[-1])
            for key, value in piece.poses.items():
                poses[key].append(value[-1])
            if session.done:
                break
    poses = {k: np.stack(v) for k, v in poses.items()}
    rewards = relabel(poses, np.array(rewards), task)
    return {"frames": np.stack(frames), "actions": np.stack(actions), "rewards": rewards, "poses": poses}


def open_loop(env, start: Start, real: dict, seed: int, agent=None) -> dict:
    """The real run's actions replayed in the env: frames, rewards, and (with ``agent``) its actions on those
    frames (``reactions``)."""
    env.reset(seed=seed, options={"frames": start.frames, "actions": start.actions})
    frames, rewards, reactions = [], [], []
    for action in real["actions"]:
        obs, reward, *_ = env.step(action)
        frames.append(obs)
        rewards.append(reward)
        if agent is not None:
            reactions.append(agent.predict(obs, deterministic=True)[0])
    out = {"frames": np.stack(frames), "rewards": np.array(rewards)}
    return out | ({"reactions": np.stack(reactions)} if agent is not None else {})


def imagined_run(env, agent, start: Start, steps: int, seed: int) -> dict:
    """The agent in the env from ``start``, closed loop: frames, actions, rewards."""
    obs, _ = env.reset(seed=seed, options={"frames": start.frames, "actions": start.actions})
    frames, actions, rewards = [], [], []
    for _ in range(steps):
        action = agent.predict(obs, deterministic=True)[0]
        obs, reward, terminated, truncated, _ = env.step(action)
        frames.append(obs)
        actions.append(action)
        rewards.append(reward)
        if terminated or truncated:
            break
    return {"frames": np.stack(frames), "actions": np.stack(actions), "rewards": np.array(rewards)}


def reward_model_on_real(env, scenario: str, start: Start, real: dict) -> np.ndarray:
    """[L] the env's reward model on the real run's frames and actions."""
    core = env.unwrapped.core
    seq = np.concatenate([start.frames[-1:], real["frames"]])  # [L + 1, ...]
    rows = action_rows(scenario, core.check(real["actions"], len(real["actions"])), core.engine.action_dim)
    return reward_on_frames(core, seq[None], rows[None])[0]


def pose_reader(env, scenario: str) -> tuple[torch.nn.Module, tuple[str, ...]] | None:
    """The env's reward model that computes its reward from predicted poses (``pose_reward``; a potential's
    model is unwrapped) and the simulator's pose keys of its task, or None when it has none."""
    model = env.unwrapped.core.engine.reward_model
    model = getattr(model, "potential", model)
    name = None if model is None else model.config.pose_reward
    return None if name is None else (model, get_task(scenario, name).pose_keys)


@torch.inference_mode()
def read_poses(
    env, scenario: str, reader: torch.nn.Module, frames: np.ndarray, actions: np.ndarray, anchor: np.ndarray
) -> np.ndarray:
    """[L, P] the pose reader's positions (their own units) on frames uint8 [L, H, W, 3], each read with the
    action [L, ...] that produced it, normalised as the env's engine gives it to its reward model, and the
    episode's start frame ``anchor`` uint8 [H, W, 3] (read by an anchored reader only; one-frame readers only)."""
    core = env.unwrapped.core
    if reader.config.num_frames != 1:
        raise ValueError(f"read_poses reads one frame at a time; this reader takes {reader.config.num_frames}")
    rows = action_rows(scenario, core.check(actions, len(actions)), core.engine.action_dim)
    device = core.engine.device
    pixels = uint8_to_pixels(frames).to(device)  # [L, 3, H, W]
    rows = torch.as_tensor(rows, dtype=torch.float32, device=device) / core.engine.action_scale  # [L, d]
    start = uint8_to_pixels(anchor[None]).to(device)[:, None].expand(len(frames), -1, -1, -1, -1)  # [L, 1, 3, H, W]
    return reader(pixels[:, None], rows, poses=True, anchor=start)[2].double().cpu().numpy()


def action_gap(a: np.ndarray, b: np.ndarray) -> float:
    """Mean absolute difference of two action arrays [L, ...] over their common steps."""
    n = min(len(a), len(b))
    return float(np.abs(np.asarray(a[:n], np.float64) - np.asarray(b[:n], np.float64)).mean())


def run_start(env, agent, scenario: str, start: Start, steps: int, task: Task, seed: int) -> dict:
    """Every per-start measurement (see the module docstring)."""
    real = real_run(agent_actor(agent), scenario, start, steps, task)
    opened = open_loop(env, start, real, seed, agent)
    imagined = imagined_run(env, agent, start, steps, seed)
    frame_psnr = np.minimum(psnr(real["frames"], opened["frames"]), PSNR_CAP_DB)
    return {
        "real_return": float(real["rewards"].sum()),
        "reward_model_on_real_return": float(reward_model_on_real(env, scenario, start, real).sum()),
        "open_loop_return": float(opened["rewards"].sum()),
        "imagined_return": float(imagined["rewards"].sum()),
        "psnr": frame_psnr,
        "policy_gap": action_gap(real["actions"], opened["reactions"]),
        "reach_aim": reach_aim(real["poses"], real["actions"]),
        "real_actions": real["actions"],
        "imagined_actions": imagined["actions"],
        "sheet": sheet_rows(real["frames"], opened["frames"], imagined["frames"]),
    }


def sheet_rows(*runs: np.ndarray) -> np.ndarray:
    """uint8 [len(runs) * 64, SHEET_STEPS * 64, 3]: evenly spaced frames of each run, one run per row."""
    length = min(len(r) for r in runs)
    picks = np.linspace(0, length - 1, SHEET_STEPS).round().astype(int)
    return np.concatenate([np.concatenate(list(r[picks]), axis=1) for r in runs], axis=0)


def summarise(kind: str, runs: list[dict], steps: int) -> dict:
    """Means over the starts of one kind."""
    mean = lambda key: float(np.mean([r[key] for r in runs]))  # noqa: E731
    spread = [action_gap(a["real_actions"], b["real_actions"]) for a, b in zip(runs, runs[1:] + runs[:1], strict=True)]
    row = {"kind": kind, "starts": len(runs), "steps": steps}
    for key in ("real_return", "reward_model_on_real_return", "open_loop_return", "imagined_return", "policy_gap"):
        row[key] = mean(key)
    row["action_spread"] = float(np.mean(spread)) if len(runs) > 1 else None
    aims = [r["reach_aim"] for r in runs if r.get("reach_aim") is not None]
    row["reach_aim"] = float(np.mean(aims)) if aims else None
    for s in sorted({s for s in (1, 8, steps) if s <= steps}):
        row[f"psnr_{s}"] = float(np.mean([r["psnr"][s - 1] for r in runs if len(r["psnr"]) >= s]))
    row["real_mean_action"] = np.concatenate([r["real_actions"] for r in runs]).mean(0).round(3).tolist()
    row["imagined_mean_action"] = np.concatenate([r["imagined_actions"] for r in runs]).mean(0).round(3).tolist()
    row["real_returns"] = [r["real_return"] for r in runs]
    row["imagined_returns"] = [r["imagined_return"] for r in runs]
    return row


@dataclass(frozen=True)
class Args:
    """Flags of ``agent_diagnosis`` (each field's help is its ``--help`` text)."""

    agent: str = arg(help="a saved Stable-Baselines3 PPO model (.zip) acting on the env's frames")
    env: str = arg("Astra-Drive-v0", help="an Astra id (its scenario picks the simulator)")
    checkpoint: str | None = arg(None, help="model bundle; none = the variant's")
    task: str | None = arg(None, help="agent task (astra_gym.data.tasks) of the rewards; none = the simulator's own")
    rest_baseline: bool = arg(
        False, help="score the imagined steps minus the do-nothing command's (the env's rest_baseline)"
    )
    starts: int = arg(8, help="real starts per kind")
    kinds: tuple[str, ...] = arg(("reset",), help="start kinds: reset and/or mid")
    steps: int = arg(50, help="steps per run")
    warm: int = arg(40, help="expert-policy steps before a mid start")
    seed_offset: int = arg(10000, help="simulator seeds are offset + s (the agent benchmarks' evaluation seeds)")
    threads: int = arg(1, help="torch threads")
    out: str = arg("results/agent_diagnosis.json", help="JSON results path (the sheet: the same path with .png)")


def start_env(args, sampler: dict | None = None) -> tuple[str, gym.Env, Task, str]:
    """The CLI part shared by the real-start benchmarks: checks ``args.kinds``, sets ``args.threads``, makes
    the Astra env of ``args.env`` / ``checkpoint`` / ``task`` for ``args.steps`` steps (``sampler``: env kwargs
    of :func:`benchmarks.common.sampler_overrides`).

    Returns:
        (scenario, env, task, the checkpoint used).
    """
    if not set(args.kinds) <= {"reset", "mid"}:
        raise SystemExit(f"--kinds {' '.join(args.kinds)}: choose from reset and mid")
    torch.set_num_threads(args.threads)
    spec = variant(args.env)
    kwargs = {"checkpoint": args.checkpoint or spec.checkpoint}
    if args.task is not None:
        kwargs["task"] = args.task
    if args.rest_baseline:
        kwargs["rest_baseline"] = True
    env = gym.make(args.env, max_episode_steps=args.steps + 1, **kwargs, **(sampler or {}))
    return spec.scenario, env, get_task(spec.scenario, args.task), kwargs["checkpoint"]


def real_starts(args, env, kind: str) -> Iterator[tuple[int, Start]]:
    """``(s, start)`` for the ``args.starts`` real starts of ``kind`` (seeds ``args.seed_offset + s``), with a
    progress bar; the simulator is set up like the env's model's training data (e.g. its camera)."""
    scenario, core = variant(args.env).scenario, env.unwrapped.core
    context = core.bank.context_length
    for s in tqdm(range(args.starts), desc=f"{scenario} {kind} starts"):
        yield s, make_start(scenario, args.seed_offset + s, kind, context, args.warm, **core.sim_config)


def main(argv: list[str] | None = None) -> dict:
    """CLI (see the module docstring); returns the written payload's rows."""
    args = parse_config(Args, argv, __doc__)
    scenario, env, task, checkpoint = start_env(args)
    agent = PPO.load(args.agent, device="cpu")
    rows, sheets = [], []
    for kind in args.kinds:
        runs = [
            run_start(env, agent, scenario, start, args.steps, task, seed=s)
            for s, start in real_starts(args, env, kind)
        ]
        rows.append(summarise(kind, runs, args.steps))
        sheets += [r["sheet"] for r in runs[:4]]
    config = {**dataclasses.asdict(args), "checkpoint": checkpoint}
    write_results(args.out, "agent_diagnosis", config, rows, torch.device("cpu"))
    write_sheet(Path(args.out).with_suffix(".png"), np.concatenate(sheets, axis=0))
    print(markdown(rows))
    return {"rows": rows}


def write_sheet(path: Path, image: np.ndarray) -> None:
    """Writes the contact sheet (rows: real, open loop, imagined per start) as a PNG, atomically."""
    import imageio.v3 as iio

    atomic_write(path, lambda tmp: iio.imwrite(tmp, image, extension=".png"))


def markdown(rows: list[dict]) -> str:
    """A markdown table of the result rows."""
    head = ["start", "real return", "RM on real", "open loop", "imagined", "PSNR @1/8/H", "policy gap (spread)"]
    head += ["reach aim"]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for r in rows:
        psnrs = "/".join(f"{r[k]:.1f}" for k in r if k.startswith("psnr_"))
        spread = "n/a" if r["action_spread"] is None else f"{r['action_spread']:.3f}"
        cells = [r["kind"], f"{r['real_return']:+.2f}", f"{r['reward_model_on_real_return']:+.2f}"]
        cells += [f"{r['open_loop_return']:+.2f}", f"{r['imagined_return']:+.2f}", psnrs]
        cells.append(f"{r['policy_gap']:.3f} ({spread})")
        cells.append("n/a" if r.get("reach_aim") is None else f"{r['reach_aim']:+.2f}")
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


if __name__ == "__main__":
    main(sys.argv[1:])
