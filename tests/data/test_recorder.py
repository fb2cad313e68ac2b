"""Recording from the three real simulators, policy coverage of the action spaces, and the generate CLI."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from astra_gym.data.episodes import iter_episodes, load_episode
from astra_gym.data.policies import (
    Mixture,
    RandomHold,
    button_sampler,
    car_corner_sampler,
    car_sampler,
    fetch_corner_sampler,
    fetch_rest_sampler,
    fetch_sampler,
    make_policy,
)
from astra_gym.data.recorder import Recorder

BUTTONS = ("MOVE_FORWARD", "MOVE_BACKWARD", "TURN_LEFT", "TURN_RIGHT", "MOVE_LEFT", "MOVE_RIGHT")
SIM_MODULES = {"drive": "Box2D", "manipulation": "gymnasium_robotics", "explore": "vizdoom"}
POSE_SHAPES = {
    "drive": {"vehicle_xy": (2,), "vehicle_yaw": (), "vehicle_velocity": (2,)},
    "manipulation": {"ee_pos": (3,), "ee_quat": (4,), "gripper": (), "object_pos": (3,), "goal_pos": (3,)},
    "explore": {"camera_pos": (3,), "camera_yaw": (), "camera_pitch": ()},
}
MOVERS = ("ee_pos", "object_pos")  # Fetch poses that a command moves
ACTIONS = {"drive": (np.float32, (3,)), "manipulation": (np.float32, (4,)), "explore": (np.int8, (6,))}


def simulator(scenario: str, **config):
    """The scenario's simulator, or a clean skip when its package is not installed."""
    pytest.importorskip(SIM_MODULES[scenario])
    from astra_gym.data.sims import make_simulator

    return make_simulator(scenario, **config)


def record(scenario: str, policy: str, steps: int, seeds=(0,), rest: float = 0.0, **config):
    sim = simulator(scenario, **config)
    with Recorder(sim, make_policy(policy, scenario, BUTTONS, rest=rest)) as rec:
        return sim, [rec.record(seed, steps, policy_seed=seed + 100) for seed in seeds]


# ----------------------------------------------------------------------------- samplers (no simulator)


def test_samplers_cover_the_action_spaces():
    rng = np.random.default_rng(0)
    car = np.stack([car_sampler(rng) for _ in range(2000)])
    assert car[:, 0].min() == -1 and car[:, 0].max() == 1 and (np.abs(car[:, 0]) < 0.5).any()
    assert (car[:, 1] > 0.9).any() and (car[:, 2] > 0.9).any() and ((car[:, 1] > 0) & (car[:, 2] > 0)).any()
    assert car.min(0).tolist() >= [-1, 0, 0] and car.max(0).tolist() <= [1, 1, 1]
    fetch = np.stack([fetch_sampler(rng) for _ in range(2000)])
    assert (fetch.min(0) == -1).all() and (fetch.max(0) == 1).all() and (fetch[:, :3] == 0).any(0).all()
    doom = np.stack([button_sampler(BUTTONS)(rng) for _ in range(4000)])
    combos = {tuple(row) for row in doom}
    assert len(combos) == 2 ** len(BUTTONS)  # every button combination, the empty one included


def test_random_hold_holds_and_switches_abruptly():
    policy = RandomHold(car_sampler, hold=(3, 5))
    policy.reset(None, np.random.default_rng(0))
    actions = np.stack([policy.act(None, None) for _ in range(200)])
    changes = np.flatnonzero(np.any(np.diff(actions, axis=0) != 0, axis=1)) + 1
    runs = np.diff(np.r_[0, changes, len(actions)])
    assert runs[:-1].min() >= 3 and runs.max() <= 5 * 2  # held 3-5 steps (two equal draws may merge)
    assert (np.abs(np.diff(actions[:, 0])) > 1.0).any()  # abrupt steering reversals happen


