"""The variants' recipe script and the dyna loop run end to end at tiny size, and the loop resumes."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from astra_gym.agents import dyna

REPO = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def tiny_bundle(tmp_path_factory):
    """scripts/train_variant.sh drive at its tiny size: record CarRacing, VAE, cache, world model, reward, bundle."""
    return _recipe("drive", tmp_path_factory.mktemp("recipe"))


def _recipe(scenario: str, work: Path) -> Path:
    env = {**os.environ, "PY": sys.executable, "WORKERS": "1", "OMP_NUM_THREADS": "1"}
    script = REPO / "scripts" / "train_variant.sh"
    subprocess.run(["bash", str(script), scenario, "tiny", str(work)], check=True, env=env)
    return work / "bundle"


def test_recipe_bundle_keeps_the_drive_layout(tiny_bundle):
    manifest = json.loads((tiny_bundle / "bundle.json").read_text())
    assert list(manifest["scenarios"]) == ["drive"] and manifest["sampler"]["guidance_scale"] == 3.0


@pytest.mark.parametrize(
    "scenario, rewards, probe",
    [("manipulation", {"manipulation", "manipulation-reach-push"}, False), ("explore", {"explore"}, True)],
)
def test_recipe_trains_the_other_variants_with_their_data_and_tasks(tmp_path, scenario, rewards, probe):
    bundle = _recipe(scenario, tmp_path)
    manifest = json.loads((bundle / "bundle.json").read_text())
    assert list(manifest["scenarios"]) == [scenario]
    assert {p.name for p in (bundle / "reward").iterdir()} == rewards  # the simulator's reward (+ the dense task)
    assert (tmp_path / "data" / "cache-probe").is_dir() == probe  # Explore's held-button episodes
    assert manifest["sampler"]["guidance_scale"] == 1.0  # Manipulation and Explore sample without action-free guidance
    if scenario == "manipulation":
        _check_the_manipulation_recipe(bundle, manifest, tmp_path)
        _check_a_potential_task_keeps_its_potential(bundle, tmp_path)
    with pytest.raises(subprocess.CalledProcessError):
        subprocess.run(["bash", str(REPO / "scripts" / "train_variant.sh"), "doom", "tiny", str(tmp_path)], check=True)


def _check_the_manipulation_recipe(bundle: Path, manifest: dict, tmp_path: Path) -> None:
    """The front camera (recorded in the bundle, with start contexts seen by it), the motion-weighted loss, and
    a one-frame reach-push reader from predicted poses, trained on pieces the world model re-imagined too."""
    entry = manifest["scenarios"]["manipulation"]
    assert entry["sim_config"]["camera"]["azimuth"] == 180.0 and entry["frame_bank"]
    trained = json.loads((bundle / "world_model" / "config.json").read_text())["extra"]["training"]["config"]
    assert trained["step"]["motion_weight"] == 4.0
    reader = json.loads((bundle / "reward" / "manipulation-reach-push" / "config.json").read_text())["metrics"]
    assert reader["config"]["task"] == "reach-push" and reader["config"]["num_frames"] == 1
    # ... which computes reach-push from the positions it predicts (session 23)
    assert reader["config"]["pose_reward"] and reader["config"]["model_preset"] == "keypoints"
    assert reader["config"]["imagined"] == str(tmp_path / "runs" / "imagine")
    assert reader["imagined_train_transitions"] > 0
    assert sorted(p.name for p in (tmp_path / "runs" / "imagined").iterdir()) == ["heldout", "train"]


def _check_a_potential_task_keeps_its_potential(bundle: Path, tmp_path: Path) -> None:
    """A start bundle that reads ``progress`` as the change of its ``reach-push`` reader (as the env does): the
    loop keeps or retrains that reader, and its bundles keep the other reward models."""
    base = [
        "--preset",
        "debug",
        "--env",
        "Astra-Manipulation-v0",
        "--start-bundle",
        str(bundle),
        "--out",
        str(tmp_path / "d"),
    ]
    base += ["--task", "progress"]
    loop = dyna.Loop(dyna.config_from_args([*base, "--reward-steps", "0"]))
    assert loop.reward_task == "reach-push" and set(loop.start_rewards) == {None, "reach-push"}
    assert dyna.Loop(dyna.config_from_args(base[:-2])).reward_task is None
    manifest = json.loads((bundle / "bundle.json").read_text())
    entry = manifest["scenarios"]["manipulation"]
    entry["task_reward_models"]["progress"] = entry["task_reward_models"]["reach-push"]
    (bundle / "bundle.json").write_text(json.dumps(manifest))
    assert dyna.Loop(dyna.config_from_args(base)).reward_task == "progress"  # the task's own reader comes first


def test_dyna_loop_runs_plots_and_resumes(tiny_bundle, tmp_path):
    args = ["--preset", "debug", "--start-bundle", str(tiny_bundle), "--out", str(tmp_path)]
    curve = dyna.main(args)
    assert len(curve) == 1 and curve[0]["real_steps"] == 2 * 40  # two collected episodes of 40 steps
    assert curve[0]["real_return_mean"] is not None and (tmp_path / "curve.png").stat().st_size > 0
    for stage in ("data", "cache", "wm", "reward", "bundles", "agent"):
        assert (tmp_path / stage / "iter_000").is_dir(), stage
    # the fine-tune continues the start model's recipe (the script's), not the preset's release defaults
    trained = json.loads((tmp_path / "wm" / "iter_000" / "final" / "config.json").read_text())
    recipe = trained["extra"]["training"]["config"]
    assert recipe["step"]["timestep_shift"] == 1.0 and recipe["step"]["loss_weighting"] == "none"
    assert recipe["step"]["history_noise_p"] == 0.3 and recipe["episode_start_p"] == 0.25
    stamp = (tmp_path / "bundles" / "iter_000" / "bundle.json").stat().st_mtime_ns
    assert dyna.main(args) == curve  # a second run finds everything done
    assert (tmp_path / "bundles" / "iter_000" / "bundle.json").stat().st_mtime_ns == stamp
    cfg = dyna.config_from_args(["--preset", "gpu"])
    assert cfg.device == "cuda" and cfg.agent_steps >= 100_000


def test_dyna_loop_keeps_the_start_bundles_guidance(tiny_bundle, tmp_path):
    """``bundle --guidance`` sets what the bundle runs, not its world model's training sampler: the loop's
    fine-tunes (and so its bundles) must keep the bundle's."""
    from astra_gym.training.bundle import make_bundle

    rewards = [tiny_bundle / "reward" / "drive"]
    start = make_bundle("g1", tiny_bundle / "world_model", tiny_bundle / "vae", rewards, tmp_path / "g1", guidance=1.0)
    trained = json.loads((start / "world_model" / "config.json").read_text())["extra"]["sampler"]
    assert trained["guidance_scale"] == 3.0  # the training sampler, unchanged in the folder
    args = ["--preset", "debug", "--start-bundle", str(start), "--out", str(tmp_path)]
    loop = dyna.Loop(dyna.config_from_args(args))
    assert loop.sampler.guidance_scale == 1.0 and loop.sampler.num_steps == trained["num_denoise_steps"]
    tuned = loop._train_config(0, tmp_path / "wm", start / "world_model", 1, loop.sampler)
    assert tuned.sampler_guidance == 1.0


