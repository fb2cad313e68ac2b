"""The held-out rollout evaluation: its pieces, and the benchmark script end to end on a debug model."""

from __future__ import annotations

import json

import numpy as np
import pytest

from astra_gym.data.episodes import save_episode
from astra_gym.evaluation import rollouts
from benchmarks import eval_world_model, summarize_evals
from tests.evaluation.synthetic import BUTTONS, square_episode


def strict_json(path) -> dict:
    def reject(token: str):
        raise ValueError(f"non-standard JSON token {token}")

    return json.loads(path.read_text(encoding="utf-8"), parse_constant=reject)


@pytest.fixture
def heldout(tmp_path):
    folder = tmp_path / "heldout"
    for i in range(2):
        save_episode(square_episode(100 + i, steps=20), folder / f"episode_{i:06d}.hdf5")
    return folder


def test_plan_and_starts():
    plan = rollouts.EvalPlan("explore", context=3, chunks=2, chunk_latents=2, starts_per_episode=3)
    assert (plan.frames_per_chunk, plan.horizon, plan.steps_needed) == (2, 4, 6)
    assert rollouts.start_frames(20, plan) == [0, 7, 14]
    assert rollouts.start_frames(5, plan) == []
    with pytest.raises(ValueError, match="whole latents"):
        rollouts.EvalPlan("drive", context=4, chunks=1, temporal_factor=4)
    starts = rollouts.make_starts([("a", square_episode(0, steps=20))], plan)
    st = starts[1]
    ep = square_episode(0, steps=20)
    assert st.start == 7 and st.frames.shape[0] == 3 + 4
    np.testing.assert_array_equal(st.frames, ep.frames[7:14])
    np.testing.assert_array_equal(st.actions, ep.actions[7:13])
    np.testing.assert_array_equal(st.random_actions[:2], ep.actions[7:9])  # the shared context
    np.testing.assert_array_equal(st.rewards, ep.rewards[9:13])


def test_random_actions_are_seeded_and_held():
    draw = lambda seed: rollouts.random_actions("drive", 200, np.random.default_rng(seed))  # noqa: E731
    a = draw(0)
    np.testing.assert_array_equal(a, draw(0))
    assert not np.array_equal(a, draw(1))
    changes = np.flatnonzero(np.any(np.diff(a, axis=0) != 0, axis=1))
    assert np.diff(changes).min() >= 4  # the data's drive hold is 4..20 steps
    fetch = rollouts.random_actions("manipulation", 50, np.random.default_rng(0))
    assert fetch.shape == (50, 4) and fetch.dtype == np.float32 and np.abs(fetch).max() <= 1
    keys = rollouts.random_actions("explore", 50, np.random.default_rng(0), BUTTONS)
    assert keys.shape == (50, 6) and keys.dtype == np.int8


def test_latent_rows_aggregate_the_steps_of_a_latent():
    actions = np.array([[-1.0, 1.0, 0.0], [0.0, 0.0, 1.0], [1.0, 0.0, 0.0], [1.0, 0.0, 0.0]], np.float32)
    rows = rollouts.latent_rows("drive", actions, temporal_factor=2)
    np.testing.assert_allclose(rows, [[-0.5, 0.5, 0.5, 1, 0, 0, 0], [1, 0, 0, 1, 0, 0, 0]])