def test_mixture_switches_per_segment_and_records_its_trace():
    class Const(RandomHold):
        def __init__(self, value):
            super().__init__(lambda rng: np.array([value]), hold=(1, 1))

    mix = Mixture({"a": Const(0), "b": Const(1)}, [0.5, 0.5], per="segment", segment=(2, 4))
    mix.reset(None, np.random.default_rng(1))
    acts = np.array([mix.act(None, None)[0] for _ in range(100)])
    trace = mix.trace()
    assert trace[0][0] == 0 and len(trace) > 5
    for (start, name), (end, _) in zip(trace, [*trace[1:], [100, None]], strict=True):
        assert (acts[start:end] == {"a": 0, "b": 1}[name]).all()
    per_episode = Mixture({"a": Const(0), "b": Const(1)}, [0.5, 0.5], per="episode")
    per_episode.reset(None, np.random.default_rng(1))
    assert len({per_episode.act(None, None)[0] for _ in range(50)}) == 1


# ----------------------------------------------------------------------------- real simulators


@pytest.mark.sims
@pytest.mark.parametrize("scenario", ["drive", "manipulation", "explore"])
def test_recording_from_each_simulator(scenario):
    sim, (ep, ep2) = record(scenario, "mix", steps=12, seeds=(0, 1))
    dtype, shape = ACTIONS[scenario]
    assert ep.scenario == scenario and ep.num_steps == 12
    assert ep.frames.shape == (13, 64, 64, 3) and ep.frames.dtype == np.uint8
    assert ep.actions.dtype == dtype and ep.actions.shape == (12, *shape)
    assert {k: v.shape for k, v in ep.poses.items()} == {k: (13, *s) for k, s in POSE_SHAPES[scenario].items()}
    assert ep.truncated[-1] and not ep.terminated.any()
    skip = sim.config.frame_skip
    assert (np.diff(ep.step_index) == skip).all()
    assert ep.attrs["frame_skip"] == skip and ep.attrs["sim_config"]["size"] == 64 and ep.attrs["fps"] > 0
    assert ep.frames.std(axis=0).mean() > 1.0  # the picture changes over the episode
    assert not np.array_equal(ep.frames[0], ep2.frames[0])  # different seeds, different scenes
    if scenario == "drive":
        assert ep.step_index[0] == sim.config.warmup_steps  # the zoom-in is skipped
    if scenario == "explore":
        assert ep.attrs["button_names"] == list(BUTTONS)


@pytest.mark.sims
def test_recording_is_a_function_of_the_seeds():
    _, (a,) = record("explore", "mix", steps=20, seeds=(5,))
    _, (b,) = record("explore", "mix", steps=20, seeds=(5,))
    assert np.array_equal(a.frames, b.frames) and np.array_equal(a.actions, b.actions)


@pytest.mark.sims
def test_native_size_frames():
    _, (ep,) = record("explore", "random", steps=3, size=None)
    assert ep.frames.shape == (4, 120, 160, 3)


@pytest.mark.sims
def test_any_gymnasium_env_can_be_recorded():
    pytest.importorskip("pygame")
    from astra_gym.data.sims import GymConfig, GymSimulator

    sim = GymSimulator(GymConfig("CartPole-v1", size=32, frame_skip=2, warmup_steps=1))
    with Recorder(sim, RandomHold(lambda rng: rng.integers(2), hold=(1, 3))) as rec:
        ep = rec.record(seed=0, steps=8)
    assert ep.frames.shape[1:] == (32, 32, 3) and ep.actions.dtype == np.int8
    assert ep.step_index[0] == 1 and ep.poses == {}


def test_corner_samplers_draw_every_corner_and_nothing_else():
    rng = np.random.default_rng(0)
    car = {tuple(car_corner_sampler(rng).tolist()) for _ in range(500)}
    assert car == {(s, g, b) for s in (-1.0, 0.0, 1.0) for g, b in ((1.0, 0.0), (0.0, 0.0), (0.0, 1.0))}
    fetch = np.stack([fetch_corner_sampler(rng) for _ in range(500)])
    assert set(np.unique(fetch[:, :3]).tolist()) == {-1.0, 0.0, 1.0} and set(fetch[:, 3].tolist()) == {-1.0, 1.0}