def test_dyna_loop_fine_tunes_a_distilled_start_as_its_teacher_and_distils_again(tiny_bundle, tmp_path):
    """A student start (one forward, guidance baked in): the fine-tune is a guided teacher with the teacher's
    recipe, and the bundled model is that teacher distilled with the start model's settings."""
    import dataclasses

    from astra_gym.training import train_world_model
    from astra_gym.training.bundle import make_bundle
    from astra_gym.training.data import DatasetSpec
    from astra_gym.training.distill import DistillConfig

    teacher = tiny_bundle / "world_model"
    cfg = dataclasses.replace(
        train_world_model.PRESETS["small-cpu"],  # its own step recipe: the release defaults (p 0.8)
        datasets=(DatasetSpec(root=str(tiny_bundle.parent / "data" / "cache-train"), scenario="drive"),),
        init_from=str(teacher), distill_from=str(teacher), distill=DistillConfig(teacher_steps=1, student_steps=1),
        batch_size=2, total_steps=1, warmup_steps=1, checkpoint_every=1, run_dir=str(tmp_path / "student"),
        vae=str(tiny_bundle / "vae"), sampler_steps=1, sampler_guidance=1.0, sampler_shift=1.0, preview_every=0,
        tensorboard=False, progress=False,
    )  # fmt: skip
    student = train_world_model.train(cfg).final
    saved = json.loads((student / "config.json").read_text())["extra"]
    assert saved["training"]["config"]["step"]["history_noise_p"] == 0.8
    assert saved["teacher"]["config"]["step"]["history_noise_p"] == 0.3  # the teacher's record travels with it
    start = make_bundle("student", student, tiny_bundle / "vae", [tiny_bundle / "reward" / "drive"], tmp_path / "s")

    out = tmp_path / "loop"
    replay = str(tiny_bundle.parent / "data" / "cache-train")  # the start model's own training data
    loop_args = ["--preset", "debug", "--start-bundle", str(start), "--out", str(out), "--teacher", str(teacher)]
    curve = dyna.main([*loop_args, "--replay", replay, "--replay-share", "0.75"])
    assert len(curve) == 1 and curve[0]["real_return_mean"] is not None
    tuned = json.loads((out / "wm" / "iter_000" / "final" / "config.json").read_text())["extra"]
    assert tuned["sampler"]["guidance_scale"] == 3.0 and tuned["training"]["config"]["distill_from"] is None
    assert tuned["training"]["config"]["step"]["history_noise_p"] == 0.3  # the teacher's recipe, not the student's
    assert tuned["training"]["config"]["init_from"] == str(teacher)  # --teacher, not the student's weights
    rows = {d["name"]: (d["root"], d["weight"]) for d in tuned["training"]["config"]["datasets"]}
    assert rows == {"iter0": (str(out / "cache" / "iter_000"), 0.25), "replay0": (replay, 0.75)}
    distilled = json.loads((out / "distill" / "iter_000" / "final" / "config.json").read_text())["extra"]
    assert distilled["training"]["config"]["distill_from"] == str(out / "wm" / "iter_000" / "final")
    assert distilled["teacher"]["config"]["step"]["history_noise_p"] == 0.3
    manifest = json.loads((out / "bundles" / "iter_000" / "bundle.json").read_text())
    assert manifest["sampler"] == {"num_denoise_steps": 1, "guidance_scale": 1.0, "shift": 1.0}