def test_eval_script_runs_end_to_end(heldout, tmp_path):
    out, table = tmp_path / "eval.json", tmp_path / "table.md"
    argv = [
        "--checkpoint", "debug", "--scenario", "explore", "--episodes", str(heldout), "--chunks", "2",
        "--context", "3", "--starts-per-episode", "2", "--denoise-steps", "1", "--batch-size", "3",
        "--idm", str(tmp_path / "idm.safetensors"), "--idm-train-episodes", str(heldout.parent / "train"),
        "--idm-steps", "3", "--idm-batch-size", "4", "--out", str(out), "--markdown", str(table),
    ]  # fmt: skip
    for i in range(2):
        save_episode(square_episode(i, steps=12), heldout.parent / "train" / f"episode_{i:06d}.hdf5")
    eval_world_model.main(argv)
    payload = strict_json(out)
    assert payload["benchmark"] == "eval_world_model"
    assert payload["command"].startswith("python -m benchmarks.eval_world_model --checkpoint debug")
    assert payload["model"]["sampler"]["num_denoise_steps"] == 1
    assert [row["chunk"] for row in payload["per_chunk"]] == [1, 2]
    summary = payload["summary"]
    assert summary["num_starts"] == 4 and summary["num_episodes"] == 2
    assert summary["psnr"]["count"] == 4 * 2  # starts x frames
    for key in ("psnr", "ssim", "delta_psnr", "idm_real", "idm_generated", "reward_mae_generated"):
        assert all(key in row for row in payload["per_chunk"]), key
    assert summary["idm"]["real"]["count"] == summary["idm"]["vae_recon"]["count"] == 4 * 2
    assert all("idm_vae_recon" in row for row in payload["per_chunk"])
    assert payload["idm"]["status"] == "trained" and (tmp_path / "idm.safetensors").is_file()
    assert "| chunk |" in table.read_text() and "ΔPSNR" in table.read_text()
    # A second run loads the IDM it saved and, being seeded, reproduces every number.
    eval_world_model.main(argv)
    again = strict_json(out)
    assert again["idm"]["status"] == "loaded"
    assert again["per_chunk"] == payload["per_chunk"]
    # The summary table reads the same numbers back.
    row = summarize_evals.summarize(out)
    assert (row["scenario"], row["context"], row["steps"]) == ("explore", 3, 1)
    assert row["delta_psnr_last"] == payload["per_chunk"][-1]["delta_psnr"]
    assert row["idm_generated"] == payload["summary"]["idm"]["generated"]["balanced_accuracy"]
    assert summarize_evals.markdown([row]).splitlines()[2].startswith("| explore | debug | 3 | 1 | 1 |")
    with pytest.raises(ValueError, match="not an eval_world_model result"):
        (tmp_path / "other.json").write_text('{"benchmark": "model_speed"}')
        summarize_evals.summarize(tmp_path / "other.json")


def test_idm_on_vae_reconstructions_is_recorded_and_not_mixed_up(heldout, tmp_path):
    idm = tmp_path / "idm_vae.safetensors"
    argv = ["--checkpoint", "debug", "--scenario", "explore", "--episodes", str(heldout), "--chunks", "1",
            "--context", "3", "--starts-per-episode", "1", "--denoise-steps", "1", "--idm", str(idm),
            "--idm-train-episodes", str(heldout.parent / "train"), "--idm-steps", "2", "--idm-batch-size", "4",
            "--idm-on-vae", "--out", str(tmp_path / "eval.json")]  # fmt: skip
    for i in range(2):
        save_episode(square_episode(i, steps=12), heldout.parent / "train" / f"episode_{i:06d}.hdf5")
    payload = eval_world_model.main(argv)
    assert payload["idm"]["trained_on"] == "vae_reconstructions" and payload["idm"]["status"] == "trained"
    with pytest.raises(SystemExit, match="was trained on vae reconstructions; drop --idm-on-vae"):
        eval_world_model.main([a for a in argv if a != "--idm-on-vae"])


def test_eval_script_refuses_episodes_the_idm_was_trained_on(heldout, tmp_path):
    argv = ["--checkpoint", "debug", "--scenario", "explore", "--episodes", str(heldout), "--chunks", "1",
            "--idm", str(tmp_path / "idm.safetensors"), "--idm-train-episodes", str(heldout), "--idm-steps", "1",
            "--out", str(tmp_path / "eval.json")]  # fmt: skip
    with pytest.raises(SystemExit, match="IDM was trained on 2 of the --episodes"):
        eval_world_model.main(argv)


def test_markdown_table_leaves_out_missing_columns():
    table = eval_world_model.markdown_table([{"chunk": 1, "psnr": 20.0, "delta_psnr": 0.5}])
    assert table.splitlines()[0] == "| chunk | PSNR (dB) | ΔPSNR (dB) |"
    assert table.splitlines()[2] == "| 1 | 20.00 | +0.50 |"


