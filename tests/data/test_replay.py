"""Ground-truth replay is exact for every simulator, and branches off recorded states with new actions."""

from __future__ import annotations

import numpy as np
import pytest

from astra_gym.data.episodes import Episode, load_episode, save_episode
from astra_gym.data.policies import make_policy
from astra_gym.data.recorder import Recorder
from astra_gym.data.replay import replay

BUTTONS = ("MOVE_FORWARD", "MOVE_BACKWARD", "TURN_LEFT", "TURN_RIGHT", "MOVE_LEFT", "MOVE_RIGHT")
SIM_MODULES = {"drive": "Box2D", "manipulation": "gymnasium_robotics", "explore": "vizdoom"}
SCENARIOS = ["drive", "manipulation", "explore"]
STEPS = 24


def recorded(scenario: str, tmp_path) -> Episode:
    """The second of two episodes recorded with one env (so replay must not rely on a fresh env), via disk."""
    pytest.importorskip(SIM_MODULES[scenario])
    from astra_gym.data.sims import make_simulator

    with Recorder(make_simulator(scenario), make_policy("mix", scenario, BUTTONS)) as rec:
        rec.record(seed=3, steps=8)
        ep = rec.record(seed=11, steps=STEPS, policy_seed=7)
    return load_episode(save_episode(ep, tmp_path / "ep.hdf5"))


def assert_matches(branch: Episode, ep: Episode, start: int) -> None:
    """``branch`` reproduces ``ep`` from step ``start`` on, bit for bit."""
    assert np.array_equal(branch.frames, ep.frames[start:])
    assert np.array_equal(branch.rewards, ep.rewards[start:])
    assert np.array_equal(branch.terminated, ep.terminated[start:])
    assert np.array_equal(branch.step_index, ep.step_index[start:])
    for key, value in ep.poses.items():
        assert np.array_equal(branch.poses[key], value[start:]), key


@pytest.mark.sims
@pytest.mark.parametrize("scenario", SCENARIOS)
def test_replay_reproduces_the_recording_exactly(scenario, tmp_path):
    ep = recorded(scenario, tmp_path)
    for start in (0, 10):
        with replay(ep, start) as session:
            assert session.step == start
            assert np.array_equal(session.frame(), ep.frames[start])
            assert_matches(session.continue_with(ep.actions[start:]), ep, start)


@pytest.mark.sims
@pytest.mark.parametrize("scenario", SCENARIOS)
def test_replay_branches_off_with_different_actions(scenario, tmp_path):
    ep = recorded(scenario, tmp_path)
    start = 12
    rng = np.random.default_rng(0)
    new = ep.actions[start:].copy()
    new[:] = ep.actions[rng.permutation(start)][: len(new)]  # other actions of the same episode
    with replay(ep, start) as session:
        first = session.continue_with(new[:5])
        rest = session.continue_with(new[5:])  # continuation picks up where the last one stopped
    assert np.array_equal(first.frames[0], ep.frames[start]) and np.array_equal(rest.frames[0], first.frames[-1])
    assert rest.step_index[0] == first.step_index[-1] and rest.attrs["replay_prefix_steps"] == start + 5
    branch = np.concatenate([first.frames, rest.frames[1:]])
    assert not np.array_equal(branch, ep.frames[start:])  # different actions, different future
    with replay(ep.seed, np.concatenate([ep.actions[:start], new]), scenario=scenario) as again:
        assert np.array_equal(again.frame(), branch[-1])  # and the branch itself is reproducible


@pytest.mark.sims
def test_replay_checks_its_prefix(tmp_path):
    ep = recorded("explore", tmp_path)
    with pytest.raises(ValueError, match="outside the episode"):
        replay(ep, STEPS + 1)
    with pytest.raises(ValueError, match="needs sim=... or scenario="):
        replay(ep.seed, ep.actions[:2])


@pytest.mark.sims
def test_replay_works_for_any_gymnasium_env_given_its_simulator():
    pytest.importorskip("pygame")
    from astra_gym.data.policies import RandomHold
    from astra_gym.data.sims import GymConfig, GymSimulator

    sim = GymSimulator(GymConfig("CartPole-v1", size=32, frame_skip=2))
    with Recorder(sim, RandomHold(lambda rng: rng.integers(2), hold=(1, 3))) as rec:
        ep = rec.record(seed=4, steps=10)
    with pytest.raises(ValueError, match="pass the simulator it was recorded with"):
        replay(ep, 3)
    with replay(ep, 3, sim=sim) as session:
        assert_matches(session.continue_with(ep.actions[3:]), ep, 3)
