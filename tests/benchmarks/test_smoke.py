"""Every benchmark script runs end to end at tiny size and writes valid JSON."""

import json

import numpy as np
import pytest

from benchmarks import env_throughput, model_speed


def test_model_speed_runs(tmp_path):
    out = tmp_path / "model_speed.json"
    rows = model_speed.main(["--presets", "debug", "--batch-sizes", "1", "2", "--repeats", "1", "--out", str(out)])
    payload = json.loads(out.read_text())
    assert payload["benchmark"] == "model_speed"
    assert [r["batch"] for r in payload["results"]] == [1, 2] == [r["batch"] for r in rows]
    for row in rows:
        assert row["forward_ms"] > 0 and row["afg_batched_ms"] > 0
        # 20 history latents at 8x8 (patch 2): 4x -> 4 tokens, 2x -> 4 tokens, 1x -> 2 x 16; target 16.
        assert row["tokens_per_sample"] == 4 + 4 + 32 + 16


def test_env_throughput_runs(tmp_path):
    out = tmp_path / "env.json"
    result = env_throughput.main(
        ["--env", "Astra-Debug-v0", "--num-envs", "1", "2", "--denoise-steps", "1", "--steps", "2", "--warmup", "1",
         "--memory-steps", "3", "--out", str(out)]
    )  # fmt: skip
    payload = json.loads(out.read_text())
    assert payload["benchmark"] == "env_throughput"
    rates = [r["env_frames_per_s"] for r in result["throughput"]]
    assert len(rates) == 2 and all(rate > 0 for rate in rates)
    assert result["memory"]["probes"].keys() == {3}


def test_env_throughput_compares_checkpoints_with_their_own_samplers(tmp_path):
    result = env_throughput.main(
        ["--env", "Astra-Debug-v0", "--checkpoint", "debug", "debug", "--num-envs", "2", "--denoise-steps", "0", "3",
         "--steps", "1", "--warmup", "0", "--dtype", "bfloat16", "--batch-invariant", "true", "false",
         "--out", str(tmp_path / "env.json")]
    )  # fmt: skip
    rows = result["throughput"]
    assert [(r["checkpoint"], r["denoise_steps"]) for r in rows] == [("debug", 0), ("debug", 3)] * 4
    assert [r["batch_invariant"] for r in rows] == [True, True, False, False] * 2
    assert rows[1]["effective_denoise_steps"] == 3 and rows[0]["effective_denoise_steps"] >= 1
    assert all(r["guidance_scale"] is not None and r["dtype"] == "bfloat16" for r in rows)


def test_action_following_runs_against_the_real_simulator(tmp_path):
    from benchmarks import action_following

    out = tmp_path / "af.json"
    action_following.main(
        ["--env", "Astra-Debug-v0", "--checkpoint", "debug", "--starts", "1", "--kinds", "reset", "mid",
         "--horizon", "2", "--long", "2", "--warm", "3", "--noise-draws", "2", "--out", str(out)]
    )  # fmt: skip
    rows = json.loads(out.read_text())["results"]
    assert [r["kind"] for r in rows] == ["reset", "mid"]
    for row in rows:
        assert 0.0 <= row["identification"] <= 1.0 and row["chance"] == 0.25
        draws = row["identification_over_draws"]
        assert draws["draws"] == 2 and draws["per_draw"][0] == row["identification"]  # the first is the reported one
        assert draws["mean"] == pytest.approx(np.mean(draws["per_draw"]))
        assert set(row["real_return"]) == {"steer left", "steer right", "full gas", "brake"}
        assert row["car_real_all_steps"] == 1.0  # real CarRacing frames always show the car
        per_action = row["car_all_steps_per_action"]
        assert set(per_action) == set(row["real_return"])
        assert np.mean(list(per_action.values())) == pytest.approx(row["car_all_steps"])
        assert np.isfinite(row["teacher_forced_psnr_1_to_h"]) and np.isfinite(row["reward_mae_real_frames"])


def test_action_following_scores_the_real_branches_with_a_task():
    from astra_gym.data.tasks import get_task
    from benchmarks.action_following import make_start, real_branches

    start = make_start("manipulation", 20000, "reset", context=2, warm=0)
    _, native = real_branches("manipulation", start, 3)
    frames, progress = real_branches("manipulation", start, 3, get_task("manipulation", "progress"))
    assert frames.shape[:2] == (4, 3) and set(np.unique(native)) <= {-1.0, 0.0}  # FetchPush's own reward
    assert np.all(progress != native) and np.any(progress > 0) and np.any(progress < 0)  # +x/-x close/open the gap


