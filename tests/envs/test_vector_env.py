"""AstraVectorEnv: autoreset modes, truncation, learned termination, partial resets, reset options."""

import gymnasium as gym
import numpy as np
import pytest
from gymnasium.vector import AutoresetMode

from astra_gym.envs.env import AstraEnv
from astra_gym.envs.spaces import action_rows
from astra_gym.envs.vector_env import AstraVectorEnv

ACTION = np.array([0.3, 0.5, 0.0], np.float32)


def _vec(num_envs=2, **kwargs) -> AstraVectorEnv:
    return AstraVectorEnv(num_envs, checkpoint="debug", frame_bank="synthetic", device="cpu", **kwargs)


def _actions(num_envs: int) -> np.ndarray:
    return np.tile(ACTION, (num_envs, 1))


def test_next_step_autoreset_resets_on_the_call_after_the_episode_ended():
    envs = _vec(2, max_episode_steps=2)
    envs.reset(seed=0)
    envs.step(_actions(2))
    obs, reward, terminated, truncated, info = envs.step(_actions(2))
    assert truncated.all() and not terminated.any() and info["_frames"].all()
    obs, reward, terminated, truncated, info = envs.step(_actions(2))  # the resets, actions ignored
    assert np.array_equal(reward, [0.0, 0.0]) and not (terminated | truncated).any()
    assert "frames" not in info and info["_bank_index"].all()  # no row generated a chunk
    bank = envs.core.bank
    for row in range(2):
        assert np.array_equal(obs[row], bank.frames[info["bank_index"][row], -1])  # a new context's last frame
    obs, reward, *_ = envs.step(_actions(2))
    assert reward.all()  # stepping again


def test_same_step_autoreset_returns_the_new_episode_and_the_final_observation():
    next_step, same_step = _vec(2, max_episode_steps=1), _vec(2, max_episode_steps=1, autoreset_mode="SameStep")
    assert same_step.metadata["autoreset_mode"] == AutoresetMode.SAME_STEP
    next_step.reset(seed=3)
    same_step.reset(seed=3)
    last, *_ = next_step.step(_actions(2))
    fresh, *_ = next_step.step(_actions(2))
    obs, reward, terminated, truncated, info = same_step.step(_actions(2))
    assert truncated.all() and info["_final_obs"].all()
    assert all(np.array_equal(info["final_obs"][i], last[i]) for i in range(2))
    assert np.array_equal(obs, fresh)
    assert info["final_info"][0]["frames"].shape == (1, 64, 64, 3)


def test_disabled_autoreset_needs_an_explicit_partial_reset():
    envs = _vec(2, max_episode_steps=1, autoreset_mode=AutoresetMode.DISABLED)
    envs.reset(seed=0)
    envs.step(_actions(2))
    with pytest.raises(gym.error.ResetNeeded, match="reset_mask"):
        envs.step(_actions(2))
    envs.reset(options={"reset_mask": np.array([True, True])})
    envs.step(_actions(2))


def test_learned_termination_ends_episodes_in_single_and_vector_envs(terminating_rollout):
    env = AstraEnv(rollout=terminating_rollout, frame_bank="synthetic")
    env.reset(seed=0)
    _, _, terminated, truncated, info = env.step(ACTION)
    assert terminated and not truncated and info["termination_prob"] > 0.99
    envs = AstraVectorEnv(2, rollout=terminating_rollout, frame_bank="synthetic")
    envs.reset(seed=0)
    _, _, terminated, _, _ = envs.step(_actions(2))
    assert terminated.all()
    _, reward, terminated, _, info = envs.step(_actions(2))  # NEXT_STEP: the resets
    assert not terminated.any() and "frames" not in info and info["_bank_index"].all()


def test_partial_reset_leaves_the_other_rows_untouched():
    reference, envs = _vec(3), _vec(3)
    reference.reset(seed=10)
    envs.reset(seed=10)
    for env in (reference, envs):
        env.step(_actions(3))
    obs, info = envs.reset(seed=50, options={"reset_mask": np.array([False, True, False])})
    assert info["_bank_index"].tolist() == [False, True, False]
    solo = AstraEnv(checkpoint="debug", frame_bank="synthetic", device="cpu")
    assert np.array_equal(obs[1], solo.reset(seed=51)[0])  # row i gets seed + i
    expected, *_ = reference.step(_actions(3))
    got, *_ = envs.step(_actions(3))
    assert np.array_equal(got[[0, 2]], expected[[0, 2]])
    assert np.array_equal(got[1], solo.step(ACTION)[0])


