"""World-model bundles: the debug bundle, and loading a folder written by ``astra_gym.training.bundle``."""

import dataclasses
import json
import pickle

import numpy as np
import pytest
import torch

from astra_gym.data.latent_cache import vae_identity
from astra_gym.envs import AstraEnv
from astra_gym.envs.spaces import action_rows as scenario_action_rows
from astra_gym.rollout.bundle import BundleError, debug_bundle, load_bundle
from astra_gym.rollout.engine import WorldModelRollout
from astra_gym.training.bundle import make_bundle
from astra_gym.training.normalization import ActionNormalizer
from astra_gym.utils.pixels import pixels_to_uint8, uint8_to_pixels
from astra_gym.world_model.checkpoints import save_pretrained
from astra_gym.world_model.reward_io import load_reward_model, save_reward_model
from astra_gym.world_model.vae_io import save_vae
from tests.rollout.inputs import action_rows, contexts

SCALE = (0.5, 0.7, 0.3, 1.0, 1.0, 1.0, 1.0)


def test_debug_bundle_is_seeded_and_leaves_the_global_rng_alone():
    torch.manual_seed(123)
    expected_next = torch.rand(1)
    torch.manual_seed(123)
    first = debug_bundle("explore", seed=3)
    assert torch.equal(torch.rand(1), expected_next)
    second = debug_bundle("explore", seed=3)
    weights = zip(first.transformer.state_dict().items(), second.transformer.state_dict().items(), strict=True)
    for (name, a), (_, b) in weights:
        assert torch.equal(a, b), name
    assert first.rollout.modality == "keyboard" and first.reward_model.config.action_dim == 16
    assert first.transformer.head.head.weight.abs().sum() > 0  # not Wan's zero init: actions must matter


def _write_bundle(tmp_path, bundle):
    """A bundle folder written with the training tools, from the debug bundle's modules."""
    normalizer = ActionNormalizer("vehicle_command", SCALE)
    layout = dataclasses.replace(bundle.rollout.layout, max_start_distance=24)
    extra = {
        "scenarios": {
            "drive": {
                "modality": "vehicle",
                "feature": "vehicle_command",
                "action_dim": 7,
                "action_normalization": normalizer.to_dict(),
            }
        },
        "vae": {"identity": vae_identity(bundle.vae)},
        "layout": dataclasses.asdict(layout),
        "chunk_latents": 1,
        "sampler": {"num_denoise_steps": 3, "guidance_scale": 1.5, "shift": 4.0},
    }
    save_pretrained(bundle.transformer, tmp_path / "wm", extra_config=extra)
    save_vae(bundle.vae, tmp_path / "vae", preset="debug")
    save_reward_model(bundle.reward_model, tmp_path / "reward", scenario="drive", feature="vehicle_command",
                      normalizer=normalizer)  # fmt: skip
    return make_bundle("test-v0", tmp_path / "wm", tmp_path / "vae", [tmp_path / "reward"], tmp_path / "bundle")


def test_a_trained_bundle_loads_with_its_settings_and_reproduces_the_modules(tmp_path, bundle):
    folder = _write_bundle(tmp_path, bundle)
    loaded = load_bundle(folder, "drive")
    config = loaded.rollout
    assert (config.modality, config.num_denoise_steps, config.guidance_scale, config.shift) == ("vehicle", 3, 1.5, 4.0)
    assert config.layout.max_start_distance == 24 and loaded.action_scale == SCALE
    rows = action_rows(2, 2)
    settings = bundle.rollout.replace(num_denoise_steps=3, guidance_scale=1.5, shift=4.0, layout=config.layout)
    expected = WorldModelRollout(bundle.transformer, bundle.vae, settings, bundle.reward_model, action_scale=SCALE)
    outputs = []
    for engine in (loaded.engine(), expected):
        state = engine.reset(contexts(2), [0, 1])
        for step_rows in rows:
            state, frames = engine.step(state, step_rows)
        outputs.append((frames, engine.score(state, rows[-1])))
    assert torch.equal(outputs[0][0], outputs[1][0])
    assert torch.equal(outputs[0][1][0], outputs[1][1][0])


