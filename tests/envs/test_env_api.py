"""Every registered id passes Gymnasium's and SB3's env checkers; rendering follows the Gymnasium API."""

import warnings

import gymnasium as gym
import numpy as np
import pytest
from gymnasium.utils.env_checker import check_env
from stable_baselines3.common.env_checker import check_env as sb3_check_env

from tests.envs.conftest import ASTRA_IDS, make_debug

# SB3 recommends a symmetric [-1, 1] Box; CarRacing's steer/gas/brake box is asymmetric on purpose
# (it is the simulator's, so policies transfer), so exactly this advice is expected.
SB3_ASYMMETRIC_BOX = r"We recommend you to use a symmetric and normalized Box action space"


@pytest.mark.parametrize("env_id", ASTRA_IDS)
def test_gymnasium_check_env_passes_without_warnings(env_id):
    env = make_debug(env_id)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        check_env(env.unwrapped, skip_render_check=False)
    env.close()


@pytest.mark.parametrize("env_id", ASTRA_IDS)
def test_sb3_check_env_passes(env_id):
    env = make_debug(env_id)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        sb3_check_env(env, warn=True, skip_render_check=True)
    unexpected = [str(w.message) for w in caught if SB3_ASYMMETRIC_BOX not in str(w.message)]
    assert not unexpected, unexpected
    env.close()


def test_render_modes():
    env = make_debug(render_mode="rgb_array")
    assert env.unwrapped.render() is None  # nothing to show before reset (gym.make's wrapper raises)
    obs, _ = env.reset(seed=0)
    frame = env.render()
    assert frame.dtype == np.uint8 and frame.shape == (64, 64, 3) and np.array_equal(frame, obs)
    obs, *_ = env.step(env.action_space.sample())
    assert np.array_equal(env.render(), obs)
    human = make_debug(render_mode="human")
    human.reset(seed=0)
    assert human.render() is None
    human.close()
    human.close()  # closing twice is allowed


def test_make_vec_uses_the_native_vector_env_with_the_registered_limits():
    from astra_gym.envs.vector_env import AstraVectorEnv

    envs = gym.make_vec("Astra-Debug-v0", num_envs=3)
    assert isinstance(envs.unwrapped, AstraVectorEnv)
    assert envs.metadata["autoreset_mode"] == gym.vector.AutoresetMode.NEXT_STEP
    assert envs.unwrapped.max_episode_steps == gym.spec("Astra-Debug-v0").max_episode_steps
    obs, _ = envs.reset(seed=0)
    assert obs.shape == (3, 64, 64, 3) and envs.observation_space.contains(obs)
    obs, reward, terminated, truncated, info = envs.step(envs.action_space.sample())
    assert reward.shape == terminated.shape == truncated.shape == (3,)
    assert info["frames"].shape == (3, 1, 64, 64, 3) and info["_frames"].all()
    assert envs.render() is None  # no render_mode
    frames = gym.make_vec("Astra-Debug-v0", num_envs=2, render_mode="rgb_array")
    frames.reset(seed=0)
    assert len(frames.render()) == 2 and frames.render()[0].shape == (64, 64, 3)
