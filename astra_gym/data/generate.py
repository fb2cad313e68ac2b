"""Generate a dataset of simulator episodes for one scenario.

Usage::

    python -m astra_gym.data.generate --scenario drive|manipulation|explore \\
        --episodes N --steps T --out DIR [--policy mix] [--seed S] [--size 64] [--workers W]

Episode ``i`` is recorded from simulator seed and policy seed derived from ``(S, i)`` only, so a
dataset does not depend on the number of workers, and re-running the command resumes: episodes
whose file already exists are skipped (``--overwrite`` re-records them). Files are written
atomically (see :mod:`astra_gym.data.episodes`), so an interrupted run leaves complete episodes
only. A summary (config, frames, bytes, frames/s) is written to ``DIR/generation.json``.
"""

from __future__ import annotations

import dataclasses
import json
import multiprocessing as mp
import time
from collections.abc import Iterator, Sequence
from multiprocessing.util import Finalize
from pathlib import Path

import h5py
import numpy as np
from tqdm import tqdm

from astra_gym.data.episodes import episode_filename, episode_paths, save_episode
from astra_gym.data.policies import POLICY_NAMES, check_shares, make_policy
from astra_gym.data.recorder import Recorder
from astra_gym.data.sims import SCENARIOS, make_simulator
from astra_gym.utils.atomic import atomic_write_text
from astra_gym.utils.cli_args import arg, parse_config

__all__ = ["GenerateConfig", "episode_seeds", "generate", "main"]

_SEED_LIMIT = 2**31  # valid for Box2D/NumPy/MuJoCo and ViZDoom's unsigned 32-bit seeds


@dataclasses.dataclass(frozen=True)
class GenerateConfig:
    """What to generate.

    Attributes:
        scenario: "drive" | "manipulation" | "explore".
        episodes: Number of episodes N (indices 0..N-1).
        steps: Actions per episode T (fewer if the simulator ends the episode).
        out: Output directory.
        policy: "random" | "expert" | "mix" | "probe".
        seed: Dataset seed S; episode i uses seeds derived from (S, i).
        size: Frame side in pixels; 0 or None keeps the simulator's native size.
        workers: Parallel recording processes.
        frame_skip: Override of the scenario's frame skip (None: its default).
        epsilon: Share of random segments in the "mix" and "probe" policies.
        rest: Share of do-nothing segments in the "mix" and "probe" policies (:class:`~astra_gym.data.policies.Rest`).
        camera: Manipulation camera preset (``CAMERAS`` of :mod:`astra_gym.data.sims.manipulation`; None: stock).
        overwrite: Re-record episodes whose file exists (default: skip them, i.e. resume).
    """

    scenario: str = arg(help=f"one of {sorted(SCENARIOS)}")
    episodes: int = arg(help="number of episodes N")
    steps: int = arg(help="actions per episode T")
    out: str = arg(help="output directory")
    policy: str = arg("mix", help=f"one of {POLICY_NAMES}")
    seed: int = arg(0, help="dataset seed")
    size: int | None = arg(64, help="frame side in pixels; 0 or none = native size")
    workers: int = arg(1, help="parallel recording processes")
    frame_skip: int | None = arg(None, help="override the scenario's frame skip")
    epsilon: float = arg(0.25, help="share of random segments in --policy mix and probe")
    rest: float = arg(0.0, help="share of do-nothing segments in --policy mix and probe (Fetch stays put)")
    camera: str | None = arg(None, help="manipulation camera preset: stock or front; none = stock")
    overwrite: bool = arg(False, help="re-record existing episodes instead of resuming")

    def __post_init__(self) -> None:
        if self.scenario not in SCENARIOS:
            raise ValueError(f"unknown scenario {self.scenario!r}; choose one of {sorted(SCENARIOS)}")
        if self.policy not in POLICY_NAMES:
            raise ValueError(f"unknown policy {self.policy!r}; choose one of {POLICY_NAMES}")
        check_shares(self.policy, self.epsilon, self.rest)
        if self.episodes < 1 or self.steps < 1 or self.workers < 1:
            counts = f"episodes={self.episodes}, steps={self.steps}, workers={self.workers}"
            raise ValueError(f"episodes, steps and workers must be >= 1, got {counts}")
        if self.camera is not None and self.scenario != "manipulation":
            raise ValueError(f"--camera {self.camera} is a manipulation camera; {self.scenario} has none")


def episode_seeds(seed: int, index: int) -> tuple[int, int]:
    """(simulator seed, policy seed) of episode ``index`` of a dataset with seed ``seed``."""
    sim_state, policy_state = np.random.SeedSequence([seed, index]).generate_state(2, dtype=np.uint32)
    return int(sim_state) % _SEED_LIMIT, int(policy_state)