def test_a_bundle_can_override_its_training_guidance(tmp_path, bundle):
    _write_bundle(tmp_path, bundle)
    folder = make_bundle("g1", tmp_path / "wm", tmp_path / "vae", [tmp_path / "reward"], tmp_path / "g1", guidance=1.0)
    config = load_bundle(folder, "drive").rollout
    assert (config.num_denoise_steps, config.guidance_scale, config.shift) == (3, 1.0, 4.0)  # trained with 1.5
    with pytest.raises(ValueError, match="guidance=-1.0 must be a finite scale >= 0"):
        make_bundle("bad", tmp_path / "wm", tmp_path / "vae", [tmp_path / "reward"], tmp_path / "bad", guidance=-1.0)
    assert not (tmp_path / "bad").exists()


def test_bundle_errors_name_the_folder_and_the_fix(tmp_path, bundle):
    with pytest.raises(BundleError, match="training.bundle"):
        load_bundle(tmp_path / "missing", "drive")
    folder = _write_bundle(tmp_path, bundle)
    with pytest.raises(BundleError, match="no 'explore' model; it was trained for \\['drive'\\]"):
        load_bundle(folder, "explore")
    (folder / "vae" / "vae.safetensors").write_bytes(b"not weights")
    with pytest.raises(BundleError, match="Rebuild the bundle"):
        load_bundle(folder, "drive")


def test_a_trainer_folder_loads_like_its_bundle(tmp_path, bundle):
    """The trainer's world-model folder (plus its VAE and a reward model) gives the bundle's engine."""
    folder = _write_bundle(tmp_path, bundle)
    with pytest.raises(BundleError, match="vae="):  # this folder does not name its VAE
        load_bundle(tmp_path / "wm", "drive")
    direct = load_bundle(tmp_path / "wm", "drive", vae=tmp_path / "vae", reward_model=tmp_path / "reward")
    packed = load_bundle(folder, "drive")
    assert direct.rollout == packed.rollout and direct.action_stats == packed.action_stats
    assert direct.action_stats is None  # a normaliser built without data records no statistics
    outputs = []
    for loaded in (direct, packed):
        engine = loaded.engine()
        state, frames = engine.step(engine.reset(contexts(1), [0]), action_rows(1, 1)[0])
        outputs.append((frames, engine.score(state, action_rows(1, 1)[0])[0]))
    assert torch.equal(outputs[0][0], outputs[1][0]) and torch.equal(outputs[0][1], outputs[1][1])
    assert load_bundle(tmp_path / "wm", "drive", vae=tmp_path / "vae").reward_model is None


def _manipulation_bundle_with_a_task(tmp_path):
    """A manipulation bundle with two reward models: the simulator's reward and the ``progress`` task's."""
    bundle = debug_bundle("manipulation")
    normalizer = ActionNormalizer("robot_command", SCALE)
    entry = {
        "modality": "robot",
        "feature": "robot_command",
        "action_dim": 7,
        "action_normalization": normalizer.to_dict(),
    }
    extra = {"scenarios": {"manipulation": entry}, "vae": {"identity": vae_identity(bundle.vae)},
             "layout": dataclasses.asdict(bundle.rollout.layout), "chunk_latents": 1}  # fmt: skip
    save_pretrained(bundle.transformer, tmp_path / "wm", extra_config=extra)
    save_vae(bundle.vae, tmp_path / "vae", preset="debug")
    rewards = {}
    for seed, task in ((1, None), (2, "progress")):
        model = debug_bundle("manipulation", seed=seed).reward_model
        rewards[task] = save_reward_model(model, tmp_path / f"reward-{task}", scenario="manipulation",
                                          feature="robot_command", normalizer=normalizer, task=task)  # fmt: skip
    return make_bundle(
        "tasks", tmp_path / "wm", tmp_path / "vae", list(rewards.values()), tmp_path / "bundle"
    ), rewards


def _same_weights(a, b) -> bool:
    return all(torch.equal(x, y) for x, y in zip(a.state_dict().values(), b.state_dict().values(), strict=True))