def test_action_following_runs_without_a_reward_model():
    import gymnasium as gym

    from benchmarks.action_following import make_start, run_start, summarise

    envs = gym.make_vec("Astra-Debug-v0", num_envs=4, checkpoint="debug", max_episode_steps=3)
    envs.unwrapped.core.engine.reward_model = None  # a bundle written without --reward
    start = make_start("drive", 20000, "reset", context=envs.unwrapped.core.bank.context_length, warm=0)
    run = run_start(envs, "drive", start, long=2, horizon=2, seed=0)
    assert np.isnan(run["reward_mae_real_frames"]) and np.isnan(run["reward_mae_imagined_frames"])
    row = summarise("drive", "reset", [run], horizon=2, long=2)
    assert 0.0 <= row["identification"] <= 1.0 and row["return_rank_rho_reward_model_on_real"] is None


def test_action_following_starts_replay_with_their_simulator_config():
    from benchmarks.action_following import ACTIONS, make_start, real_branches, scene_change

    turn = list(ACTIONS["explore"]).index("turn left")
    change = {}
    for skip in (2, 4):  # ViZDoom tics per step (the scenario's default is 4)
        start = make_start("explore", 20000, "reset", context=2, warm=0, frame_skip=skip)
        assert start.sim_config == {"frame_skip": skip}
        frames, _ = real_branches("explore", start, 1)  # replays with frame_skip, else the start frame would differ
        change[skip] = scene_change(start.frames[-1], frames[:, 0])[turn]
    assert 0 < change[2] < 0.8 * change[4]  # half the tics turn the view less
    start = make_start("manipulation", 20000, "reset", context=2, warm=0, camera="front")
    frames, _ = real_branches("manipulation", start, 1)
    stock = make_start("manipulation", 20000, "reset", context=2, warm=0)
    assert np.abs(start.frames.astype(int) - stock.frames).mean() > 10  # the same state, seen from the front
    after = frames[:, 0].astype(int)  # one step of each action, replayed from the front:
    assert np.abs(after - start.frames[-1]).mean() < 0.5 * np.abs(after - stock.frames[-1]).mean()


def test_action_identification_counts_the_closest_real_branch():
    from benchmarks import action_following
    from benchmarks.action_following import closest_branch, scene_change, summarise

    real = np.stack([np.full((4, 4, 3), v, np.uint8) for v in (0, 80, 160, 240)])
    imagined = real[[0, 2, 1, 3]].copy()  # branches 1 and 2 swapped
    assert closest_branch(imagined, real).tolist() == [0, 2, 1, 3]
    zeros = np.zeros((4, 1))
    closest = closest_branch(imagined, real)
    run = {"closest": closest, "closest_draws": np.stack([closest, np.arange(4)]), "psnr": zeros, "ssim": zeros,
           "real_return": zeros[:, 0],
           "imagined_return": zeros[:, 0], "reward_model_real_return": zeros[:, 0], "reward_mae_real_frames": 0.0,
           "reward_mae_imagined_frames": 0.0, "teacher_forced_psnr": zeros,
           "change_real": scene_change(real[0], real), "change_imagined": scene_change(real[0], imagined)}  # fmt: skip
    row = summarise("manipulation", "reset", [run], horizon=1, long=1)
    assert row["identification"] == 0.5 and row["identification_per_action"]["-x"] == 0.0
    assert row["confusion"]["-x"] == {"+x": 0.0, "-x": 0.0, "+y": 1.0, "-y": 0.0}
    assert row["scene_change_at_h"]["-x"] == {"real": 80.0, "imagined": 160.0}  # swapped: -x moved too far
    draws = row["identification_over_draws"]  # a second noise draw identified every action
    assert draws == {"draws": 2, "mean": 0.75, "per_action": {"+x": 1.0, "-x": 0.5, "+y": 0.5, "-y": 1.0},
                     "per_draw": [0.5, 1.0]}  # fmt: skip
    with pytest.raises(SystemExit, match="--noise-draws 0"):
        action_following.main(["--env", "Astra-Debug-v0", "--noise-draws", "0"])


def test_transfer_and_vae_details_run(tmp_path):
    from astra_gym.data.generate import GenerateConfig, generate
    from benchmarks import transfer, vae_details

    rows = transfer.main(["--env", "Astra-Drive-v0", "--episodes", "1", "--max-steps", "5", "--out",
                          str(tmp_path / "t.json"), "--plot", str(tmp_path / "t.png")])  # fmt: skip
    assert (tmp_path / "t.png").read_bytes()[:4] == b"\x89PNG"
    assert [r["policy"] for r in rows] == ["random", "constant"] and all(r["lengths"] == [5] for r in rows)
    generate(GenerateConfig("drive", episodes=1, steps=4, out=str(tmp_path / "eps")))
    rows = vae_details.main(["--vae", "drive-v5", "--episodes", f"drive={tmp_path / 'eps'}", "--frames", "5",
                             "--out", str(tmp_path / "v.json")])  # fmt: skip
    assert rows[0]["car_real"] == 1.0 and rows[0]["car_kept"] == 1.0 and rows[0]["psnr"] > 25


