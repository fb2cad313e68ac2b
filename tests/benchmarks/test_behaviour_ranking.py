"""behaviour_ranking: scripted behaviours from the same real start, in the real simulator and replayed inside."""

import json

import gymnasium as gym
import numpy as np
import pytest

from astra_gym.data.tasks import get_task
from benchmarks import behaviour_ranking
from benchmarks.action_following import make_start


def test_behaviours_act_in_the_real_simulator_and_are_replayed_inside():
    env = gym.make("Astra-Debug-v0", checkpoint="debug", max_episode_steps=10)
    start = make_start("drive", 20000, "reset", context=env.unwrapped.core.bank.context_length, warm=0)
    task = get_task("drive")
    run = behaviour_ranking.run_start(env, "drive", start, 3, task, behaviour_ranking.BEHAVIOURS, seed=0)
    assert set(run) == set(behaviour_ranking.BEHAVIOURS)
    assert np.all(run["still"]["actions"] == 0) and run["still"]["actions"].shape == (3, 3)
    assert np.abs(run["random"]["actions"]).sum() > 0 and np.abs(run["expert"]["actions"]).sum() > 0
    for name in run:
        assert all(np.isfinite(run[name][k]) for k in behaviour_ranking.RETURNS)
        assert all(run[name][k] >= 0 for k in behaviour_ranking.CHANGES)
    assert run["random"]["change_real"] > 0  # a car that steers and speeds changes the view
    assert run["still"]["real"] < 0  # CarRacing pays -0.1 per frame and a standing car earns no tile


def _runs(imagined: list[float]) -> list[dict]:
    real = {"expert": 2.0, "still": 0.0, "random": -3.0}
    pairs = zip(real, imagined, strict=True)
    return [{b: {"real": real[b], "reward_model_on_real": real[b], "imagined": i} for b, i in pairs}]


def test_summary_scores_agreement_and_margins_over_standing_still():
    row = behaviour_ranking.summarise("reset", _runs([1.0, 0.0, -1.0]), behaviour_ranking.BEHAVIOURS, 50)
    assert row["rank_agreement_imagined"] == pytest.approx(1.0) and row["rank_agreement_reward_model_on_real"] == 1.0
    assert row["expert_minus_still_real"] == 2.0 and row["random_minus_still_imagined"] == -1.0
    flipped = behaviour_ranking.summarise("reset", _runs([-1.0, -2.0, 0.5]), behaviour_ranking.BEHAVIOURS, 50)
    assert flipped["rank_agreement_imagined"] == pytest.approx(-0.5)  # random imagined best: the wrong lesson
    assert flipped["random_minus_still_imagined"] == 2.5


def test_cli_writes_json_and_rejects_unknown_behaviours(tmp_path):
    out = tmp_path / "rank.json"
    behaviour_ranking.main(["--env", "Astra-Debug-v0", "--checkpoint", "debug", "--starts", "1", "--steps", "2",
                            "--behaviours", "still", "random", "--out", str(out)])  # fmt: skip
    (row,) = json.loads(out.read_text())["results"]
    assert row["kind"] == "reset" and set(row["per_start"][0]) == {"still", "random"}
    assert "random_minus_still_real" in row
    with pytest.raises(SystemExit, match="choose two or more"):
        behaviour_ranking.main(["--env", "Astra-Debug-v0", "--behaviours", "dance", "--out", str(tmp_path / "x.json")])


def test_sampler_overrides_reach_the_env():
    args = behaviour_ranking.Args(env="Astra-Debug-v0", checkpoint="debug", denoise_steps=3, guidance=2.0)
    sampler = behaviour_ranking.sampler_overrides(args.denoise_steps, args.guidance)
    _, env, _, _ = behaviour_ranking.start_env(args, sampler)
    config = env.unwrapped.core.engine.config
    assert (config.num_denoise_steps, config.guidance_scale) == (3, 2.0)
    _, plain, _, _ = behaviour_ranking.start_env(behaviour_ranking.Args(env="Astra-Debug-v0", checkpoint="debug"))
    assert plain.unwrapped.core.engine.config.num_denoise_steps != 3  # the bundle's own sampler


