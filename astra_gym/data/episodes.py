"""Recorded simulator episodes and their on-disk format (the one place the format is documented).

One HDF5 file per episode, laid out like a robomimic / D4RL dataset holding a single demo, so
``h5py`` users (and robomimic-style loaders) find everything where they expect it::

    episode_000012.hdf5                 file attrs: format="astra-gym-episode", format_version=1
    └── data/                           attrs: total=T, env_args=JSON {"env_name", "type", "env_kwargs"}
        └── demo_0/                     attrs: num_samples=T, scenario, env_id, seed, attrs_json=JSON(Episode.attrs)
            ├── actions     [T, ...]    env-native dtype and space (see below)
            ├── rewards     [T]         float32
            ├── dones       [T]         uint8, terminated | truncated (robomimic's name)
            ├── terminated  [T]         bool
            ├── truncated   [T]         bool
            ├── step_index  [T+1]       int64, simulator step counter of each frame
            ├── obs/
            │   └── frames  [T+1, H, W, 3] uint8 RGB, gzip, chunks of 16 frames
            └── poses/
                └── <key>   [T+1, ...]  float64 ground-truth poses (keys per scenario, below)

Conventions:

* ``frames[t]`` is the observation *before* ``actions[t]``; ``frames[t+1]`` the one after it, so a
  T-step episode has T+1 frames, poses and step indices (unlike robomimic's ``obs``/``next_obs``).
* ``rewards[t]``, ``terminated[t]``, ``truncated[t]`` are those returned by the step of ``actions[t]``
  (summed over the frame skip). The recorder sets ``truncated[-1]`` when it stops an episode that
  did not terminate (the step budget is the time limit).
* ``step_index`` counts simulator steps since reset (frame skip and warm-up included): CarRacing
  physics steps, Fetch env steps, ViZDoom tics.
* Actions: drive float32 [T, 3] (steer in [-1, 1], gas, brake in [0, 1]); manipulation float32
  [T, 4] (dx, dy, dz, gripper in [-1, 1]); explore int8 [T, n_buttons] multi-hot button states,
  names in ``attrs["button_names"]``.
* Poses: drive ``vehicle_xy`` [T+1, 2], ``vehicle_yaw`` [T+1] (``hull.angle``, rad),
  ``vehicle_velocity`` [T+1, 2] (Box2D units); manipulation ``ee_pos`` [T+1, 3], ``ee_quat`` [T+1, 4]
  (w, x, y, z), ``gripper`` [T+1] (finger opening), ``object_pos`` [T+1, 3], ``goal_pos`` [T+1, 3]
  (metres); explore ``camera_pos`` [T+1, 3] (ViZDoom map units), ``camera_yaw`` [T+1],
  ``camera_pitch`` [T+1] (rad).
* ``attrs`` (JSON): ``sim_config`` (rebuilds the simulator for replay), ``frame_skip``,
  ``warmup_steps``, ``size``, ``native_size``, ``fps``, ``camera``, ``env_kwargs``, ``action_names``,
  ``button_names`` (explore), ``policy`` (name), ``policy_seed``, ``policy_trace`` (segments
  ``[start_step, component]`` of mixtures).

Files are named ``episode_{index:06d}.hdf5``. Writes are atomic: the file is written under a
hidden temporary name (``.episode_....tmp``) in the same directory, fsynced and renamed with
``os.replace``; a killed writer leaves at most such a temporary file, which :func:`iter_episodes`
never lists. So every ``*.hdf5`` file in a dataset directory is a complete episode.
"""

from __future__ import annotations

import dataclasses
import json
import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import h5py
import numpy as np

from astra_gym.utils.atomic import atomic_write

__all__ = ["Episode", "save_episode", "load_episode", "iter_episodes", "episode_paths", "episode_filename"]

FORMAT = "astra-gym-episode"
FORMAT_VERSION = 1
_FRAME_CHUNK = 16
_GZIP_LEVEL = 4


@dataclasses.dataclass
class Episode:
    """One recorded episode (see the module docstring for every field's meaning and shape).

    Attributes:
        scenario: "drive" | "manipulation" | "explore" (or a custom name).
        env_id: Simulator id ("CarRacing-v3", "FetchPush-v4", "vizdoom/my_way_home").
        seed: Seed of the simulator reset; with ``actions`` it reproduces every frame.
        frames: [T+1, H, W, 3] uint8 RGB; ``frames[t]`` is the view before ``actions[t]``.
        actions: [T, ...] env-native actions.
        rewards: [T] float32.
        terminated: [T] bool.
        truncated: [T] bool.
        step_index: [T+1] int64 simulator step of each frame.
        poses: Ground-truth pose arrays, each with T+1 rows (float64).
        attrs: JSON-able metadata (frame_skip, policy, camera, sim_config, ...).
    """

    scenario: str
    env_id: str
    seed: int
    frames: np.ndarray
    actions: np.ndarray
    rewards: np.ndarray
    terminated: np.ndarray
    truncated: np.ndarray
    step_index: np.ndarray
    poses: dict[str, np.ndarray] = dataclasses.field(default_factory=dict)
    attrs: dict[str, Any] = dataclasses.field(default_factory=dict)

    def __post_init__(self) -> None:
        self.seed = int(self.seed)
        self.frames = np.asarray(self.frames)
        self.actions = np.asarray(self.actions)
        self.rewards = np.asarray(self.rewards, np.float32)
        self.terminated = np.asarray(self.terminated, bool)
        self.truncated = np.asarray(self.truncated, bool)
        self.step_index = np.asarray(self.step_index, np.int64)
        self.poses = {k: np.asarray(v, np.float64) for k, v in self.poses.items()}
        self.validate()

    @property
    def num_steps(self) -> int:
        """T, the number of actions."""
        return int(self.actions.shape[0])

    def validate(self) -> None:
        """Checks shapes and dtypes against the format.

        Raises:
            ValueError: Naming the first field that does not fit.
        """
        steps = self.num_steps
        if self.frames.dtype != np.uint8 or self.frames.ndim != 4 or self.frames.shape[3] != 3:
            raise ValueError(f"frames must be uint8 [T+1, H, W, 3], got {self.frames.dtype} {self.frames.shape}")
        expected = {"frames": steps + 1, "rewards": steps, "terminated": steps, "truncated": steps}
        expected["step_index"] = steps + 1
        for name, rows in expected.items():
            value = getattr(self, name)
            if value.shape[:1] != (rows,) or (name != "frames" and value.ndim != 1):
                raise ValueError(f"{name} must have {rows} rows for {steps} actions, got shape {value.shape}")
        for key, value in self.poses.items():
            if value.shape[:1] != (steps + 1,):
                raise ValueError(f"pose {key!r} must have T+1={steps + 1} rows, got shape {value.shape}")


