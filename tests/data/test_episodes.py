"""Episode format: round trip, validation, layout, and atomic writes (no partial episode is ever listed)."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
from pathlib import Path

import h5py
import numpy as np
import pytest

from astra_gym.data import episodes as episodes_module
from astra_gym.data.episodes import Episode, episode_filename, episode_paths, iter_episodes, load_episode, save_episode

ROOT = Path(__file__).resolve().parents[2]


def make_episode(steps: int = 6, size: int = 8, seed: int = 0) -> Episode:
    """A small explore-like episode with random frames."""
    rng = np.random.default_rng(seed)
    return Episode(
        scenario="explore",
        env_id="vizdoom/my_way_home",
        seed=seed,
        frames=rng.integers(0, 256, (steps + 1, size, size, 3), dtype=np.uint8),
        actions=rng.integers(0, 2, (steps, 6)).astype(np.int8),
        rewards=rng.normal(size=steps).astype(np.float32),
        terminated=np.zeros(steps, bool),
        truncated=np.r_[np.zeros(steps - 1, bool), True],
        step_index=10 + 4 * np.arange(steps + 1),
        poses={"camera_pos": rng.normal(size=(steps + 1, 3)), "camera_yaw": rng.normal(size=steps + 1)},
        attrs={"frame_skip": 4, "button_names": ["A", "B"], "nested": {"x": np.float32(1.5)}, "arr": np.arange(3)},
    )


def assert_same(a: Episode, b: Episode) -> None:
    assert (a.scenario, a.env_id, a.seed) == (b.scenario, b.env_id, b.seed)
    for name in ("frames", "actions", "rewards", "terminated", "truncated", "step_index"):
        x, y = getattr(a, name), getattr(b, name)
        assert x.dtype == y.dtype and np.array_equal(x, y), name
    assert a.poses.keys() == b.poses.keys()
    for key in a.poses:
        assert np.array_equal(a.poses[key], b.poses[key]), key


def test_round_trip_keeps_every_field_and_dtype(tmp_path):
    ep = make_episode()
    path = save_episode(ep, tmp_path / episode_filename(3))
    assert path.name == "episode_000003.hdf5"
    back = load_episode(path)
    assert_same(ep, back)
    assert back.frames.dtype == np.uint8 and back.actions.dtype == np.int8
    assert back.step_index.dtype == np.int64 and back.poses["camera_pos"].dtype == np.float64
    assert back.attrs == {"frame_skip": 4, "button_names": ["A", "B"], "nested": {"x": 1.5}, "arr": [0, 1, 2]}


def test_layout_is_robomimic_style(tmp_path):
    ep = make_episode(steps=5)
    path = save_episode(ep, tmp_path / "e.hdf5")
    with h5py.File(path, "r") as f:
        demo = f["data/demo_0"]
        assert f["data"].attrs["total"] == 5 and demo.attrs["num_samples"] == 5
        assert demo["obs/frames"].shape == (6, 8, 8, 3) and demo["obs/frames"].compression == "gzip"
        assert demo["actions"].shape == (5, 6) and demo["rewards"].shape == (5,)
        assert demo["dones"][-1] == 1 and demo["step_index"].shape == (6,)
        assert set(demo["poses"]) == {"camera_pos", "camera_yaw"}


@pytest.mark.parametrize(
    "change, message",
    [
        ({"frames": np.zeros((7, 8, 8, 3), np.float32)}, "uint8"),
        ({"frames": np.zeros((6, 8, 8, 3), np.uint8)}, "frames must have 7 rows"),
        ({"rewards": np.zeros(5, np.float32)}, "rewards must have 6 rows"),
        ({"step_index": np.zeros(6)}, "step_index must have 7 rows"),
        ({"poses": {"camera_yaw": np.zeros(6)}}, "pose 'camera_yaw'"),
    ],
)
def test_validation_names_the_bad_field(change, message):
    ep = make_episode()
    fields = {f: getattr(ep, f) for f in ep.__dataclass_fields__}
    with pytest.raises(ValueError, match=message):
        Episode(**{**fields, **change})


def test_iter_episodes_lists_complete_files_in_order_and_rejects_foreign_files(tmp_path):
    for i in (2, 0, 1):
        save_episode(make_episode(seed=i), tmp_path / episode_filename(i))
    (tmp_path / ".episode_000009.hdf5.abcd1234.tmp").write_bytes(b"partial")
    assert [e.seed for e in iter_episodes(tmp_path)] == [0, 1, 2]
    with h5py.File(tmp_path / "foreign.hdf5", "w") as f:
        f["x"] = 1
    with pytest.raises(ValueError, match="not an astra-gym episode"):
        load_episode(tmp_path / "foreign.hdf5")


def test_failed_write_leaves_nothing_and_keeps_the_previous_file(tmp_path, monkeypatch):
    good = make_episode(seed=1)
    path = save_episode(good, tmp_path / episode_filename(0))

    def broken_write(f, ep):
        f.create_dataset("half", data=np.zeros(10))
        raise OSError("disk full (simulated)")

    monkeypatch.setattr(episodes_module, "_write", broken_write)
    with pytest.raises(OSError, match="disk full"):
        save_episode(make_episode(seed=2), tmp_path / episode_filename(1))
    with pytest.raises(OSError, match="disk full"):
        save_episode(make_episode(seed=3), path)  # overwrite attempt fails: the old episode survives
    assert sorted(p.name for p in tmp_path.iterdir()) == [episode_filename(0)]
    assert_same(load_episode(path), good)


_KILLED_WRITER = textwrap.dedent(
    """
    import sys, time
    import numpy as np
    from astra_gym.data import episodes
    sys.path.insert(0, {tests!r})
    from test_episodes import make_episode

    out = sys.argv[1]
    for i in range(2):
        episodes.save_episode(make_episode(seed=i, size=32), f"{{out}}/" + episodes.episode_filename(i))

    def stall(src, dst):  # the third write hangs after writing all data, before its rename
        print("STALLED", flush=True)
        time.sleep(60)

    episodes.os.replace = stall
    episodes.save_episode(make_episode(seed=2, size=32), f"{{out}}/" + episodes.episode_filename(2))
    """
)


def test_killed_writer_leaves_only_complete_episodes(tmp_path):
    script = _KILLED_WRITER.format(tests=str(Path(__file__).parent))
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")])}
    proc = subprocess.Popen([sys.executable, "-c", script, str(tmp_path)], stdout=subprocess.PIPE, text=True, env=env)
    try:
        line = proc.stdout.readline()  # "" if the writer crashed instead of stalling
        assert line.strip() == "STALLED", f"writer did not reach the stalled write: {line!r}"
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait(timeout=30)
    finally:
        if proc.poll() is None:
            proc.kill()
    leftovers = [p.name for p in tmp_path.iterdir() if p.name.startswith(".")]
    assert len(leftovers) == 1 and ".tmp-" in leftovers[0]  # the killed write, never listed
    assert [p.name for p in episode_paths(tmp_path)] == [episode_filename(0), episode_filename(1)]
    for i, ep in enumerate(iter_episodes(tmp_path)):
        assert_same(ep, make_episode(seed=i, size=32))