@pytest.mark.sims
def test_replay_reproduces_recorded_continuations(tmp_path):
    pytest.importorskip("vizdoom")
    from astra_gym.data.policies import make_policy
    from astra_gym.data.recorder import Recorder
    from astra_gym.data.sims import make_simulator

    with Recorder(make_simulator("explore"), make_policy("mix", "explore", BUTTONS)) as rec:
        ep = rec.record(seed=5, steps=14, policy_seed=1)
    save_episode(ep, tmp_path / "heldout" / "episode_000000.hdf5")
    out = tmp_path / "eval.json"
    eval_world_model.main(["--checkpoint", "debug", "--scenario", "explore", "--episodes", str(tmp_path / "heldout"),
                           "--chunks", "2", "--starts-per-episode", "2", "--denoise-steps", "1", "--replay",
                           "--out", str(out)])  # fmt: skip
    payload = strict_json(out)
    assert [c["equal"] for c in payload["replay_check"]] == [True, True]
    assert payload["summary"]["replay_random"]["num_starts"] == 2
    assert all("psnr_replay_random" in row for row in payload["per_chunk"])


def saved_checkpoint(tmp_path, training_roots=()):
    """A debug world model, VAE and reward model saved like the trainers save them (random weights)."""
    import dataclasses

    import torch

    from astra_gym.rollout.engine import DEFAULT_LAYOUT
    from astra_gym.training.normalization import ActionNormalizer
    from astra_gym.world_model.checkpoints import save_pretrained
    from astra_gym.world_model.config import get_preset
    from astra_gym.world_model.reward_io import save_reward_model
    from astra_gym.world_model.reward_model import RewardModel, get_reward_model_preset
    from astra_gym.world_model.transformer import AstraTransformer
    from astra_gym.world_model.vae import SmallVAE
    from astra_gym.world_model.vae_io import save_vae

    torch.manual_seed(0)
    norm = ActionNormalizer("keyboard", (2.0,) * 16)
    save_vae(SmallVAE.from_preset("debug"), tmp_path / "vae", preset="debug")
    reward = RewardModel(get_reward_model_preset("debug", 16))
    save_reward_model(reward, tmp_path / "reward", scenario="explore", feature="keyboard", normalizer=norm)
    extra = {
        "scenarios": {
            "explore": {"modality": "keyboard", "feature": "keyboard", "action_normalization": norm.to_dict()}
        },
        "vae": {"folder": str(tmp_path / "vae")},
        "layout": dataclasses.asdict(DEFAULT_LAYOUT),
        "chunk_latents": 1,
        "sampler": {"num_denoise_steps": 1, "guidance_scale": 1.0, "shift": 5.0},
        "training": {
            "step": 0,
            "config": {"datasets": [{"root": str(r), "scenario": "explore"} for r in training_roots]},
        },
    }
    return save_pretrained(AstraTransformer(get_preset("debug")), tmp_path / "wm", extra_config=extra)


def test_eval_script_loads_a_saved_checkpoint_and_checks_its_training_data(heldout, tmp_path):
    cache = tmp_path / "cache"
    cache.mkdir()
    seed = square_episode(101).seed  # the second held-out episode
    index = {"shards": [{"episodes": [{"source": "elsewhere.hdf5", "env_id": "synthetic/square", "seed": seed}]}]}
    (cache / "index.json").write_text(json.dumps(index))
    folder = saved_checkpoint(tmp_path, training_roots=[cache])
    argv = ["--checkpoint", str(folder), "--reward-model", str(tmp_path / "reward"), "--scenario", "explore",
            "--episodes", str(heldout), "--chunks", "2", "--context", "3",
            "--out", str(tmp_path / "eval.json")]  # fmt: skip
    with pytest.raises(SystemExit, match="1 --episodes were used to train the model"):
        eval_world_model.main(argv)
    payload = eval_world_model.main([*argv, "--allow-train-overlap"])
    assert payload["model"]["kind"] == "checkpoint" and payload["model"]["feature"] == "keyboard"
    assert payload["data"]["heldout_check"]["overlapping_episodes"] == [str(heldout / "episode_000001.hdf5")]
    assert payload["config"]["denoise_steps"] is None  # the checkpoint's sampler settings were used
    assert set(payload["summary"]["reward_model"]) >= {"real", "generated"}
    strict_json(tmp_path / "eval.json")
