"""The entry points run end to end at tiny size: training, MPC against a real simulator, the benchmark."""

from __future__ import annotations

import json

import numpy as np
import pytest

from astra_gym.agents import train_sb3
from astra_gym.agents.mpc import run_mpc
from benchmarks import agent_returns
from tests.agents.conftest import require_sim

TINY_PPO = "--num-envs 2 --n-steps 16 --batch-size 32 --n-epochs 1 --no-progress-bar".split()


def test_train_inside_writes_the_run_folder(tmp_path):
    summary = train_sb3.main(
        "--env Astra-Debug-v0 --total-timesteps 32 --imagined-horizon 5 --eval-freq 0 --eval-episodes 0 "
        "--save-freq 16 --run-name run".split()
        + ["--out", str(tmp_path), *TINY_PPO]
    )
    run = tmp_path / "run"
    assert summary["env_steps"] == 32 and summary["mode"] == "inside" and summary["final_eval"] is None
    assert (run / "final_model.zip").is_file() and (run / "progress.csv").is_file()
    assert sorted(p.name for p in (run / "checkpoints").iterdir()) == ["ppo_16_steps.zip", "ppo_32_steps.zip"]
    assert list(run.glob("events.out.tfevents.*"))  # TensorBoard
    assert (run / "learning_curve.png").read_bytes()[:4] == b"\x89PNG"
    assert json.loads((run / "args.json").read_text())["imagined_horizon"] == 5


def test_log_std_init_sets_the_gaussian_policy_spread(tmp_path):
    from stable_baselines3 import PPO

    train_sb3.main(
        "--env Astra-Debug-v0 --total-timesteps 32 --imagined-horizon 5 --eval-freq 0 --eval-episodes 0 "
        "--save-freq 0 --run-name run --log-std-init -0.5 --learning-rate 0".split()
        + ["--out", str(tmp_path), *TINY_PPO]
    )
    log_std = PPO.load(tmp_path / "run" / "final_model.zip", device="cpu").policy.log_std.detach()
    assert log_std.shape == (3,) and np.allclose(log_std.numpy(), -0.5)  # learning rate 0: the initial value


@pytest.mark.sims
def test_train_inside_evaluates_in_the_real_simulator(tmp_path):
    require_sim("drive")
    summary = train_sb3.main(
        "--env Astra-Drive-v0 --checkpoint debug --device cpu --total-timesteps 32 --imagined-horizon 5 "
        "--eval-freq 32 --eval-episodes 1 --eval-max-steps 4 --save-freq 0 --run-name run".split()
        + ["--out", str(tmp_path), *TINY_PPO]
    )
    assert summary["final_eval"]["lengths"] == [4] and summary["final_eval"]["seeds"] == [10_000]
    assert (tmp_path / "run" / "eval" / "evaluations.npz").is_file()  # the periodic EvalCallback ran


@pytest.mark.sims
@pytest.mark.parametrize("planner", ["cem", "mppi"])
def test_mpc_runs_against_car_racing(tmp_path, planner):
    require_sim("drive")
    out = tmp_path / "mpc.json"
    summary = run_mpc.main(
        "--env Astra-Drive-v0 --checkpoint debug --device cpu --max-steps 3 --candidates 4 --horizon 2 "
        "--iterations 1 --elites 2 --num-denoise-steps 1".split()
        + ["--planner", planner, "--out", str(out)]
    )
    assert summary["lengths"] == [3] and summary["imagined_steps"] == 3 * 4 * 2
    assert json.loads(out.read_text())["returns"] == summary["returns"]


@pytest.mark.sims
def test_mpc_values_the_horizon_with_a_critic_trained_inside(tmp_path):
    from stable_baselines3 import PPO

    from astra_gym.agents.mpc.value import SB3Value

    require_sim("drive")
    train_sb3.main(
        "--env Astra-Debug-v0 --total-timesteps 32 --imagined-horizon 5 --eval-freq 0 --eval-episodes 0 "
        "--save-freq 0 --run-name run".split()
        + ["--out", str(tmp_path), *TINY_PPO]
    )
    path = tmp_path / "run" / "final_model.zip"
    value = SB3Value(path)
    frames = np.random.default_rng(0).integers(0, 256, (3, 64, 64, 3), dtype=np.uint8)
    model = PPO.load(str(path), device="cpu")
    obs, _ = model.policy.obs_to_tensor(frames.transpose(0, 3, 1, 2))
    expected = model.policy.predict_values(obs).flatten().detach().double().numpy()
    np.testing.assert_allclose(value(frames), expected, rtol=1e-6)
    assert value(frames).shape == (3,) and value.gamma == 0.99
    summary = run_mpc.main(
        "--env Astra-Drive-v0 --checkpoint debug --device cpu --max-steps 2 --candidates 3 --horizon 2 "
        "--iterations 1 --elites 1 --num-denoise-steps 1".split()
        + ["--value", str(path)]
    )
    assert summary["lengths"] == [2]
    with pytest.raises(ValueError, match="not a PPO or A2C model"):
        SB3Value(tmp_path / "run" / "args.json")