def test_a_pose_reader_reports_what_moved_real_and_imagined():
    """The shipped Manipulation model reads ``progress`` through a pose reader: the report says how far each
    pose moved in the simulator, as read on the real frames and on the imagined ones, and the reader's error."""
    pytest.importorskip("gymnasium_robotics")
    env = gym.make("Astra-Manipulation-v0", task="progress", max_episode_steps=10, device="cpu")
    start = make_start("manipulation", 20000, "reset", context=env.unwrapped.core.bank.context_length, warm=0,
                       **env.unwrapped.core.sim_config)  # fmt: skip
    task = get_task("manipulation", "progress")
    runs = [behaviour_ranking.run_start(env, "manipulation", start, 3, task, ("still", "random"), seed=0)]
    keys = get_task("manipulation", "reach-push").pose_keys
    for name in ("still", "random"):
        poses = runs[0][name]["poses"]
        assert set(poses) == {f"move_{k}_{s}" for k in keys for s in behaviour_ranking.POSE_SOURCES} | {
            f"error_{k}_{s}" for k in keys for s in behaviour_ranking.POSE_SOURCES[1:]
        }
        assert all(np.isfinite(v) and v >= 0 for v in poses.values())
        assert poses["error_goal_pos_read_real"] > 0  # a learned reader is never exact
    assert runs[0]["still"]["poses"]["move_object_pos_real"] < 1e-3  # nothing touches the block
    assert runs[0]["still"]["change_real"] < 0.5 < runs[0]["random"]["change_real"]  # a still arm changes no pixel
    assert runs[0]["still"]["change_imagined"] > 0  # the model's frames never repeat exactly
    assert runs[0]["random"]["poses"]["move_ee_pos_real"] > runs[0]["still"]["poses"]["move_ee_pos_real"]
    row = behaviour_ranking.summarise("reset", runs, ("still", "random"), 3)
    assert row["still_move_goal_pos_read_imagined"] == runs[0]["still"]["poses"]["move_goal_pos_read_imagined"]
    table = behaviour_ranking.markdown([row], ("still", "random"))
    assert "| reset | random | object_pos |" in table
    assert f"| {row['still_change_real']:.2f} / {row['still_change_imagined']:.2f} |" in table
    env.close()


def test_the_pose_reader_reads_the_frames_as_the_env_rewards_them():
    """``read_poses`` gives the reader the same (normalised) action rows and start frame as the env's engine: the
    ``reach-push`` change it reads on the env's own frames is the env's ``reach-push`` reward with the actions, and
    its ``progress`` reward with zero rows (a potential is a function of the frames), step by step."""
    from benchmarks.agent_diagnosis import pose_reader, read_poses

    env = gym.make("Astra-Manipulation-v0", task="progress", max_episode_steps=10, device="cpu")
    direct = gym.make("Astra-Manipulation-v0", task="reach-push", max_episode_steps=10, device="cpu")
    reader, _ = pose_reader(env, "manipulation")
    obs, _ = env.reset(seed=3)
    direct.reset(seed=3)
    start = env.unwrapped._state.start_frames[0, -1].cpu().numpy()  # the VAE's reconstruction of the start
    actions = np.array([[0.9, -0.5, 0.2, 0.0], [-0.7, 0.8, 0.0, 1.0], [0.0, 0.0, 0.0, 0.0]], np.float32)
    frames, rewards, distances = [start], [], []
    for action in actions:
        obs, reward, *_ = env.step(action)
        frames.append(obs)
        rewards.append(reward)
        distances.append(direct.step(action)[1])
    frames = np.stack(frames)
    still = np.zeros_like(actions)
    after, before = (read_poses(env, "manipulation", reader, f, still, start) for f in (frames[1:], frames[:-1]))

    def potential(poses):
        return -(
            np.linalg.norm(poses[:, :3] - poses[:, 3:6], axis=1) + np.linalg.norm(poses[:, 3:6] - poses[:, 6:], axis=1)
        )

    np.testing.assert_allclose(10.0 * (potential(after) - potential(before)), rewards, atol=1e-4)
    read = potential(read_poses(direct, "manipulation", reader, frames[1:], actions, start))
    np.testing.assert_allclose(read, distances, atol=1e-4)  # the same frames: both envs imagine alike from one seed
    env.close()
    direct.close()