def generate(cfg: GenerateConfig, progress: bool = False) -> dict:
    """Records the missing episodes of ``cfg`` into ``cfg.out``; returns the summary.

    Args:
        cfg: What to generate.
        progress: Show a tqdm progress bar (the CLI does).
    """
    out = Path(cfg.out)
    out.mkdir(parents=True, exist_ok=True)
    todo = [i for i in range(cfg.episodes) if cfg.overwrite or not (out / episode_filename(i)).exists()]
    start = time.perf_counter()
    frames = steps = 0
    with tqdm(total=len(todo), unit="ep", disable=not progress, desc=cfg.scenario) as bar:
        for steps_i in _record_all(cfg, todo):
            steps += steps_i
            frames += steps_i + 1
            bar.update(1)
            bar.set_postfix(fps=f"{frames / (time.perf_counter() - start):.0f}")
    seconds = time.perf_counter() - start
    summary = _summary(cfg, len(todo), frames, steps, seconds)
    _write_json(out / "generation.json", summary)
    return summary


def _record_all(cfg: GenerateConfig, indices: Sequence[int]) -> Iterator[int]:
    """Records ``indices`` (in this process or a spawn pool); yields each episode's step count."""
    if cfg.workers == 1 or len(indices) <= 1:
        worker = _Worker(cfg)
        try:
            yield from (worker.record(i) for i in indices)
        finally:
            worker.close()
        return
    # spawn: MuJoCo/EGL and ViZDoom state must not be inherited through fork
    with mp.get_context("spawn").Pool(min(cfg.workers, len(indices)), _init_worker, (cfg,)) as pool:
        yield from pool.imap_unordered(_record_in_worker, indices)
        pool.close()  # workers exit on their own and close their simulators (ViZDoom runs as a child process);
        pool.join()  # leaving the block early (an error) still terminates them


class _Worker:
    """One simulator + policy + recorder, reused across episodes."""

    def __init__(self, cfg: GenerateConfig) -> None:
        overrides: dict = {"size": cfg.size or None}
        if cfg.frame_skip is not None:
            overrides["frame_skip"] = cfg.frame_skip
        if cfg.camera is not None:
            overrides["camera"] = cfg.camera
        sim = make_simulator(cfg.scenario, **overrides)
        policy = make_policy(cfg.policy, cfg.scenario, getattr(sim.config, "buttons", ()), cfg.epsilon, cfg.rest)
        self.cfg = cfg
        self.recorder = Recorder(sim, policy)

    def record(self, index: int) -> int:
        sim_seed, policy_seed = episode_seeds(self.cfg.seed, index)
        episode = self.recorder.record(sim_seed, self.cfg.steps, policy_seed)
        episode.attrs.update(dataset_seed=self.cfg.seed, episode_index=index)
        save_episode(episode, Path(self.cfg.out) / episode_filename(index))
        return episode.num_steps

    def close(self) -> None:
        self.recorder.close()


_WORKER: _Worker | None = None


def _init_worker(cfg: GenerateConfig) -> None:
    global _WORKER
    _WORKER = _Worker(cfg)
    Finalize(_WORKER, _WORKER.close, exitpriority=10)  # runs when the worker process exits normally


def _record_in_worker(index: int) -> int:
    assert _WORKER is not None, "pool worker was not initialised"
    return _WORKER.record(index)


def _summary(cfg: GenerateConfig, episodes: int, frames: int, steps: int, seconds: float) -> dict:
    files = episode_paths(cfg.out)
    total_bytes = sum(f.stat().st_size for f in files)
    total_frames = sum(_frame_count(f) for f in files)
    return {
        "config": dataclasses.asdict(cfg),
        "recorded_episodes": episodes,
        "recorded_steps": steps,
        "recorded_frames": frames,
        "seconds": round(seconds, 2),
        "frames_per_second": round(frames / seconds, 1) if seconds > 0 else None,
        "dataset_episodes": len(files),
        "dataset_frames": total_frames,
        "dataset_bytes": total_bytes,
        "bytes_per_frame": round(total_bytes / total_frames, 1) if total_frames else None,
    }


def _frame_count(path: Path) -> int:
    with h5py.File(path, "r") as f:
        return int(f["data/demo_0/obs/frames"].shape[0])


def _write_json(path: Path, value: dict) -> None:
    atomic_write_text(path, json.dumps(value, indent=2) + "\n")


def main(argv: Sequence[str] | None = None) -> dict:
    """CLI entry point; prints the summary."""
    cfg = parse_config(GenerateConfig, argv, __doc__)
    summary = generate(cfg, progress=True)
    tqdm.write(
        f"{cfg.scenario}: recorded {summary['recorded_episodes']} episodes / {summary['recorded_frames']} frames "
        f"in {summary['seconds']} s ({summary['frames_per_second']} frames/s); {cfg.out} holds "
        f"{summary['dataset_episodes']} episodes, {summary['dataset_frames']} frames, "
        f"{summary['dataset_bytes'] / 1e6:.1f} MB ({summary['bytes_per_frame']} B/frame)"
    )
    return summary


if __name__ == "__main__":
    main()
