"""agent_diagnosis: the same agent in the real simulator, replayed open loop, and closed loop inside."""

import json

import gymnasium as gym
import numpy as np
import pytest

from benchmarks import agent_diagnosis
from benchmarks.action_following import make_start


class ConstantAgent:
    """SB3's ``predict`` interface, always the same action."""

    def __init__(self, action):
        self.action = np.asarray(action, np.float32)

    def predict(self, obs, deterministic=True):
        assert obs.shape == (64, 64, 3) and obs.dtype == np.uint8
        return self.action.copy(), None


def test_a_constant_agent_has_no_policy_gap_and_the_same_run_open_and_closed_loop():
    env = gym.make("Astra-Debug-v0", checkpoint="debug", max_episode_steps=10)
    start = make_start("drive", 20000, "reset", context=env.unwrapped.core.bank.context_length, warm=0)
    agent = ConstantAgent([0.3, 0.5, 0.0])
    task = agent_diagnosis.get_task("drive")
    run = agent_diagnosis.run_start(env, agent, "drive", start, steps=3, task=task, seed=0)
    assert run["policy_gap"] == 0.0  # the same action on real and on imagined frames
    assert run["open_loop_return"] == pytest.approx(run["imagined_return"])  # same actions, same seed
    assert np.allclose(run["real_actions"], agent.action) and run["psnr"].shape == (3,)
    assert run["real_return"] != 0.0  # CarRacing pays -0.1 per frame at least
    assert run["sheet"].shape == (3 * 64, agent_diagnosis.SHEET_STEPS * 64, 3)


def test_spread_compares_the_real_actions_of_different_starts():
    steps = np.zeros((2, 1))
    runs = [
        {"real_return": r, "reward_model_on_real_return": 0.0, "open_loop_return": 0.0, "imagined_return": 1.0,
         "policy_gap": 0.5, "psnr": np.full(2, 20.0), "real_actions": steps + a, "imagined_actions": steps}
        for r, a in ((1.0, 0.0), (3.0, 1.0))
    ]  # fmt: skip
    row = agent_diagnosis.summarise("reset", runs, steps=2)
    assert row["action_spread"] == 1.0 and row["policy_gap"] == 0.5 and row["real_return"] == 2.0
    assert row["real_mean_action"] == [0.5] and row["psnr_1"] == row["psnr_2"] == 20.0


def test_reach_aim_is_one_toward_the_block_minus_one_away_and_none_without_poses():
    ee = np.zeros((4, 3))
    block = np.tile([0.1, 0.1, 0.0], (4, 1))
    block[3] = 0.0  # the last state is at the block: its step would not count (there is no action on it)
    poses = {"ee_pos": ee, "object_pos": block}
    toward = np.array([[1.0, 1.0, 0.0, 0.0], [0.5, 0.5, 1.0, 0.0], [2.0, 2.0, 0.0, 1.0]])
    assert agent_diagnosis.reach_aim(poses, toward) == pytest.approx(1.0)
    assert agent_diagnosis.reach_aim(poses, -toward) == pytest.approx(-1.0)
    sideways = np.array([[1.0, -1.0, 0.0, 0.0]] * 3)
    assert agent_diagnosis.reach_aim(poses, sideways) == pytest.approx(0.0)
    at_block = {"ee_pos": block, "object_pos": block}  # nothing left to reach: no step counts
    assert agent_diagnosis.reach_aim(at_block, toward) is None
    assert agent_diagnosis.reach_aim({"car_pos": ee}, toward) is None  # not FetchPush's poses


def test_cli_writes_json_and_a_contact_sheet(tmp_path):
    from stable_baselines3 import PPO

    env = gym.make("Astra-Debug-v0", checkpoint="debug", max_episode_steps=5)
    PPO("CnnPolicy", env, n_steps=8, batch_size=8, seed=0, device="cpu").save(tmp_path / "agent.zip")
    out = tmp_path / "diag.json"
    agent_diagnosis.main(["--agent", str(tmp_path / "agent.zip"), "--env", "Astra-Debug-v0", "--checkpoint", "debug",
                          "--starts", "2", "--steps", "2", "--out", str(out)])  # fmt: skip
    (row,) = json.loads(out.read_text())["results"]
    assert row["kind"] == "reset" and len(row["real_returns"]) == 2 and row["action_spread"] >= 0.0
    assert row["reach_aim"] is None  # CarRacing has no block to reach
    assert out.with_suffix(".png").read_bytes()[:4] == b"\x89PNG"


def test_start_env_passes_the_rest_baseline_on():
    args = agent_diagnosis.Args(
        agent="unused.zip", env="Astra-Manipulation-v0", checkpoint="debug", rest_baseline=True
    )
    _, env, _, _ = agent_diagnosis.start_env(args)
    try:
        assert env.unwrapped.core.rest_baseline
    finally:
        env.close()
