"""The real-simulator wrapper presents exactly the Astra env's interface."""

from __future__ import annotations

import gymnasium as gym
import numpy as np
import pytest
from gymnasium.utils.env_checker import check_env

from astra_gym.agents.real_env import RealSimEnv, make_real_env
from astra_gym.envs.variants import VARIANTS
from tests.agents.conftest import require_sim

REAL_IDS = ["Astra-Drive-v0", "Astra-Manipulation-v0", "Astra-Explore-v0"]


@pytest.mark.sims
@pytest.mark.parametrize("env_id", REAL_IDS)
def test_same_interface_as_the_astra_env(env_id):
    require_sim(VARIANTS[env_id].scenario)
    astra = gym.make(env_id, checkpoint="debug", device="cpu")
    env = make_real_env(env_id, max_episode_steps=3)
    try:
        assert env.observation_space == astra.observation_space
        assert env.action_space == astra.action_space
        obs, info = env.reset(seed=7)
        assert env.observation_space.contains(obs) and np.array_equal(info["frames"][-1], obs)
        assert info["sim_seed"] == 7
        env.action_space.seed(0)
        ends = []
        for _ in range(3):
            obs, reward, terminated, truncated, info = env.step(env.action_space.sample())
            assert env.observation_space.contains(obs) and isinstance(reward, float)
            assert info["frames"].shape == (1, 64, 64, 3) and np.array_equal(info["frames"][-1], obs)
            ends.append(terminated or truncated)
        assert ends == [False, False, True]  # TimeLimit, like gym.make(env_id, max_episode_steps=3)
        with pytest.raises(ValueError, match="outside the action space|not a button state"):
            env.step(np.full(env.action_space.shape, 2, env.action_space.dtype))
    finally:
        env.close()
        astra.close()


@pytest.mark.sims
def test_seeded_resets_repeat_and_default_length():
    require_sim("drive")
    env = make_real_env("Astra-Drive-v0")
    try:
        assert env._max_episode_steps == VARIANTS["Astra-Drive-v0"].max_episode_steps
        first, _ = env.reset(seed=3)
        action = np.array([0.0, 1.0, 0.0], np.float32)
        stepped = env.step(action)[0]
        again, _ = env.reset(seed=3)
        assert np.array_equal(first, again) and np.array_equal(stepped, env.step(action)[0])
        _, info = env.reset()
        assert info["sim_seed"] != 3  # drawn from the env's generator
    finally:
        env.close()


@pytest.mark.sims
@pytest.mark.parametrize("scenario", ["drive", "manipulation", "explore"])
@pytest.mark.filterwarnings("ignore:.*alternative render modes")  # built without the registry (no spec)
@pytest.mark.filterwarnings("ignore:builtin type")  # Box2D's SWIG types
def test_passes_gymnasium_env_checker(scenario):
    require_sim(scenario)
    env = RealSimEnv(scenario, render_mode="rgb_array")
    try:
        check_env(env, skip_render_check=False)  # includes seeded-reset determinism
    finally:
        env.close()


@pytest.mark.sims
def test_a_dense_task_rewards_from_the_simulators_poses():
    require_sim("manipulation")
    env = make_real_env("Astra-Manipulation-v0", max_episode_steps=4, task="reach-push")
    try:
        env.reset(seed=3)
        sim, live = env.unwrapped.sim, env.unwrapped._env
        for _ in range(3):
            _, reward, *_ = env.step(np.float32([1.0, 0.0, 0.0, 0.0]))
            pose = sim.pose(live)
            reach = np.linalg.norm(pose["ee_pos"] - pose["object_pos"])
            push = np.linalg.norm(pose["object_pos"] - pose["goal_pos"])
            assert reward == pytest.approx(-(reach + push))
    finally:
        env.close()
    with pytest.raises(ValueError, match="choose one of"):
        make_real_env("Astra-Manipulation-v0", task="stack")


def test_a_dense_task_inside_needs_its_reward_model():
    from astra_gym.agents.train_sb3 import Args, make_train_env
    from astra_gym.rollout.bundle import BundleError

    with pytest.raises(ValueError, match="choose one of"):
        Args(env="Astra-Manipulation-v0", task="stack")
    assert Args(env="Astra-Manipulation-v0", task="reach-push", env_real=True).task == "reach-push"
    assert Args(env="Astra-Manipulation-v0", task="push").task == "push"  # the simulator's own reward
    with pytest.raises(ValueError, match="needs a reward model trained for it"):
        make_train_env(Args(env="Astra-Manipulation-v0", task="reach-push", checkpoint="debug", num_envs=1))
    with pytest.raises(BundleError, match="no reward model for the manipulation task 'reach-push'"):
        make_train_env(Args(env="Astra-Manipulation-v0", task="reach-push", checkpoint="small-v0", num_envs=1))


@pytest.mark.sims
def test_the_real_simulator_is_set_up_like_the_checkpoints_data(tmp_path):
    """A bundle's recorded settings (``bundle --sim-config``) reach the simulator; explicit ones override them."""
    import json

    from astra_gym.data.sims.manipulation import CAMERAS
    from astra_gym.rollout.bundle import BUNDLE_FORMAT, BUNDLE_VERSION, MANIFEST

    require_sim("manipulation")
    entry = {"reward_model": None, "sim_config": {"camera": CAMERAS["front"]}}
    manifest = {"format": BUNDLE_FORMAT, "format_version": BUNDLE_VERSION, "world_model": "wm", "vae": "vae",
                "scenarios": {"manipulation": entry}}  # fmt: skip
    (tmp_path / MANIFEST).write_text(json.dumps(manifest))
    front = make_real_env("Astra-Manipulation-v0", 2, checkpoint=str(tmp_path))
    stock = make_real_env("Astra-Manipulation-v0", 2, checkpoint="small-v0")  # the joint model: stock camera
    other = make_real_env("Astra-Manipulation-v0", 2, checkpoint=str(tmp_path), camera="stock")
    try:
        assert front.unwrapped.sim.config.camera == dict(CAMERAS["front"])
        assert other.unwrapped.sim.config.camera == stock.unwrapped.sim.config.camera != dict(CAMERAS["front"])
        a, b = front.reset(seed=3)[0], stock.reset(seed=3)[0]
        assert np.abs(a.astype(int) - b).mean() > 10  # another view of the same state
    finally:
        for env in (front, stock, other):
            env.close()