@pytest.mark.sims
def test_drive_probe_holds_corner_actions():
    _, eps = record("drive", "probe", steps=80, seeds=(0, 1, 2, 3), size=16)
    assert {name for e in eps for _, name in e.attrs["policy_trace"]} == {"expert", "random"}
    for episode in eps:
        starts = [step for step, _ in episode.attrs["policy_trace"]] + [len(episode.actions)]
        for (step, name), end in zip(episode.attrs["policy_trace"], starts[1:], strict=False):
            if name != "random":
                continue
            held = episode.actions[step:end]
            assert set(np.unique(held[:, 0]).tolist()) <= {-1.0, 0.0, 1.0}
            assert ((held[:, 1:] == 0) | (held[:, 1:] == 1)).all() and not (held[:, 1:].sum(1) > 1).any()
            runs = np.flatnonzero(np.any(np.diff(held, axis=0) != 0, axis=1))  # where a held action changes
            assert len(runs) <= len(held) // 8 + 1  # holds last >= 8 steps (a segment may cut one short)


@pytest.mark.sims
def test_drive_policies_steer_both_ways_and_use_both_pedals():
    _, eps = record("drive", "mix", steps=60, seeds=(0, 1, 2), size=16)
    actions = np.concatenate([e.actions for e in eps])
    assert actions[:, 0].min() < -0.9 and actions[:, 0].max() > 0.9
    assert actions[:, 1].max() > 0.5 and actions[:, 2].max() > 0.2
    assert {name for e in eps for _, name in e.attrs["policy_trace"]} == {"expert", "random"}


@pytest.mark.sims
def test_manipulation_policies_open_and_close_the_gripper_and_move_every_axis():
    _, eps = record("manipulation", "mix", steps=100, seeds=(0, 1))
    actions = np.concatenate([e.actions for e in eps])
    assert (actions[:, 3] < -0.9).any() and (actions[:, 3] > 0.9).any()
    assert (actions[:, :3].min(0) < -0.9).all() and (actions[:, :3].max(0) > 0.9).all()
    assert np.ptp(eps[0].poses["ee_pos"], axis=0).max() > 0.05  # the gripper really moved


def test_rest_shares_are_checked_and_name_the_fix():
    with pytest.raises(ValueError, match="epsilon \\+ rest <= 1"):
        make_policy("mix", "manipulation", epsilon=0.6, rest=0.5)
    with pytest.raises(ValueError, match="use rest=0"):
        make_policy("expert", "manipulation", rest=0.2)
    policy = make_policy("probe", "explore", BUTTONS, rest=0.3)
    assert isinstance(policy, Mixture) and set(policy.components) == {"expert", "random", "rest"}


def test_fetch_rest_command_stays_put_and_is_not_the_null_action():
    rng = np.random.default_rng(0)
    rows = np.stack([fetch_rest_sampler(rng) for _ in range(200)])
    assert (rows[:, :3] == 0).all() and (rows[:, 3] != 0).all() and (rows[:, 3] > 0).any() and (rows[:, 3] < 0).any()


@pytest.mark.sims
def test_manipulation_rest_segments_hold_the_arm_and_the_block_still():
    _, eps = record("manipulation", "mix", steps=120, seeds=(0, 1, 2), rest=0.5)
    speeds: dict[str, list] = {"rest": [], "moving": []}  # gripper and block motion per step (m)
    for episode in eps:
        bounds = [step for step, _ in episode.attrs["policy_trace"]] + [len(episode.actions)]
        for (step, name), end in zip(episode.attrs["policy_trace"], bounds[1:], strict=False):
            if name == "rest":
                assert (episode.actions[step:end, :3] == 0).all()
            moves = [np.linalg.norm(np.diff(episode.poses[k][step + 1 : end + 1], axis=0), axis=1) for k in MOVERS]
            speeds["rest" if name == "rest" else "moving"].append(np.maximum(*moves))
    rest, moving = (np.concatenate(v) for v in speeds.values())
    assert len(rest) >= 30  # the rest segments really happened
    assert rest.mean() < 3e-3 and moving.mean() > 2e-2, (rest.mean(), moving.mean())


