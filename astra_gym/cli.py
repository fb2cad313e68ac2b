"""The ``astra-gym`` command line: record a rollout to mp4, or drive an env with the keyboard.

Examples::

    astra-gym rollout --env Astra-Drive-v0 --steps 64 --out drive.mp4
    astra-gym rollout --env Astra-Explore-v0 --policy random --side-by-side --out explore.mp4
    astra-gym play --env Astra-Drive-v0 --checkpoint debug

Errors a user can fix (unknown env id, missing weights, unwritable output, no display) end with
a one-line message that says what to do, never a traceback.
"""

from __future__ import annotations

import argparse
import difflib
import math
import os
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import gymnasium as gym
import numpy as np
from tqdm import tqdm

import astra_gym.envs  # noqa: F401 - registers the Astra ids (light: no torch)
from astra_gym.envs.recording import VideoWriter, hud_kind
from astra_gym.envs.render import DisplayUnavailableError, FrameWindow
from astra_gym.envs.spaces import EXPLORE_BUTTONS
from astra_gym.envs.variants import installed_bundles
from astra_gym.envs.wrappers import (
    ActionHud,
    Enlarge,
    FrameView,
    SideBySide,
    SideBySideUnavailable,
    action_labels,
    wrapper_attr,
    zero_action,
)
from astra_gym.utils.cli_args import add_config_arguments, apply_overrides, arg, exit_if_printing

__all__ = ["main", "build_parser", "CliError", "KeyboardControl", "scripted_policy"]

PROG = "astra-gym"
ASTRA_PREFIX = "Astra-"
POLICIES = ("scripted", "random", "zero")
#: Scenario of an env, from its HUD kind when the env does not say (stand-in Gymnasium envs).
_SCENARIO_OF_KIND = {"drive": "drive", "manipulation": "manipulation", "buttons": "explore"}
_DEFAULT_FPS = 20.0
_WEIGHTS_HINT = (
    "with this command, pass --checkpoint debug (tiny random weights: runs anywhere, shows noise) or "
    "--checkpoint /path/to/bundle (a folder written by `python -m astra_gym.training.bundle`)"
)

KEYS_HELP = """\
keys:
  drive         Left/Right or A/D steer, Up or W gas, Down or S brake
  explore       Up or W forward, Down or S back, Left/Right turn, A/D strafe (buttons the env has)
  manipulation  arrows move x/y, W/S move up/down, Space closes the gripper (open when released)
  any           R restarts the episode, Esc or closing the window quits
"""

Action = np.ndarray
Policy = Callable[[int], Action]


class CliError(Exception):
    """A problem the user can fix; printed as ``astra-gym <command>: error: <message>`` (exit status 1)."""


# --------------------------------------------------------------------------------------------- arguments