def test_planning_signal_replays_candidates_in_the_real_simulator(tmp_path):
    from benchmarks import planning_signal

    out = tmp_path / "ps.json"
    rows = planning_signal.main(
        ["--env", "Astra-Debug-v0", "--checkpoint", "debug", "--starts", "1", "--kinds", "reset", "--candidates",
         "3", "--horizon", "2", "--priors", "centre", "--out", str(out)]
    )  # fmt: skip
    assert [(r["kind"], r["prior"], r["h"]) for r in rows] == [("reset", "centre", 1), ("reset", "centre", 2)]
    (run,) = json.loads(out.read_text())["results"][-1]["runs"]
    real = np.asarray(run["real"])
    assert real.shape == (3, 2) and np.isfinite(np.asarray(run["imagined"])).all()
    # CarRacing's first steps from a reset: no tile yet, -0.1 per physics step (2 per env step) whatever the action.
    assert np.allclose(real, -0.2) and rows[1]["real_mean"] == rows[1]["real_max"] == rows[1]["real_of_best"]


def test_planning_signal_scores_an_agent_task_on_both_sides(tmp_path):
    """``--task progress``: the bundle's progress reader imagines, the real rewards are relabelled from the poses
    (FetchPush's own reward is -1 on every step until the block reaches the goal)."""
    from benchmarks import planning_signal
    from benchmarks.action_following import make_start

    out = tmp_path / "ps.json"
    planning_signal.main(
        ["--env", "Astra-Manipulation-v0", "--task", "progress", "--starts", "1", "--kinds", "reset",
         "--candidates", "3", "--horizon", "4", "--priors", "centre", "--seed", "3", "--out", str(out)]
    )  # fmt: skip
    payload = json.loads(out.read_text())
    (run,) = payload["results"][-1]["runs"]
    real = np.asarray(run["real"])
    assert payload["config"]["task"] == "progress" and real.shape == (3, 4) and np.isfinite(run["imagined"]).all()
    assert np.abs(real).max() < 0.5 and len(np.unique(real.round(6))) > 3  # the change of a distance, per step
    read = np.asarray(run["read"])  # the same reader on the replayed real frames: finite, and not the imagined ones
    assert read.shape == (3, 4) and np.isfinite(read).all() and not np.allclose(read, run["imagined"])
    assert {"read_mean", "read_spearman", "real_of_read_best"} <= set(payload["results"][0])
    start = make_start("manipulation", run["seed"], "reset", 4, 60)
    actions = np.random.default_rng(0).uniform(-1, 1, (2, 4, 4))
    assert np.array_equal(planning_signal.real_rewards("manipulation", start, actions), -np.ones((2, 4)))


def test_planning_signal_scores_the_imagined_best_by_its_real_return():
    from benchmarks.planning_signal import summarise

    imagined = [[0.0, 0.0], [5.0, 0.0], [1.0, 1.0]]  # returns 0, 5, 2: candidate 1 looks best
    real = [[3.0, 3.0], [1.0, 0.0], [2.0, 0.0]]  # returns 6, 1, 2: candidate 0 is best
    runs = [{"kind": "mid", "prior": "data", "imagined": imagined, "real": real}]
    (row,) = summarise(runs, (2,))
    assert row["real_of_best"] == 1.0 and row["real_max"] == 6.0 and row["real_mean"] == 3.0
    assert row["imagined_mean"] == np.mean([0, 5, 2]) and row["spearman"] == pytest.approx(-1.0)
    assert "read_mean" not in row
    read = [[2.0, 2.0], [0.0, 0.0], [1.0, 0.5]]  # the reader on the real frames: returns 4, 0, 1.5 rank as the real do
    (row,) = summarise([{**runs[0], "read": read}], (2,))
    assert row["read_spearman"] == pytest.approx(1.0) and row["real_of_read_best"] == 6.0
    assert row["read_mean"] == pytest.approx(5.5 / 3) and row["real_of_best"] == 1.0