def test_user_frames_start_every_reset_row():
    clip = np.random.default_rng(0).integers(0, 256, (3, 64, 64, 3), dtype=np.uint8)
    envs = _vec(2)
    obs, info = envs.reset(seed=0, options={"frames": clip})
    assert np.array_equal(obs, np.stack([clip[-1], clip[-1]])) and (info["bank_index"] == -1).all()
    clips = np.stack([clip, clip[::-1]])
    obs, _ = envs.reset(seed=0, options={"frames": clips})
    assert np.array_equal(obs[1], clip[0])
    obs, *_ = envs.step(_actions(2))
    assert obs.shape == (2, 64, 64, 3)


def test_rows_out_of_step_reset_and_step_in_the_same_call():
    """Row 0 autoresets while row 1 keeps stepping; row 1 still follows its single-env twin."""
    envs = _vec(2, max_episode_steps=3)
    envs.reset(seed=0)
    envs.step(_actions(2))
    envs.reset(seed=[None, 7], options={"reset_mask": np.array([False, True])})
    twin = AstraEnv(checkpoint="debug", frame_bank="synthetic", device="cpu")
    twin.reset(seed=7)
    ends = []
    for _ in range(3):
        obs, reward, terminated, truncated, info = envs.step(_actions(2))
        ends.append(truncated.tolist())
        twin_obs, twin_reward, *_ = twin.step(ACTION)
        assert np.array_equal(obs[1], twin_obs) and reward[1] == twin_reward
    assert ends == [[False, False], [True, False], [False, True]]
    assert info["_frames"].tolist() == [False, True] and info["_bank_index"].tolist() == [True, False]


def test_the_uncertainty_penalty_subtracts_the_models_disagreement_and_leaves_the_frames_alone():
    plain, penalised = _vec(3), _vec(3, uncertainty_penalty=0.5)
    plain.reset(seed=4)
    penalised.reset(seed=4)
    firsts = []
    for _ in range(2):
        obs_a, reward_a, _, _, info_a = plain.step(_actions(3))
        obs_b, reward_b, _, _, info_b = penalised.step(_actions(3))
        firsts.append((reward_b[0], info_b["model_spread"][0]))
        np.testing.assert_array_equal(obs_a, obs_b)
        assert "model_spread" not in info_a and info_b["_model_spread"].all()
        assert (info_b["model_spread"] > 0).all()
        np.testing.assert_allclose(reward_b, reward_a - 0.5 * info_b["model_spread"], rtol=0, atol=1e-12)
    single = AstraEnv(checkpoint="debug", frame_bank="synthetic", device="cpu", uncertainty_penalty=0.5)
    single.reset(seed=4)  # row 0 of the vector env
    for reward_row, spread_row in firsts:
        _, reward, _, _, info = single.step(ACTION)
        assert info["model_spread"] == pytest.approx(spread_row) and reward == pytest.approx(reward_row)


@pytest.mark.parametrize("penalty", [-1.0, float("nan"), float("inf")])
def test_a_bad_uncertainty_penalty_is_named(penalty):
    with pytest.raises(ValueError, match="uncertainty_penalty=.* must be a finite number >= 0"):
        _vec(1, uncertainty_penalty=penalty)


def test_the_rest_baseline_subtracts_what_the_do_nothing_command_earns_on_the_same_noise():
    moves = np.array([[0.5, -0.3, 0.2, 1.0], [0.0, 0.0, 0.0, -0.4], [0.1, 0.9, -1.0, 0.3]], np.float32)
    rests = moves * np.array([0, 0, 0, 1], np.float32)  # the arm kept in place, the gripper command kept
    plain, based = (_vec(3, scenario="manipulation", rest_baseline=flag) for flag in (False, True))
    for envs in (plain, based):
        envs.reset(seed=2)
    engine = plain.core.engine
    rows = action_rows("manipulation", rests.astype(np.float64), engine.action_dim)[:, None]  # [3, F=1, d]
    for _ in range(2):
        before = plain._state
        obs_a, reward_a, *_ = plain.step(moves)
        obs_b, reward_b, *_ = based.step(moves)
        np.testing.assert_array_equal(obs_a, obs_b)  # the frames are the agent's step
        rest_reward = engine.score(engine.step(before, rows)[0], rows)[0].double().numpy()
        np.testing.assert_allclose(reward_b, reward_a - rest_reward, rtol=0, atol=1e-6)
        assert reward_b[1] == 0.0 and reward_a[1] != 0.0  # a still arm earns exactly nothing


def test_the_rest_baseline_is_refused_where_doing_nothing_moves_the_scene():
    with pytest.raises(ValueError, match="drive.* has none, use rest_baseline=False"):
        _vec(1, rest_baseline=True)