def _positive_int(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be at least 1, got {value}")
    return value


def _positive_float(text: str) -> float:
    value = float(text)
    if not value > 0:
        raise argparse.ArgumentTypeError(f"must be positive, got {value}")
    return value


@dataclass(frozen=True)
class EnvArgs:
    """Flags of every command: the env, its start and its world model (each field's help is its ``--help``)."""

    env: str = arg("Astra-Drive-v0", help="registered env id", metavar="ID")
    seed: int = arg(0, help="reset seed", metavar="S")
    image: Path | None = arg(
        None,
        help="start from this picture (PNG/JPEG, resized to the model's frame size) instead of a recorded start "
        "context (Astra envs only)",
        metavar="PATH",
    )
    checkpoint: str | None = arg(
        None,
        help=f"world model (Astra envs only): a bundled name ({', '.join(installed_bundles())}), debug (tiny random "
        "weights: runs anywhere, shows noise) or a bundle folder; none = the env's own",
        metavar="NAME_OR_PATH",
    )
    denoise_steps: int | None = arg(
        None, help="sampler steps per chunk (Astra envs only); none = the env's", parse=_positive_int, metavar="K"
    )
    guidance: float | None = arg(
        None, help="action-free guidance scale, 1 = off (Astra envs only); none = the env's", metavar="S"
    )
    device: str = arg("auto", help="torch device: auto, cpu, cuda, cuda:N")
    threads: int = arg(
        1,
        help="torch CPU threads; the 64x64 models gain little from more, and threads that compete with other "
        "processes run 4-20x slower",
        parse=_positive_int,
        metavar="N",
    )


@dataclass(frozen=True)
class RolloutArgs(EnvArgs):
    """Flags of ``astra-gym rollout``."""

    steps: int = arg(64, help="env steps to run", parse=_positive_int, metavar="N")
    policy: Literal["scripted", "random", "zero"] = arg(
        "scripted",
        help="scripted: a smooth per-scenario pattern (drive: sinusoid steering with gas and brake pulses; "
        "manipulation: reach +x, grasp, lift, carry; explore: walk forward with periodic turns); random: uniform "
        "samples of the action space; zero: the all-zero action",
    )
    out: Path = arg(Path("rollout.mp4"), help="mp4 to write", metavar="PATH")
    hud: bool = arg(True, help="draw the action under each frame")
    side_by_side: bool = arg(
        False,
        help="also run the real simulator from the same start under the same actions and show both panels (needs "
        "the sims extra; not available when the start frame came from a user image)",
    )
    fps: float | None = arg(
        None, help="video frame rate; none = the env's render_fps, else 20", parse=_positive_float, metavar="FPS"
    )
    size: int = arg(256, help="video panel height in pixels", parse=_positive_int, metavar="PIXELS")


@dataclass(frozen=True)
class PlayArgs(EnvArgs):
    """Flags of ``astra-gym play``."""

    fps: float | None = arg(
        None, help="maximum frames per second shown; none = the env's", parse=_positive_float, metavar="FPS"
    )
    size: int = arg(384, help="frame height in the window, pixels", parse=_positive_int, metavar="PIXELS")
    max_steps: int | None = arg(
        None, help="stop after this many steps; none = never", parse=_positive_int, metavar="N"
    )
    record: Path | None = arg(None, help="also save what was shown to this mp4", metavar="PATH")


#: command -> (flags, one-line help, description)
COMMANDS: dict[str, tuple[type, str, str]] = {
    "rollout": (
        RolloutArgs,
        "run an env with a policy and save the video as mp4",
        "Run an env for --steps steps with a policy and write the frames (with an action HUD) to mp4.",
    ),
    "play": (
        PlayArgs,
        "drive an env with the keyboard in a window",
        "Drive an env with the keyboard in a window (the world model answers every key).\n\n" + KEYS_HELP,
    ),
}


def build_parser() -> argparse.ArgumentParser:
    """The ``astra-gym`` argument parser: one subcommand per :data:`COMMANDS` entry, flags from its dataclass."""
    parser = argparse.ArgumentParser(
        prog=PROG,
        description="Gymnasium environments backed by the Astra world model: record rollouts, play with the keyboard.",
    )
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for name, (cls, help_text, description) in COMMANDS.items():
        sub = commands.add_parser(
            name, help=help_text, description=description, formatter_class=argparse.RawDescriptionHelpFormatter
        )
        add_config_arguments(sub, cls)
        sub.add_argument("--print-config", action="store_true", help="print the resolved configuration and exit")
    return parser


# --------------------------------------------------------------------------------------------- entry point


def main(argv: Sequence[str] | None = None) -> int:
    """Runs ``astra-gym`` with ``argv`` (default ``sys.argv[1:]``); returns the exit status.

    User errors raise ``SystemExit(1)`` after printing one line to stderr.
    """
    parser = build_parser()
    namespace = parser.parse_args(argv)
    args = exit_if_printing(apply_overrides(COMMANDS[namespace.command][0](), namespace), namespace)
    import torch

    torch.set_num_threads(args.threads)
    command = _cmd_rollout if namespace.command == "rollout" else _cmd_play
    try:
        return command(args)
    except KeyboardInterrupt:
        parser.exit(130, f"{PROG} {namespace.command}: interrupted\n")
    except CliError as err:
        parser.exit(1, f"{PROG} {namespace.command}: error: {err}\n")


# --------------------------------------------------------------------------------------------- env set-up


def _astra_ids() -> list[str]:
    return sorted(env_id for env_id in gym.registry if env_id.startswith(ASTRA_PREFIX))


def _check_env_id(env_id: str) -> None:
    """Raises a :class:`CliError` listing the Astra ids if ``env_id`` is not registered."""
    if env_id in gym.registry:
        return
    astra = _astra_ids()
    close = difflib.get_close_matches(env_id, list(gym.registry), n=1)
    hint = f" Did you mean {close[0]}?" if close else ""
    if not astra:
        raise CliError(f"unknown env id {env_id!r} and no Astra env is registered (astra_gym.envs registers them).")
    raise CliError(f"unknown env id {env_id!r}.{hint} Astra envs: {', '.join(astra)}.")


def _model_kwargs(args: EnvArgs) -> dict[str, Any]:
    """AstraEnv keyword arguments from the world-model flags (those given, and the device), for Astra ids only."""
    given = {
        "--checkpoint": ("checkpoint", args.checkpoint),
        "--denoise-steps": ("num_denoise_steps", args.denoise_steps),
        "--guidance": ("guidance_scale", args.guidance),
    }
    kwargs = {name: value for name, value in given.values() if value is not None}
    if args.image is not None and not args.env.startswith(ASTRA_PREFIX):
        raise CliError(f"--image only applies to Astra envs, not {args.env}; drop it.")
    if not args.env.startswith(ASTRA_PREFIX):
        if kwargs:
            flags = ", ".join(flag for flag, (_, value) in given.items() if value is not None)
            raise CliError(f"{flags} only apply to Astra envs, not {args.env}; drop them.")
        return {}
    from astra_gym.utils.device import resolve_device

    try:
        resolve_device(args.device)
    except ValueError as err:
        raise CliError(f"--device {args.device}: {err}.") from err
    return {**kwargs, "device": args.device}


def _make_env(args: EnvArgs):
    """``gym.make`` of ``args.env`` in rgb_array mode, with user errors turned into :class:`CliError`."""
    from astra_gym.world_model.checkpoints import CheckpointError

    _check_env_id(args.env)
    kwargs = _model_kwargs(args)
    if args.env.startswith(ASTRA_PREFIX):
        print(f"loading {args.env} ...", flush=True)
    try:
        return gym.make(args.env, render_mode="rgb_array", **kwargs)
    except (CheckpointError, FileNotFoundError) as err:
        raise CliError(f"cannot load the world model of {args.env}: {err}\nFix: {_WEIGHTS_HINT}.") from err


def _reset(env: Any, args: EnvArgs, seed: int | None) -> tuple[Any, dict]:
    """``env.reset``, from ``--image`` when given (a bad image is a :class:`CliError`)."""
    if args.image is None:
        return env.reset(seed=seed)
    if not args.image.is_file():
        raise CliError(f"--image {args.image} does not exist; give the path of a PNG or JPEG file.")
    try:
        return env.reset(seed=seed, options={"image": str(args.image)})
    except ValueError as err:
        raise CliError(f"--image {args.image}: {err}") from err


def _scenario(env: Any) -> str | None:
    """drive / manipulation / explore: the Astra env's scenario, else guessed from the action space (stand-ins)."""
    core = wrapper_attr(env, "core")
    scenario = getattr(core, "scenario", None) or wrapper_attr(env, "scenario")
    if isinstance(scenario, str):
        return scenario
    try:
        return _SCENARIO_OF_KIND.get(hud_kind(env.action_space))
    except TypeError:
        return None


def _render_fps(env: Any, requested: float | None) -> float:
    if requested is not None:
        return requested
    fps = (env.metadata or {}).get("render_fps")
    return float(fps) if fps else _DEFAULT_FPS


def _step_frames(obs: Any, info: dict, env: Any) -> list[np.ndarray]:
    """The frames one step produced: ``info["frames"]`` (a whole chunk) if present, else the observation."""
    frames = info.get("frames") if isinstance(info, dict) else None
    if frames is None:
        frames = [obs] if _is_frame(obs) else [env.render()]
    return [np.asarray(frame) for frame in frames]


def _is_frame(obs: Any) -> bool:
    return isinstance(obs, np.ndarray) and obs.dtype == np.uint8 and obs.ndim == 3 and obs.shape[-1] == 3


# --------------------------------------------------------------------------------------------- output


def _prepare_output(path: Path, flag: str = "--out") -> Path:
    """Checks that ``path`` can receive the video (creating missing folders); returns it."""
    if path.is_dir():
        raise CliError(f"{flag} {path} is a folder; give a file name such as {path / 'rollout.mp4'}.")
    if path.suffix.lower() != ".mp4":
        raise CliError(f"{flag} {path} must end in .mp4 (the video is H.264 mp4).")
    folder = path.parent
    try:
        folder.mkdir(parents=True, exist_ok=True)
    except OSError as err:
        raise CliError(f"cannot create the folder {folder} for {flag} ({err.strerror}); choose another path.") from err
    if not os.access(folder, os.W_OK | os.X_OK):
        raise CliError(f"{flag} {path}: the folder {folder} is not writable; choose another path.")
    return path


def _open_video(path: Path, fps: float, flag: str = "--out"):
    try:
        return VideoWriter(path, fps).open()
    except OSError as err:
        raise CliError(f"{flag} {path}: {err}; choose another path.") from err


# --------------------------------------------------------------------------------------------- policies


def scripted_policy(scenario: str | None, action_space: Any, labels: Sequence[str] | None = None) -> Policy:
    """A smooth, deterministic action pattern for ``scenario``, as a function of the step index.

    * drive: sinusoid steering (period 48 steps) with gas 0.5, and a brake pulse every 64 steps.
    * manipulation: reach +x with the gripper open, close it, lift, carry along +y, lower and open (64-step cycle).
    * explore: walk forward, turning for 6 of every 32 steps, alternately left and right.

    Raises:
        CliError: No scripted pattern for this scenario / action space.
    """
    if scenario == "drive":
        return lambda t: _cast(_drive_pattern(t), action_space)
    if scenario == "manipulation":
        return lambda t: _cast(_manipulation_pattern(t), action_space)
    if scenario == "explore":
        names = _button_names(action_space, labels)
        return lambda t: _cast(_explore_pattern(t, names), action_space)
    raise CliError(f"no scripted policy for {scenario or 'this env'}; use --policy random or --policy zero.")


def _drive_pattern(t: int) -> list[float]:
    braking = t % 64 >= 56
    return [0.6 * math.sin(2 * math.pi * t / 48), 0.0 if braking else 0.5, 0.8 if braking else 0.0]


_MANIPULATION_PHASES = (  # (until step, [dx, dy, dz, gripper]); gripper +1 open, -1 closed
    (20, [0.8, 0.0, 0.0, 1.0]),
    (28, [0.0, 0.0, 0.0, -1.0]),
    (40, [0.0, 0.0, 0.6, -1.0]),
    (52, [0.0, 0.6, 0.0, -1.0]),
    (64, [0.0, 0.0, -0.6, 1.0]),
)


def _manipulation_pattern(t: int) -> list[float]:
    phase = t % 64
    return next(action for until, action in _MANIPULATION_PHASES if phase < until)


def _explore_pattern(t: int, names: Sequence[str]) -> list[int]:
    pressed = {"MOVE_FORWARD"}
    if t % 32 >= 26:
        pressed.add("TURN_LEFT" if (t // 32) % 2 == 0 else "TURN_RIGHT")
    return [int(name in pressed) for name in names]


def _button_names(action_space: Any, labels: Sequence[str] | None) -> list[str]:
    size = int(np.prod(action_space.shape))
    names = list(labels) if labels is not None else list(EXPLORE_BUTTONS) if size == len(EXPLORE_BUTTONS) else []
    needed = {"MOVE_FORWARD", "TURN_LEFT", "TURN_RIGHT"}
    if len(names) != size or not needed <= set(names):
        raise CliError(f"the scripted explore policy needs buttons {sorted(needed)}; use --policy random.")
    return names


def _cast(action: Sequence[float], action_space: Any) -> Action:
    array = np.asarray(action, dtype=action_space.dtype).reshape(action_space.shape)
    if hasattr(action_space, "low"):
        array = np.clip(array, action_space.low, action_space.high).astype(action_space.dtype)
    return array


def _make_policy(name: str, env: Any, seed: int) -> Policy:
    space = env.action_space
    if name == "random":
        space.seed(seed)
        return lambda t: space.sample()
    if name == "zero":
        zero = zero_action(space)
        return lambda t: zero
    return scripted_policy(_scenario(env), space, action_labels(env))


# --------------------------------------------------------------------------------------------- frames


class _Timed(gym.Wrapper):
    """Measures the wall time spent inside the wrapped env's ``step`` and the frames it produced."""

    def __init__(self, env: gym.Env) -> None:
        super().__init__(env)
        self.seconds, self.steps, self.frames = 0.0, 0, 0

    def step(self, action: Any) -> tuple[Any, float, bool, bool, dict]:
        start = time.perf_counter()
        obs, reward, terminated, truncated, info = self.env.step(action)
        self.seconds += time.perf_counter() - start
        self.steps += 1
        self.frames += len(_step_frames(obs, info, self.env))
        return obs, reward, terminated, truncated, info

    def rate(self) -> str:
        if self.seconds <= 0:
            return "n/a"
        return f"{self.frames / self.seconds:.2f} frames/s ({self.steps / self.seconds:.2f} steps/s)"


def _views(env: gym.Env, *, hud: bool, size: int, side: bool) -> FrameView:
    """The env wrapped so that each frame is shown as the video shows it (panels, then the HUD)."""
    if side:
        env = SideBySide(env, size=size)
    if hud:
        return ActionHud(env, size=size)
    return env if side else Enlarge(env, size)


def _reset_views(env: FrameView, args: EnvArgs, seed: int | None) -> tuple[Any, dict]:
    try:
        return _reset(env, args, seed)
    except SideBySideUnavailable as err:
        raise CliError(f"--side-by-side is unavailable: {err}") from err


# --------------------------------------------------------------------------------------------- rollout


def _cmd_rollout(args: RolloutArgs) -> int:
    if args.side_by_side and args.image is not None:
        raise CliError("--side-by-side is unavailable with --image: a user image has no simulator state to replay.")
    out = _prepare_output(args.out)
    timed = _Timed(_make_env(args))
    env = _views(timed, hud=args.hud, size=args.size, side=args.side_by_side)
    try:
        obs, info = _reset_views(env, args, args.seed)
        fps = _render_fps(env, args.fps)
        with _open_video(out, fps) as video:
            end = _run_rollout(env, obs, info, args, video)
    finally:
        env.close()
    _report_rollout(args, out, video, timed, end, fps)
    return 0


def _run_rollout(env: FrameView, obs, info, args, video) -> str | None:
    """Steps the env ``args.steps`` times, writing every frame; returns why it stopped early (None: it did not)."""
    policy = _make_policy(args.policy, env, args.seed)
    for view in env.views(_step_frames(obs, info, env)):  # the start context: real frames on both sides
        video.write(view)
    with tqdm(total=args.steps, desc=args.env, unit="step", disable=None, leave=False) as bar:
        for t in range(args.steps):
            obs, _, terminated, truncated, info = env.step(policy(t))
            for view in env.views(_step_frames(obs, info, env)):
                video.write(view)
            bar.update(1)
            if terminated or truncated:
                return f"the episode {'terminated' if terminated else 'was truncated'} after {t + 1} steps"
    return None


def _report_rollout(args, out: Path, video, timed: _Timed, end: str | None, fps: float) -> None:
    height, width = video.size
    seconds = video.frames_written / fps
    if end:
        print(f"{end}; the video stops there.")
    print(f"wrote {out} ({video.frames_written} frames, {width}x{height}, {seconds:.1f} s at {fps:g} fps)")
    print(f"{args.env}: {timed.steps} steps, {timed.frames} frames in {timed.seconds:.2f} s -> {timed.rate()}")


# --------------------------------------------------------------------------------------------- play


@dataclass
class KeyboardControl:
    """Turns pygame key events into env actions (keys held = action), see ``KEYS_HELP``.

    Args:
        scenario: drive, manipulation or explore.
        action_space: The env's action space (actions are cast and clipped to it).
        labels: Button names for explore (default: the ViZDoom defaults).

    Attributes:
        held: Names of the keys held down (pygame key names such as "up", "a", "space").
        quit: Esc was pressed or the window was closed.
        restart: R was pressed since the last :meth:`take_restart`.
    """

    scenario: str
    action_space: Any
    labels: Sequence[str] | None = None
    held: set[str] = field(default_factory=set)
    quit: bool = False
    restart: bool = False

    def __post_init__(self) -> None:
        if self.scenario not in ("drive", "manipulation", "explore"):
            raise CliError(f"no keyboard mapping for {self.scenario or 'this env'}'s actions; use `rollout` instead.")
        if self.scenario == "explore":
            self.labels = list(self.labels or EXPLORE_BUTTONS)

    def handle(self, events: Sequence[Any]) -> None:
        """Updates the held keys and the quit / restart flags from pygame events."""
        import pygame

        for event in events:
            if event.type == pygame.QUIT:
                self.quit = True
            elif event.type == pygame.KEYDOWN:
                name = pygame.key.name(event.key)
                self.quit |= name == "escape"
                self.restart |= name == "r"
                self.held.add(name)
            elif event.type == pygame.KEYUP:
                self.held.discard(pygame.key.name(event.key))

    def take_restart(self) -> bool:
        """Whether R was pressed (and clears it)."""
        restart, self.restart = self.restart, False
        return restart

    def action(self) -> Action:
        """The action the held keys ask for."""
        down = self._down
        if self.scenario == "drive":
            steer = down("right", "d") - down("left", "a")
            return _cast([steer, down("up", "w"), 0.8 * down("down", "s")], self.action_space)
        if self.scenario == "manipulation":
            dx, dy, dz = down("right") - down("left"), down("up") - down("down"), down("w") - down("s")
            return _cast([dx, dy, dz, -1.0 if down("space") else 1.0], self.action_space)
        pressed = {
            "MOVE_FORWARD": down("up", "w"),
            "MOVE_BACKWARD": down("down", "s"),
            "TURN_LEFT": down("left"),
            "TURN_RIGHT": down("right"),
            "MOVE_LEFT": down("a"),
            "MOVE_RIGHT": down("d"),
        }
        return _cast([pressed.get(name, 0) for name in self.labels], self.action_space)

    def _down(self, *names: str) -> float:
        return float(any(name in self.held for name in names))


def _cmd_play(args: PlayArgs) -> int:
    record = _prepare_output(args.record, "--record") if args.record else None
    env = _views(_make_env(args), hud=True, size=args.size, side=False)
    video = None
    try:
        control = KeyboardControl(_scenario(env), env.action_space, action_labels(env))
        fps = _render_fps(env, args.fps)
        video = _open_video(record, fps, "--record") if record else None
        print(KEYS_HELP, end="")
        with FrameWindow(f"{PROG} play: {args.env}", scale=1, fps=fps) as window:
            steps = _play_loop(env, args, control, window, video)
        if video is not None:
            video.close()
            print(f"wrote {record} ({video.frames_written} frames)")
    except DisplayUnavailableError as err:
        raise CliError(str(err)) from err
    finally:
        env.close()
        if video is not None:
            video.abort()  # no-op after a successful close
    print(f"played {steps} step{'' if steps == 1 else 's'}")
    return 0


def _play_loop(env: FrameView, args, control: KeyboardControl, window, video) -> int:
    """Shows frames and steps the env with the keyboard's action until Esc, window close or --max-steps."""
    obs, info = _reset(env, args, args.seed)
    views, steps, done = env.views(_step_frames(obs, info, env)), 0, False
    while True:
        for view in views:
            window.show(view)
            if video is not None:
                video.write(view)
        views = views[-1:]  # while waiting (episode over), keep showing the last frame
        control.handle(window.events())
        if control.quit or window.closed_by_user or (args.max_steps and steps >= args.max_steps):
            return steps
        if control.take_restart():
            obs, info = _reset(env, args, None)
            views, done = env.views(_step_frames(obs, info, env)), False
        elif not done:
            obs, _, terminated, truncated, info = env.step(control.action())
            views, steps, done = env.views(_step_frames(obs, info, env)), steps + 1, terminated or truncated
            if done:
                print(f"the episode ended after {steps} steps; press R to restart or Esc to quit")


if __name__ == "__main__":
    sys.exit(main())
