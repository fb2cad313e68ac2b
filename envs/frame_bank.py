"""Start contexts of the envs: real simulator frames shipped with the package, or synthetic ones.

A world-model episode starts from a few real frames (the context the model continues). The
bundled banks ``astra_gym/assets/frame_banks/<scenario>.npz`` hold a few dozen contexts recorded
from the simulators, each with the simulator seed and the action prefix that produced it, so the
real simulator can be put in exactly the same state (for side-by-side comparisons)::

    from astra_gym.data.replay import replay
    bank = load_frame_bank("drive")
    with replay(int(bank.seeds[i]), bank.prefix(i), scenario=bank.scenario, **bank.sim_config) as sim:
        assert (sim.frame() == bank.frames[i, -1]).all()

File format (``np.savez_compressed``; ``N`` contexts of ``T`` frames, prefixes padded to ``P``):

=================  ========================  ==========================================================
key                shape, dtype              meaning
=================  ========================  ==========================================================
``frames``         [N, T, H, W, 3] uint8     context frames, oldest first; ``frames[i, -1]`` is the
                                             state after ``actions[i, :prefix_lengths[i]]``
``seeds``          [N] int64                 simulator reset seed of each context
``actions``        [N, P, ...] native dtype  action prefix from the reset (after the simulator's
                                             warm-up) to the last context frame, zero-padded
``prefix_lengths`` [N] int64                 valid length of each prefix (>= T - 1)
``meta``           0-d str (JSON)            ``format``, ``version``, ``scenario``, ``sim_config``,
                                             ``button_names``, ``policy``, how it was built
=================  ========================  ==========================================================

Build the bundled banks (needs the ``sims`` extra)::

    python -m astra_gym.envs.frame_bank --scenario drive --out astra_gym/assets/frame_banks/drive.npz

A model trained on data recorded with other simulator settings (``bundle --sim-config camera=front``)
needs a bank recorded with them: ``--checkpoint <bundle>`` sets the recording up like its data (the
env refuses a bank whose settings differ from its model's).

The debug variant uses :func:`synthetic_frame_bank` (procedural frames, no file, no actions).
"""

from __future__ import annotations

import json
import logging
import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from astra_gym.utils.cli_args import arg, parse_config

if TYPE_CHECKING:
    from astra_gym.data.episodes import Episode

__all__ = [
    "FrameBank",
    "BANK_FORMAT",
    "BUNDLED_BANKS",
    "bundled_bank_path",
    "load_frame_bank",
    "save_frame_bank",
    "synthetic_frame_bank",
    "build_frame_bank",
    "frame_bank_from_episodes",
    "main",
]

logger = logging.getLogger(__name__)

BANK_FORMAT = "astra-gym-frame-bank"
BANK_VERSION = 1
BUNDLED_BANKS = ("drive", "manipulation", "explore")


def bundled_bank_path(name: str) -> Path:
    """Path of the bundled bank ``name`` inside the installed package."""
    import astra_gym

    return Path(astra_gym.__file__).resolve().parent / "assets" / "frame_banks" / f"{name}.npz"


@dataclass(frozen=True, eq=False)
class FrameBank:
    """Start contexts (see the module docstring for the fields).

    Attributes:
        frames: [N, T, H, W, 3] uint8.
        seeds: [N] int64 simulator seeds (-1 for synthetic contexts).
        actions: [N, P, ...] native action prefixes (P = 0 for synthetic banks).
        prefix_lengths: [N] int64.
        meta: ``scenario``, ``sim_config``, ``button_names``, ...
    """

    frames: np.ndarray
    seeds: np.ndarray
    actions: np.ndarray
    prefix_lengths: np.ndarray
    meta: dict = field(default_factory=dict)

    def __post_init__(self) -> None:
        frames = self.frames
        if frames.dtype != np.uint8 or frames.ndim != 5 or frames.shape[-1] != 3 or len(frames) == 0:
            raise ValueError(f"frame bank frames must be uint8 [N>0, T, H, W, 3], got {frames.dtype} {frames.shape}")
        count = len(frames)
        for name in ("seeds", "actions", "prefix_lengths"):
            if len(getattr(self, name)) != count:
                raise ValueError(f"frame bank {name} has {len(getattr(self, name))} entries for {count} contexts")

    def __len__(self) -> int:
        return len(self.frames)

    @property
    def scenario(self) -> str:
        """Scenario the contexts come from ("synthetic" for procedural banks)."""
        return str(self.meta.get("scenario", "synthetic"))

    @property
    def sim_config(self) -> dict:
        """Simulator config overrides that rebuild the recording simulator (``make_simulator``)."""
        return dict(self.meta.get("sim_config", {}))

    @property
    def context_length(self) -> int:
        """Frames T per context."""
        return self.frames.shape[1]

    def prefix(self, index: int) -> np.ndarray:
        """The action prefix of context ``index`` (native dtype)."""
        return self.actions[index, : int(self.prefix_lengths[index])]

    def context_actions(self, index: int) -> np.ndarray | None:
        """The T - 1 actions that produced frames 1..T-1 of context ``index`` (None if unknown)."""
        steps = self.context_length - 1
        if int(self.prefix_lengths[index]) < steps:
            return None
        return self.prefix(index)[len(self.prefix(index)) - steps :]


