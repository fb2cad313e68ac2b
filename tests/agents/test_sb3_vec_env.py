"""AstraSB3VecEnv behaves exactly like SB3's DummyVecEnv over single AstraEnvs, and PPO trains on it."""

from __future__ import annotations

import gymnasium as gym
import numpy as np
import pytest
import torch
from gymnasium.vector import AutoresetMode, SyncVectorEnv
from stable_baselines3 import PPO
from stable_baselines3.common.vec_env import DummyVecEnv, VecMonitor

from astra_gym.agents.sb3_vec_env import AstraSB3VecEnv

NUM_ENVS = 2
MAX_STEPS = 3  # short episodes: truncation (and autoreset) happens twice in the run
STEPS = 7


def _pair(sync: bool = False, **kwargs):
    """(adapter over the batched env, DummyVecEnv over single envs) with identical settings.

    ``sync=True`` adapts Gymnasium's ``SyncVectorEnv`` of single envs instead of ``AstraVectorEnv``.
    """
    kwargs = {"num_denoise_steps": 1, "max_episode_steps": MAX_STEPS, **kwargs}
    thunks = [lambda: gym.make("Astra-Debug-v0", **kwargs) for _ in range(NUM_ENVS)]
    if sync:
        adapter = AstraSB3VecEnv(SyncVectorEnv(thunks, autoreset_mode=AutoresetMode.SAME_STEP))
    else:
        adapter = AstraSB3VecEnv.make("Astra-Debug-v0", NUM_ENVS, **kwargs)
    return adapter, DummyVecEnv(thunks)


def _assert_infos_equal(ours: list[dict], theirs: list[dict], step: int) -> None:
    for row, (mine, ref) in enumerate(zip(ours, theirs, strict=True)):
        assert mine.keys() == ref.keys(), (step, row)
        for key, value in ref.items():
            assert np.array_equal(mine[key], value), (step, row, key)


def _run_both(adapter, dummy, seed: int = 5) -> list[np.ndarray]:
    """Steps both with the same seeded actions; asserts equality at every step; returns the dones."""
    adapter.seed(seed)
    dummy.seed(seed)
    assert np.array_equal(adapter.reset(), dummy.reset())
    for mine, ref in zip(adapter.reset_infos, dummy.reset_infos, strict=True):
        assert (mine["bank_index"], mine["sim_seed"]) == (ref["bank_index"], ref["sim_seed"])
    space = adapter.action_space
    space.seed(seed)
    dones = []
    for step in range(STEPS):
        actions = np.stack([space.sample() for _ in range(NUM_ENVS)])
        obs, rewards, done, infos = adapter.step(actions)
        ref_obs, ref_rewards, ref_done, ref_infos = dummy.step(actions)
        assert np.array_equal(obs, ref_obs), step
        assert rewards.dtype == ref_rewards.dtype and np.array_equal(rewards, ref_rewards), step
        assert np.array_equal(done, ref_done), step
        _assert_infos_equal(infos, ref_infos, step)
        if done.any():
            assert [i["bank_index"] for i in adapter.reset_infos] == [i["bank_index"] for i in dummy.reset_infos]
        dones.append(done)
    return dones


@pytest.mark.parametrize("sync", [False, True], ids=["astra_vector_env", "sync_vector_env"])
def test_matches_dummy_vec_env_with_truncation(sync):
    adapter, dummy = _pair(sync)
    dones = _run_both(adapter, dummy)
    # Episodes end after steps 3 and 6 (every row): terminal_observation and TimeLimit.truncated were compared.
    assert [bool(d.all()) for d in dones] == [False, False, True, False, False, True, False]


def test_matches_dummy_vec_env_with_termination(terminating_rollout):
    adapter, dummy = _pair(rollout=terminating_rollout)
    dones = _run_both(adapter, dummy)
    assert all(d.all() for d in dones)  # terminated every step: TimeLimit.truncated must be False


def test_terminal_info_conventions():
    adapter, _ = _pair()
    adapter.seed(0)
    adapter.reset()
    for _ in range(MAX_STEPS - 1):
        adapter.step(np.zeros((NUM_ENVS, 3), np.float32))
    obs, _, done, infos = adapter.step(np.zeros((NUM_ENVS, 3), np.float32))
    assert done.all()
    for row, info in enumerate(infos):
        assert info["TimeLimit.truncated"] is True
        assert info["terminal_observation"].shape == (64, 64, 3)
        assert not np.array_equal(info["terminal_observation"], obs[row])  # obs is the new episode's first
        assert np.array_equal(info["terminal_observation"], info["frames"][-1])


def test_rejects_next_step_autoreset():
    venv = gym.make_vec("Astra-Debug-v0", num_envs=2, num_denoise_steps=1)
    with pytest.raises(ValueError, match="SameStep"):
        AstraSB3VecEnv(venv)


def test_differing_reset_options_raise():
    adapter, _ = _pair()
    frames = np.zeros((2, 64, 64, 3), np.uint8)
    adapter.set_options([{"frames": frames}, {"frames": frames + 1}])
    with pytest.raises(ValueError, match="same reset options"):
        adapter.reset()
    adapter.set_options({"frames": frames})
    assert np.array_equal(adapter.reset(), np.zeros((NUM_ENVS, 64, 64, 3), np.uint8))


def test_ppo_cnn_policy_learns_inside():
    envs = VecMonitor(AstraSB3VecEnv.make("Astra-Debug-v0", NUM_ENVS, num_denoise_steps=1, max_episode_steps=8))
    model = PPO("CnnPolicy", envs, n_steps=32, batch_size=32, n_epochs=2, seed=0, device="cpu")
    before = [p.detach().clone() for p in model.policy.parameters()]
    model.learn(256)
    assert model.num_timesteps == 256
    assert len(model.ep_info_buffer) == 256 // 8  # every imagined episode was monitored
    assert any(not torch.equal(a, b.detach()) for a, b in zip(before, model.policy.parameters(), strict=True))
    action, _ = model.predict(envs.reset(), deterministic=True)
    assert action.shape == (NUM_ENVS, 3) and envs.action_space.contains(action[0].astype(np.float32))