def test_planning_signal_penalises_the_imagined_best_by_the_models_spread(tmp_path):
    from benchmarks.planning_signal import main as planning_signal_main
    from benchmarks.planning_signal import summarise

    imagined = [[0.0, 0.0], [5.0, 0.0], [1.0, 1.0]]  # returns 0, 5, 2: candidate 1 looks best ...
    real = [[3.0, 3.0], [1.0, 0.0], [2.0, 0.0]]  # ... but candidate 0 is
    spread = [[0.1, 0.1], [2.0, 2.0], [0.5, 0.5]]  # summed 0.2, 4, 1: the model is unsure of candidate 1
    error = [[0.0, 10.0], [0.0, 300.0], [0.0, 90.0]]  # the frame error at h = 2 ranks as the spread does
    runs = [{"kind": "reset", "prior": "centre", "imagined": imagined, "real": real, "spread": spread,
             "frame_error": error}]  # fmt: skip
    (row,) = summarise(runs, (2,), (0.0, 1.0, 10.0))
    assert row["real_of_best_penalised"] == {"0.0": 1.0, "1.0": 1.0, "10.0": 6.0}  # λ 1: 5 - 4 ties 2 - 1 (first wins)
    assert row["spread_error_spearman"] == pytest.approx(1.0) and row["spread_mean"] == pytest.approx(5.2 / 3)
    assert row["spread_return_error_spearman"] == pytest.approx(-0.5)  # |imagined - real| 6, 4, 0 vs 0.2, 4, 1
    out = tmp_path / "ps.json"
    rows = planning_signal_main(
        ["--env", "Astra-Debug-v0", "--checkpoint", "debug", "--starts", "1", "--kinds", "reset", "--candidates",
         "3", "--horizon", "2", "--priors", "centre", "--penalties", "0", "2", "--out", str(out)]
    )  # fmt: skip
    (run,) = json.loads(out.read_text())["results"][-1]["runs"]
    assert np.asarray(run["spread"]).shape == (3, 2) and (np.asarray(run["spread"]) > 0).all()
    assert np.asarray(run["frame_error"]).shape == (3, 2)
    assert rows[1]["real_of_best_penalised"]["0.0"] == rows[1]["real_of_best"]


def test_reward_readers_compares_a_tasks_own_model_with_its_potentials_change(tmp_path):
    from astra_gym.data.episodes import save_episode
    from astra_gym.data.synthetic import manipulation_episode
    from astra_gym.data.tasks import get_task, relabel
    from astra_gym.rollout.bundle import debug_bundle
    from astra_gym.training.add_reward import add_reward_model
    from astra_gym.training.normalization import ActionNormalizer
    from astra_gym.world_model.reward_io import save_reward_model
    from benchmarks import reward_readers
    from tests.rollout.test_bundle import SCALE, _manipulation_bundle_with_a_task

    folder, _ = _manipulation_bundle_with_a_task(tmp_path)
    potential = save_reward_model(debug_bundle("manipulation", seed=5).reward_model, tmp_path / "reach-push",
                                  scenario="manipulation", feature="robot_command",
                                  normalizer=ActionNormalizer("robot_command", SCALE), task="reach-push")  # fmt: skip
    add_reward_model(folder, potential, weights_dtype="float32")
    episodes = [manipulation_episode(6, seed=s, size=64) for s in (0, 1)]
    for n, ep in enumerate(episodes):
        save_episode(ep, tmp_path / "eps" / f"episode_{n:06d}.hdf5")
    row = reward_readers.main(["--checkpoint", str(folder), "--episodes", str(tmp_path / "eps"),
                               "--out", str(tmp_path / "r.json")])  # fmt: skip
    task = get_task("manipulation", "progress")
    truth = [relabel(ep.poses, ep.rewards, task).sum() for ep in episodes]
    np.testing.assert_allclose(row["truth"]["returns"], truth, rtol=1e-5)
    assert set(row) == {"truth", "direct", "potential"} and row["truth"]["transitions"] == 12
    for name in ("direct", "potential"):
        assert np.isfinite(row[name]["step_mae"]) and len(row[name]["predicted_returns"]) == 2
    assert json.loads((tmp_path / "r.json").read_text())["benchmark"] == "reward_readers"
    # The same readers on the bundle's own rollouts: 2 pieces of 2 steps per episode, after 4 context frames.
    row = reward_readers.main(["--checkpoint", str(folder), "--episodes", str(tmp_path / "eps"), "--imagined-horizon",
                               "2", "--imagined-starts", "2", "--out", str(tmp_path / "r.json")])  # fmt: skip
    rewards = [relabel(ep.poses, ep.rewards, task) for ep in episodes]
    pieces = [r[lo : lo + 2].sum() for r in rewards for lo in (3, 4)]  # starts 0 and 1 -> steps 3-4 and 4-5
    np.testing.assert_allclose(row["imagined"]["truth"]["returns"], pieces, rtol=1e-5)
    assert set(row["imagined"]) == {"truth", "direct", "potential"} and row["imagined"]["truth"]["transitions"] == 8
    assert row["imagined"]["direct"]["step_mae"] != row["direct"]["step_mae"]  # other frames, other rewards
    truth = np.array([1.0, 2.0, 0.5, 3.0])
    perfect = reward_readers.summary(truth, truth, np.array([0, 0, 1, 1]))
    assert perfect["step_mae"] == 0 and perfect["step_corr"] == pytest.approx(1.0) and perfect["return_mae"] == 0