def load_frame_bank(name_or_path: str | os.PathLike) -> FrameBank:
    """A bundled bank by name ("drive", "manipulation", "explore"), "synthetic", or a path to an npz.

    Raises:
        FileNotFoundError: The bank does not exist (names the path and how to build it).
        ValueError: The file is not a frame bank.
    """
    if name_or_path == "synthetic":
        return synthetic_frame_bank()
    path = bundled_bank_path(str(name_or_path)) if name_or_path in BUNDLED_BANKS else Path(name_or_path)
    if not path.is_file():
        raise FileNotFoundError(
            f"frame bank {path} not found; build it with `python -m astra_gym.envs.frame_bank --scenario "
            f"<drive|manipulation|explore> --out {path}` (needs the sims extra), or use frame_bank='synthetic'"
        )
    try:
        with np.load(path, allow_pickle=False) as data:
            meta = json.loads(str(data["meta"]))
            bank = FrameBank(data["frames"], data["seeds"], data["actions"], data["prefix_lengths"], meta)
    except (KeyError, ValueError, OSError) as err:
        raise ValueError(f"{path} is not a readable frame bank ({err}); rebuild it") from err
    if meta.get("format") != BANK_FORMAT or meta.get("version", 0) > BANK_VERSION:
        raise ValueError(f"{path} is not a version <= {BANK_VERSION} {BANK_FORMAT} file; rebuild it")
    return bank