@pytest.mark.sims
def test_gripper_action_is_inert_in_fetch_push_and_moves_the_fingers_in_pick_and_place():
    opening = RandomHold(lambda rng: np.array([0, 0, 0, 1.0], np.float32), hold=(1, 1))
    with Recorder(simulator("manipulation"), opening) as rec:
        push = rec.record(seed=0, steps=5)
    with Recorder(simulator("manipulation", env_id="FetchPickAndPlace-v4"), opening) as rec:
        pick = rec.record(seed=0, steps=5)
    assert np.ptp(push.poses["gripper"][1:]) == 0  # FetchPush: no finger actuators, fingers pinned
    assert pick.poses["gripper"][-1] > pick.poses["gripper"][0] + 0.05 and pick.env_id == "FetchPickAndPlace-v4"


@pytest.mark.sims
def test_explore_policies_press_every_button_and_walk():
    _, (ep,) = record("explore", "mix", steps=300)
    assert ep.actions.any(axis=0).all(), "some ViZDoom button was never pressed"
    path = np.linalg.norm(np.diff(ep.poses["camera_pos"][:, :2], axis=0), axis=1).sum()
    assert path > 500  # map units: it walks through rooms, not in place


# ----------------------------------------------------------------------------- generate CLI


def _doom_processes() -> set[str]:
    """Pids of running ViZDoom games (Linux ``/proc``; empty elsewhere)."""
    pids = set()
    for cmdline in Path("/proc").glob("[0-9]*/cmdline"):
        try:
            if b"-iwad" in cmdline.read_bytes() and b"vizdoom" in cmdline.read_bytes():
                pids.add(cmdline.parent.name)
        except OSError:  # the process ended meanwhile
            pass
    return pids


@pytest.mark.sims
def test_generate_cli_resumes_and_does_not_depend_on_workers(tmp_path):
    pytest.importorskip("vizdoom")
    from astra_gym.data.generate import main

    args = ["--scenario", "explore", "--episodes", "3", "--steps", "10", "--size", "32"]
    summary = main([*args, "--out", str(tmp_path / "a")])
    assert summary["recorded_episodes"] == 3 and summary["dataset_frames"] == 33
    assert json.loads((tmp_path / "a" / "generation.json").read_text())["dataset_episodes"] == 3
    assert main([*args, "--out", str(tmp_path / "a")])["recorded_episodes"] == 0  # resume: nothing to do
    before = _doom_processes()
    main([*args, "--out", str(tmp_path / "b"), "--workers", "2"])
    assert _doom_processes() <= before  # the pool's workers closed their ViZDoom games
    for a, b in zip(iter_episodes(tmp_path / "a"), iter_episodes(tmp_path / "b"), strict=True):
        assert a.seed == b.seed and np.array_equal(a.frames, b.frames) and np.array_equal(a.actions, b.actions)
    assert load_episode(tmp_path / "a" / "episode_000002.hdf5").attrs["episode_index"] == 2


@pytest.mark.sims
def test_generate_records_manipulation_from_a_named_camera_and_replays_with_it(tmp_path):
    from astra_gym.data.generate import main
    from astra_gym.data.replay import replay
    from astra_gym.data.sims.manipulation import CAMERAS, ManipulationConfig

    args = ["--scenario", "manipulation", "--episodes", "1", "--steps", "4", "--policy", "expert"]
    main([*args, "--out", str(tmp_path / "stock")])
    main([*args, "--out", str(tmp_path / "front"), "--camera", "front"])
    stock, front = (load_episode(tmp_path / name / "episode_000000.hdf5") for name in ("stock", "front"))
    assert front.attrs["sim_config"]["camera"] == {**CAMERAS["front"], "lookat": list(CAMERAS["front"]["lookat"])}
    assert np.array_equal(stock.actions, front.actions)  # the same episode ...
    assert np.abs(stock.frames.astype(int) - front.frames).mean() > 10  # ... seen from elsewhere
    with replay(front, 4) as session:  # a replay renders with the recorded camera
        assert np.array_equal(session.frame(), front.frames[4])
    with pytest.raises(ValueError, match="unknown camera 'top'"):
        ManipulationConfig(camera="top")
    with pytest.raises(ValueError, match="is a manipulation camera"):
        main(["--scenario", "explore", "--episodes", "1", "--steps", "2", "--out", str(tmp_path), "--camera", "front"])