@pytest.mark.sims
def test_agent_returns_quick(tmp_path):
    require_sim("drive")
    out = tmp_path / "agents.json"
    result = agent_returns.main(
        ["--quick", "--out", str(out), "--work-dir", str(tmp_path / "runs"), "--markdown", str(tmp_path / "a.md")]
    )
    payload = json.loads(out.read_text())
    assert payload["benchmark"] == "agent_returns"
    (entry,) = payload["results"]
    assert entry["env"] == "Astra-Drive-v0" and sorted(entry["methods"]) == sorted(agent_returns.METHODS)
    for method, row in entry["methods"].items():
        assert row["seeds"] == [10_000] and row["lengths"] == [5], method  # same real episodes for every method
    assert entry["methods"]["ppo_real"]["real_train_steps"] == 64 == entry["methods"]["ppo_inside"]["imagined_steps"]
    assert "| Astra-Drive-v0 |" in result["markdown"] and (tmp_path / "a.md").is_file()


def _fake_result(path, methods: dict[str, float]):
    rows = {
        m: {"mean_return": r, "std_return": 0.0, "real_train_steps": 0, "imagined_steps": 0, "env_steps": 5,
            "train_seconds": 0.0, "wall_seconds": 1.0}
        for m, r in methods.items()
    }  # fmt: skip
    entry = {"env": "Astra-Explore-v0", "methods": rows, "transfer": {}}
    path.write_text(json.dumps({"benchmark": "agent_returns", "results": [entry]}))
    return path


def test_merge_joins_methods_run_in_separate_processes(tmp_path):
    a = _fake_result(tmp_path / "a.json", {"random": 1.0, "ppo_real": 3.0, "ppo_inside": 2.0})
    b = _fake_result(tmp_path / "b.json", {"mpc": 4.0})
    result = agent_returns.main(["--merge", str(a), str(b), "--markdown", str(tmp_path / "m.md")])
    (entry,) = result["results"]
    assert list(entry["methods"]) == list(agent_returns.METHODS)
    assert entry["transfer"] == {"transfer_ratio": 2.0 / 3.0, "transfer_normalised": 0.5}
    assert entry["methods"]["mpc"]["source"] == str(b)
    row = "| Astra-Explore-v0 | 1.00 ± 0.00 | 3.00 ± 0.00 | 2.00 ± 0.00 | 4.00 ± 0.00 |"
    assert row in (tmp_path / "m.md").read_text()
    with pytest.raises(SystemExit, match="appears in two files"):
        agent_returns.main(["--merge", str(a), str(a)])


def test_spearman_rank_agreement():
    from benchmarks.common import spearman

    assert spearman([1.0, 2.0, 3.0], [10.0, 20.0, 30.0]) == pytest.approx(1.0)
    assert spearman([1.0, 2.0, 3.0], [3.0, 2.0, 1.0]) == pytest.approx(-1.0)
    assert np.isnan(spearman([1.0, 1.0, 1.0], [1.0, 2.0, 3.0]))


@pytest.mark.sims
def test_imagined_vs_real_runs_on_debug_weights(tmp_path):
    from benchmarks import imagined_vs_real

    require_sim("drive")
    out = tmp_path / "ivr.json"
    result = imagined_vs_real.main(
        ["--env", "Astra-Drive-v0", "--checkpoint", "debug", "--steps", "3", "--envs", "2", "--real-episodes", "1",
         "--out", str(out)]
    )  # fmt: skip
    assert [r["action"] for r in result["rows"]] == list(imagined_vs_real.ACTIONS["drive"])
    assert all(np.isfinite(r["real_mean"]) and np.isfinite(r["imagined_mean"]) for r in result["rows"])
    assert json.loads(out.read_text())["config"]["spearman_rho"] == result["spearman_rho"] or np.isnan(
        result["spearman_rho"]
    )


def test_the_rest_baseline_reaches_the_inside_env():
    args = train_sb3.Args(env="Astra-Manipulation-v0", checkpoint="debug", frame_bank="synthetic", num_envs=1,
                          rest_baseline=True)  # fmt: skip
    env = train_sb3.make_train_env(args)
    try:
        assert env.unwrapped.venv.core.rest_baseline
    finally:
        env.close()


def test_the_uncertainty_penalty_reaches_the_inside_env():
    args = train_sb3.Args(env="Astra-Debug-v0", checkpoint="debug", num_envs=1, uncertainty_penalty=0.25)
    env = train_sb3.make_train_env(args)
    try:
        assert env.unwrapped.venv.core.uncertainty_penalty == 0.25
    finally:
        env.close()
    with pytest.raises(ValueError, match="--uncertainty-penalty -1.0: give a number >= 0"):
        train_sb3.Args(env="Astra-Debug-v0", uncertainty_penalty=-1.0)