def save_frame_bank(bank: FrameBank, path: str | os.PathLike) -> Path:
    """Writes ``bank`` as a compressed npz (see the module docstring)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    meta = {"format": BANK_FORMAT, "version": BANK_VERSION, **bank.meta}
    with open(path, "wb") as f:
        np.savez_compressed(
            f,
            frames=bank.frames,
            seeds=bank.seeds.astype(np.int64),
            actions=bank.actions,
            prefix_lengths=bank.prefix_lengths.astype(np.int64),
            meta=np.array(json.dumps(meta)),
        )
    return path


def synthetic_frame_bank(count: int = 16, context_frames: int = 2, size: int = 64, seed: int = 0) -> FrameBank:
    """Procedural contexts for the debug variant: a coloured square drifting over a two-tone gradient.

    Deterministic in ``seed``; no simulator and no action prefixes.
    """
    rng = np.random.default_rng(seed)
    ramp = np.linspace(0.0, 1.0, size)[None, :, None]  # [1, W, 1]
    frames = np.empty((count, context_frames, size, size, 3), np.uint8)
    for i in range(count):
        low, high = rng.uniform(0, 255, 3), rng.uniform(0, 255, 3)
        background = low + (high - low) * ramp  # [1, W, 3]
        colour = rng.uniform(0, 255, 3)
        corner, velocity = rng.integers(0, size - 16, 2), rng.integers(-3, 4, 2)
        for t in range(context_frames):
            image = np.repeat(background, size, axis=0)
            top, left = np.clip(corner + t * velocity, 0, size - 16)
            image[top : top + 16, left : left + 16] = colour
            frames[i, t] = image.round().astype(np.uint8)
    empty = np.zeros((count, 0), np.float32)
    meta = {"scenario": "synthetic", "seed": seed}
    return FrameBank(frames, np.full(count, -1, np.int64), empty, np.zeros(count, np.int64), meta)


def build_frame_bank(
    scenario: str,
    count: int = 32,
    context_frames: int = 4,
    start_steps: tuple[int, int] = (8, 60),
    policy: str = "expert",
    seed: int = 0,
    at_rest: int = 0,
    rest_seed: int = 100,
    sim_config: Mapping[str, object] | None = None,
) -> FrameBank:
    """Records ``at_rest + count`` start contexts from the scenario's simulator (needs the ``sims`` extra).

    The first ``at_rest`` contexts are the state right after a reset (seed ``rest_seed + j``) held
    with the zero action for ``context_frames - 1`` steps: where every real episode starts (in
    CarRacing, at rest). Then context i: reset with seed ``seed + i``, run the behaviour policy
    (policy seed ``seed + i``) for ``s_i ~ U{start_steps}`` steps and keep the last
    ``context_frames`` frames and all ``s_i`` actions. Episodes that end before ``s_i`` keep their
    last frames. ``sim_config`` overrides the simulator's config, e.g. a world model's
    (:func:`~astra_gym.envs.core.model_sim_config`).
    """
    from astra_gym.data.policies import make_policy
    from astra_gym.data.recorder import Recorder
    from astra_gym.data.replay import replay
    from astra_gym.data.sims import make_simulator

    sim = make_simulator(scenario, **(sim_config or {}))
    buttons = sim.attrs().get("button_names", ())
    rng = np.random.default_rng(seed)
    episodes = []
    for j in range(at_rest):
        with replay(rest_seed + j, None, sim=sim) as session:
            zero = np.zeros((context_frames - 1, *session.env.action_space.shape), session.action_dtype)
            episodes.append(session.continue_with(zero))
    with Recorder(sim, make_policy(policy, scenario, buttons)) as recorder:
        for i in range(count):
            steps = int(rng.integers(max(start_steps[0], context_frames - 1), start_steps[1] + 1))
            episodes.append(recorder.record(seed=seed + i, steps=steps, policy_seed=seed + i))
    width = max(ep.num_steps for ep in episodes)
    actions = np.zeros((len(episodes), width, *episodes[0].actions.shape[1:]), episodes[0].actions.dtype)
    for i, ep in enumerate(episodes):
        actions[i, : ep.num_steps] = ep.actions
    meta = {
        "scenario": scenario,
        "sim_config": sim.config_dict(),
        "button_names": list(buttons),
        "policy": policy,
        "seed": seed,
        "start_steps": list(start_steps),
        "at_rest": at_rest,
        "rest_seed": rest_seed,
    }
    return FrameBank(
        frames=np.stack([ep.frames[-context_frames:] for ep in episodes]),
        seeds=np.array([ep.seed for ep in episodes], np.int64),
        actions=actions,
        prefix_lengths=np.array([ep.num_steps for ep in episodes], np.int64),
        meta=meta,
    )


def frame_bank_from_episodes(
    episodes: Sequence[Episode],
    count: int,
    context_frames: int = 4,
    start_steps: tuple[int, int] = (3, 49),
    seed: int = 0,
) -> FrameBank:
    """Start contexts drawn from recorded episodes (DIAMOND's burn-in from the replay buffer).

    Imagined episodes then start where the recorded behaviour went, e.g. where an agent's own real
    episodes went, instead of a few expert states. Context i ends at frame ``s`` of an episode, ``s``
    drawn uniformly (without replacement) over every episode's frames with ``s`` in ``start_steps``
    (clipped to ``[context_frames - 1, T]``); its prefix is the episode's first ``s`` actions, so
    :func:`~astra_gym.data.replay.replay` rebuilds it from the episode's seed.

    Args:
        episodes: Recorded episodes of one scenario (:class:`~astra_gym.data.episodes.Episode`).
        count: Contexts to draw (at most the number of valid end frames).
        context_frames: Frames T per context.
        start_steps: Inclusive range of the context's last frame index.
        seed: Seed of the draw.

    Raises:
        ValueError: No episodes, mixed scenarios, or fewer valid end frames than ``count``.
    """
    if not episodes:
        raise ValueError("frame_bank_from_episodes needs at least one episode")
    scenarios = {ep.scenario for ep in episodes}
    if len(scenarios) != 1:
        raise ValueError(f"episodes of one scenario only, got {sorted(scenarios)}")
    low = max(start_steps[0], context_frames - 1)
    ends = [(i, s) for i, ep in enumerate(episodes) for s in range(low, min(start_steps[1], ep.num_steps) + 1)]
    if count > len(ends):
        raise ValueError(f"count={count} contexts asked; the episodes have {len(ends)} end frames in {start_steps}")
    picks = np.random.default_rng(seed).choice(len(ends), size=count, replace=False)
    chosen = sorted(ends[k] for k in picks)
    width = max(s for _, s in chosen)
    first = episodes[0]
    actions = np.zeros((count, width, *first.actions.shape[1:]), first.actions.dtype)
    for row, (i, s) in enumerate(chosen):
        actions[row, :s] = episodes[i].actions[:s]
    meta = {
        "scenario": first.scenario,
        "sim_config": dict(first.attrs.get("sim_config", {})),
        "button_names": list(first.attrs.get("button_names", [])),
        "policy": "recorded episodes",
        "seed": seed,
        "start_steps": [low, int(start_steps[1])],
        "episode_seeds": sorted({int(ep.seed) for ep in episodes}),
    }
    return FrameBank(
        frames=np.stack([episodes[i].frames[s - context_frames + 1 : s + 1] for i, s in chosen]),
        seeds=np.array([episodes[i].seed for i, _ in chosen], np.int64),
        actions=actions,
        prefix_lengths=np.array([s for _, s in chosen], np.int64),
        meta=meta,
    )


@dataclass(frozen=True)
class Args:
    """Flags of ``python -m astra_gym.envs.frame_bank`` (each field's help is its ``--help`` text)."""

    scenario: str = arg(help=f"simulator to record, one of {list(BUNDLED_BANKS)}")
    out: str = arg(help="output .npz path")
    count: int = arg(32, help="number of start contexts")
    context_frames: int = arg(4, help="frames per context")
    min_start: int = arg(8, help="fewest policy steps before a context ends")
    max_start: int = arg(60, help="most policy steps before a context ends")
    policy: str = arg("expert", help="behaviour policy: random, expert or mix")
    seed: int = arg(0, help="first simulator seed (context i uses seed + i)")
    at_rest: int = arg(0, help="extra contexts right after a reset, zero action")
    rest_seed: int = arg(100, help="first seed of the at-rest contexts")
    checkpoint: str | None = arg(
        None, help="record with this world model's simulator settings (e.g. its FetchPush camera); none = defaults"
    )
    episodes: tuple[str, ...] = arg(
        (), "draw the contexts from these recorded episode folders instead of recording (repeat the flag); "
        "--count, --min-start, --max-start and --seed apply", parse=str, append=True,
    )  # fmt: skip


def main(argv: list[str] | None = None) -> None:
    """CLI: ``python -m astra_gym.envs.frame_bank --scenario drive --out path.npz``."""
    args = parse_config(Args, argv, __doc__)
    if args.scenario not in BUNDLED_BANKS:
        raise SystemExit(f"--scenario {args.scenario!r}: choose one of {list(BUNDLED_BANKS)}")
    if args.episodes:
        from astra_gym.data.episodes import iter_episodes

        if args.checkpoint:
            raise SystemExit("--checkpoint sets up a new recording; recorded --episodes keep their own settings")
        if args.at_rest:
            raise SystemExit("--at-rest records new episodes; it does not combine with --episodes")
        episodes = [ep for folder in args.episodes for ep in iter_episodes(folder)]
        if any(ep.scenario != args.scenario for ep in episodes):
            raise SystemExit(f"--episodes: every episode must be of --scenario {args.scenario!r}")
        bank = frame_bank_from_episodes(
            episodes, args.count, args.context_frames, (args.min_start, args.max_start), args.seed
        )
    else:
        from astra_gym.envs.core import model_sim_config  # envs.core imports this module

        sim_config = model_sim_config(args.checkpoint, args.scenario) if args.checkpoint else {}
        bank = build_frame_bank(
            args.scenario, args.count, args.context_frames, (args.min_start, args.max_start), args.policy,
            args.seed, args.at_rest, args.rest_seed, sim_config,
        )  # fmt: skip
    path = save_frame_bank(bank, Path(args.out))
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    logger.info(
        "wrote %d contexts of %d frames to %s (%.0f kB)",
        len(bank),
        bank.context_length,
        path,
        path.stat().st_size / 1024,
    )


if __name__ == "__main__":
    main()