def test_dyna_reward_stage_trains_on_the_replayed_episodes_too(tiny_bundle, tmp_path):
    recorded = str(tiny_bundle.parent / "data" / "train")  # the start model's recorded episodes
    args = ["--preset", "debug", "--start-bundle", str(tiny_bundle), "--out", str(tmp_path)]
    args += ["--reward-replay", recorded]
    assert dyna.main(args)[0]["real_return_mean"] is not None
    saved = json.loads((tmp_path / "reward" / "iter_000" / "final" / "config.json").read_text())
    assert saved["metrics"]["config"]["episodes"] == [recorded, str(tmp_path / "data" / "iter_000")]
    # ... and on pieces of them re-imagined by the iteration's model, with the real rewards (one per episode)
    imagine = tmp_path / "imagine" / "iter_000"
    assert saved["metrics"]["config"]["imagined"] == str(imagine)
    assert json.loads((imagine / "bundle.json").read_text())["name"] == "dyna-iter0"
    pieces = sorted((tmp_path / "imagined" / "iter_000" / "train").glob("*.hdf5"))
    assert pieces and saved["metrics"]["imagined_train_transitions"] == 8 * len(pieces)  # 8 steps each
    imagined = json.loads((tmp_path / "imagined" / "iter_000" / "train" / "imagined.json").read_text())
    assert imagined["bundle"] == str(imagine.resolve()) and imagined["horizon"] == 8 and imagined["starts"] == 1
    no_pieces = tmp_path / "none"
    assert dyna.main([*args[:-2], "--out", str(no_pieces), "--reward-imagined-starts", "0"])[0]["real_steps"] == 80
    saved = json.loads((no_pieces / "reward" / "iter_000" / "final" / "config.json").read_text())
    assert saved["metrics"]["config"]["imagined"] is None and saved["metrics"]["imagined_train_transitions"] == 0
    assert not (no_pieces / "imagine").exists()


def test_dyna_loop_keeps_the_start_reward_models_with_zero_reward_steps(tiny_bundle, tmp_path):
    """``--reward-steps 0``: no reward stage runs and the bundle scores with the start bundle's reward model."""
    args = ["--preset", "debug", "--start-bundle", str(tiny_bundle), "--out", str(tmp_path), "--reward-steps", "0"]
    curve = dyna.main(args)
    assert len(curve) == 1 and curve[0]["real_return_mean"] is not None
    assert not (tmp_path / "reward").exists()
    bundled = tmp_path / "bundles" / "iter_000"
    manifest = json.loads((bundled / "bundle.json").read_text())
    kept = json.loads((bundled / manifest["scenarios"]["drive"]["reward_model"] / "config.json").read_text())
    start = json.loads((tiny_bundle / "reward" / "drive" / "config.json").read_text())
    assert kept["metrics"] == start["metrics"]  # the start's model (its training record), not a retrained one


@pytest.mark.parametrize(
    ("flags", "message"),
    [
        (["--teacher", "{bundle}/world_model"], "not a distilled student"),
        (["--replay", "{tmp}"], "not a latent cache"),
        (["--replay", "{bundle}/../data/cache-train", "--replay-share", "1"], "strictly between 0 and 1"),
        (["--task", "no-such-task"], "no-such-task"),
        (["--task", "tiles", "--reward-steps", "0"], "no reward model of that task to keep"),
        (["--reward-replay", "{tmp}"], "no recorded episodes"),
        (["--reward-replay", "{bundle}/../data/train", "--reward-steps", "0"], "no reward model is trained"),
        (["--reward-imagined-starts", "-1"], "give starts >= 0"),
    ],
)
def test_dyna_loop_rejects_a_teacher_or_replay_it_cannot_use(tiny_bundle, tmp_path, flags, message):
    flags = [f.format(bundle=tiny_bundle, tmp=tmp_path) for f in flags]
    with pytest.raises(ValueError, match=message):
        dyna.main(["--preset", "debug", "--start-bundle", str(tiny_bundle), "--out", str(tmp_path / "o"), *flags])
    assert not (tmp_path / "o" / "data").exists()  # nothing ran