def test_a_bundle_holds_a_reward_model_per_task_and_the_env_picks_it(tmp_path):
    folder, rewards = _manipulation_bundle_with_a_task(tmp_path)
    manifest = json.loads((folder / "bundle.json").read_text())["scenarios"]["manipulation"]
    assert manifest["reward_model"] == "reward/manipulation"
    assert manifest["task_reward_models"] == {"progress": "reward/manipulation-progress"}
    expected = {task: load_reward_model(path)[0] for task, path in rewards.items()}
    native, progress = load_bundle(folder, "manipulation"), load_bundle(folder, "manipulation", task="progress")
    assert _same_weights(native.reward_model, expected[None]) and not _same_weights(
        native.reward_model, expected["progress"]
    )
    assert _same_weights(progress.reward_model, expected["progress"])
    assert _same_weights(load_bundle(folder, "manipulation", task="push").reward_model, expected[None])  # its own
    with pytest.raises(
        BundleError, match="no reward model for the manipulation task 'reach-push'.*train_reward --task"
    ):
        load_bundle(folder, "manipulation", task="reach-push")
    with pytest.raises(ValueError, match="choose one of"):
        load_bundle(folder, "manipulation", task="stack")
    env = AstraEnv(scenario="manipulation", checkpoint=str(folder), task="progress", device="cpu")
    assert _same_weights(env.engine.reward_model, expected["progress"])
    assert _same_weights(pickle.loads(pickle.dumps(env)).engine.reward_model, expected["progress"])  # by reference
    assert _same_weights(AstraEnv(scenario="manipulation", checkpoint=str(folder), device="cpu").engine.reward_model,
                         expected[None])  # fmt: skip
    with pytest.raises(ValueError, match="needs a reward model trained for it"):
        AstraEnv(scenario="manipulation", checkpoint="debug", task="progress")
    with pytest.raises(ValueError, match="two reward models for 'manipulation', task 'progress'"):
        make_bundle("x", tmp_path / "wm", tmp_path / "vae", [rewards["progress"]] * 2, tmp_path / "x")


def test_a_potential_based_task_without_its_own_model_reads_its_potentials_change(tmp_path):
    from astra_gym.training.add_reward import add_reward_model
    from astra_gym.world_model.potential_reward import PotentialReward

    _, rewards = _manipulation_bundle_with_a_task(tmp_path)
    folder = make_bundle("plain", tmp_path / "wm", tmp_path / "vae", [rewards[None]], tmp_path / "plain")
    potential = save_reward_model(debug_bundle("manipulation", seed=5).reward_model, tmp_path / "reach-push",
                                  scenario="manipulation", feature="robot_command",
                                  normalizer=ActionNormalizer("robot_command", SCALE), task="reach-push")  # fmt: skip
    with pytest.raises(BundleError, match="needs one of progress or its potential reach-push"):
        load_bundle(folder, "manipulation", task="progress")
    add_reward_model(folder, potential, weights_dtype="float32")
    loaded = load_bundle(folder, "manipulation", task="progress").reward_model
    assert isinstance(loaded, PotentialReward) and loaded.scale == 10.0
    assert _same_weights(loaded.potential, load_reward_model(potential)[0])
    assert _same_weights(load_bundle(folder, "manipulation", task="reach-push").reward_model, loaded.potential)
    env = AstraEnv(scenario="manipulation", checkpoint=str(folder), task="progress", device="cpu")
    assert env.engine.reward_frames == 2  # the frame before the step is kept for the potential
    obs, _ = env.reset(seed=0)
    with torch.no_grad():  # the first step compares with the VAE's reconstruction of the start, not the real frame
        before = pixels_to_uint8(env.engine.vae.decode(env.engine.vae.encode(uint8_to_pixels(obs[None, None]))))
    before = before[0, -1].numpy()
    assert not np.array_equal(before, obs)
    obs, reward, *_ = env.step(np.array([0.5, 0.0, 0.0, 0.0], np.float32))
    pixels = uint8_to_pixels(np.stack([before, obs])[None], channel_dim=-3)  # [1, 2, 3, H, W]
    raw = scenario_action_rows("manipulation", np.array([[0.5, 0.0, 0.0, 0.0]]), 7)  # [1, 7], feature units
    row = torch.from_numpy(raw).float() / torch.tensor(SCALE)
    with torch.no_grad():
        phi = [loaded.potential(pixels[:, t : t + 1], torch.zeros_like(row))[0].item() for t in (0, 1)]
    assert reward == pytest.approx(10.0 * (phi[1] - phi[0]), abs=1e-4)
    add_reward_model(folder, rewards["progress"], weights_dtype="float32")  # the task's own model comes first
    assert _same_weights(load_bundle(folder, "manipulation", task="progress").reward_model,
                         load_reward_model(rewards["progress"])[0])  # fmt: skip