def episode_filename(index: int) -> str:
    """The file name of episode ``index`` in a dataset directory."""
    return f"episode_{index:06d}.hdf5"


def save_episode(ep: Episode, path: str | os.PathLike) -> Path:
    """Writes ``ep`` to ``path`` atomically (temporary file, fsync, ``os.replace``).

    Either the complete episode is at ``path`` afterwards or nothing new is (an interrupted
    write removes its temporary file; a killed process leaves a hidden ``.tmp`` file that is
    never listed as an episode).

    Returns:
        The final path.
    """
    ep.validate()

    def write(tmp: Path) -> None:
        with h5py.File(tmp, "w") as f:
            _write(f, ep)

    return atomic_write(path, write)


def load_episode(path: str | os.PathLike) -> Episode:
    """Reads an episode written by :func:`save_episode`.

    Raises:
        ValueError: The file is not an astra-gym episode (or from a newer format version).
    """
    with h5py.File(path, "r") as f:
        if f.attrs.get("format") != FORMAT:
            raise ValueError(f"{path} is not an astra-gym episode file (no format={FORMAT!r} attribute)")
        if int(f.attrs["format_version"]) > FORMAT_VERSION:
            raise ValueError(f"{path} has format_version {f.attrs['format_version']}; upgrade astra-gym to read it")
        demo = f["data/demo_0"]
        return Episode(
            scenario=str(demo.attrs["scenario"]),
            env_id=str(demo.attrs["env_id"]),
            seed=int(demo.attrs["seed"]),
            frames=demo["obs/frames"][()],
            actions=demo["actions"][()],
            rewards=demo["rewards"][()],
            terminated=demo["terminated"][()],
            truncated=demo["truncated"][()],
            step_index=demo["step_index"][()],
            poses={k: v[()] for k, v in demo["poses"].items()},
            attrs=json.loads(demo.attrs["attrs_json"]),
        )


def episode_paths(directory: str | os.PathLike) -> list[Path]:
    """Sorted paths of the complete episodes in ``directory`` (temporary files excluded)."""
    return sorted(p for p in Path(directory).glob("*.hdf5") if not p.name.startswith("."))


def iter_episodes(directory: str | os.PathLike) -> Iterator[Episode]:
    """Yields the episodes of ``directory`` in file-name order."""
    for path in episode_paths(directory):
        yield load_episode(path)


def _write(f: h5py.File, ep: Episode) -> None:
    """Writes the layout of the module docstring into an open file."""
    f.attrs["format"] = FORMAT
    f.attrs["format_version"] = FORMAT_VERSION
    data = f.create_group("data")
    data.attrs["total"] = ep.num_steps
    env_args = {"env_name": ep.env_id, "type": ep.scenario, "env_kwargs": ep.attrs.get("env_kwargs", {})}
    data.attrs["env_args"] = _to_json(env_args)
    demo = data.create_group("demo_0")
    demo.attrs.update(num_samples=ep.num_steps, scenario=ep.scenario, env_id=ep.env_id, seed=ep.seed)
    demo.attrs["attrs_json"] = _to_json(ep.attrs)
    demo.create_dataset("actions", data=ep.actions)
    demo.create_dataset("rewards", data=ep.rewards)
    demo.create_dataset("dones", data=(ep.terminated | ep.truncated).astype(np.uint8))
    demo.create_dataset("terminated", data=ep.terminated)
    demo.create_dataset("truncated", data=ep.truncated)
    demo.create_dataset("step_index", data=ep.step_index)
    chunks = (min(_FRAME_CHUNK, ep.frames.shape[0]), *ep.frames.shape[1:])
    demo.create_group("obs").create_dataset(
        "frames", data=ep.frames, chunks=chunks, compression="gzip", compression_opts=_GZIP_LEVEL
    )
    poses = demo.create_group("poses")
    for key, value in ep.poses.items():
        poses.create_dataset(key, data=value)


def _to_json(value: Any) -> str:
    """JSON text of attrs that may hold numpy scalars and arrays."""

    def default(obj: Any) -> Any:
        if isinstance(obj, np.ndarray):
            return obj.tolist()
        if isinstance(obj, np.generic):
            return obj.item()
        if isinstance(obj, (tuple, set)):
            return list(obj)
        raise TypeError(f"episode attrs must be JSON-able; {type(obj).__name__} is not ({obj!r})")

    return json.dumps(value, default=default, sort_keys=True)