def test_add_reward_puts_a_task_reward_model_into_an_existing_bundle(tmp_path):
    from astra_gym.training.add_reward import add_reward_model

    folder, rewards = _manipulation_bundle_with_a_task(tmp_path)
    plain = make_bundle("plain", tmp_path / "wm", tmp_path / "vae", [rewards[None]], tmp_path / "plain")
    (plain / "MODEL_CARD.md").write_text("# plain\n\nhand-written notes\n")
    with pytest.raises(BundleError, match="no reward model for the manipulation task 'progress'"):
        load_bundle(plain, "manipulation", task="progress")
    added = add_reward_model(plain, rewards["progress"], weights_dtype="float32")
    assert added == plain.absolute() / "reward" / "manipulation-progress"
    assert _same_weights(load_bundle(plain, "manipulation", task="progress").reward_model,
                         load_reward_model(rewards["progress"])[0])  # fmt: skip
    assert (plain / "MODEL_CARD.md").read_text().startswith("# plain\n\nhand-written notes\n")
    assert "task `progress`" in (plain / "MODEL_CARD.md").read_text()
    assert {p.name for p in (plain / "reward").iterdir()} == {"manipulation", "manipulation-progress"}
    with pytest.raises(ValueError, match="already holds reward/manipulation-progress"):
        add_reward_model(plain, rewards["progress"])
    add_reward_model(plain, rewards["progress"], replace=True)
    other = save_reward_model(debug_bundle("manipulation", seed=4).reward_model, tmp_path / "other",
                              scenario="manipulation", feature="robot_command",
                              normalizer=ActionNormalizer("robot_command", (1.0,) * 7), task="reach-push")  # fmt: skip
    with pytest.raises(ValueError, match="normalises actions differently"):
        add_reward_model(plain, other)


def test_reach_is_read_through_the_reach_push_pose_reader_with_the_reach_formula(tmp_path):
    """A bundle with only a ``reach-push`` pose reader serves ``reach``: the change of the gripper-block distance
    of the poses that reader predicts (its weights, the ``reach-block`` formula); a reader without poses cannot."""
    from astra_gym.training.add_reward import add_reward_model
    from astra_gym.world_model.potential_reward import PotentialReward
    from astra_gym.world_model.reward_model import RewardModel, get_reward_model_preset

    _, rewards = _manipulation_bundle_with_a_task(tmp_path)
    folder = make_bundle("plain", tmp_path / "wm", tmp_path / "vae", [rewards[None]], tmp_path / "plain")
    normalizer = ActionNormalizer("robot_command", SCALE)
    plain = save_reward_model(debug_bundle("manipulation", seed=5).reward_model, tmp_path / "plain-reader",
                              scenario="manipulation", feature="robot_command", normalizer=normalizer,
                              task="reach-push")  # fmt: skip
    add_reward_model(folder, plain, weights_dtype="float32")
    with pytest.raises(BundleError, match="needs one of reach or its potential reach-block"):
        load_bundle(folder, "manipulation", task="reach")  # its reach-push reader predicts no poses
    torch.manual_seed(0)
    config = get_reward_model_preset("debug", action_dim=7, pose_dim=9, pose_reward="reach-push")
    reader = save_reward_model(RewardModel(config), tmp_path / "pose-reader", scenario="manipulation",
                               feature="robot_command", normalizer=normalizer, task="reach-push")  # fmt: skip
    add_reward_model(folder, reader, weights_dtype="float32", replace=True)
    reach = load_bundle(folder, "manipulation", task="reach").reward_model
    assert isinstance(reach, PotentialReward) and reach.scale == 10.0
    assert reach.potential.config.pose_reward == "reach-block"
    assert _same_weights(reach.potential, load_reward_model(reader)[0])
    progress = load_bundle(folder, "manipulation", task="progress").reward_model
    assert progress.potential.config.pose_reward == "reach-push"  # the reader's own formula, unchanged
    frames, row = torch.rand(3, 2, 3, 64, 64) * 2 - 1, torch.zeros(3, 7)
    with torch.no_grad():
        poses = [reach.potential(frames[:, t : t + 1], row, poses=True)[2] for t in (0, 1)]
        gaps = [(p[:, 0:3] - p[:, 3:6]).norm(dim=1) for p in poses]
        torch.testing.assert_close(reach(frames, row)[0], 10.0 * (gaps[0] - gaps[1]))
