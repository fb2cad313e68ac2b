"""The loaded parts of one world model, from a trained bundle, the debug preset or the release.

An env needs more than the transformer: the VAE whose latents the model was trained on, the reward
model, the action normalisation and the rollout settings the model was trained for (action
modality, chunk size, sampler, FramePack layout). :class:`WorldModelBundle` holds them for one
scenario, and three loaders build it:

* :func:`load_bundle`: a folder written by ``python -m astra_gym.training.bundle`` (the format is
  documented there: ``bundle.json`` + ``world_model/`` + ``vae/`` + ``reward/<scenario>/``); the
  bundled variants ship theirs under ``astra_gym/assets/models/<name>/``.
* :func:`debug_bundle`: the weight-free test model (tiny presets, random weights from a fixed seed).
* :func:`release_bundle`: the authors' released checkpoint with the Wan2.1 VAE and text encoder (GPU).
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError
from torch import Tensor, nn

from astra_gym.data.action_codecs import FEATURES, INFERENCE_FEATURE
from astra_gym.rollout.engine import DEFAULT_LAYOUT, RolloutConfig, WorldModelRollout
from astra_gym.world_model.checkpoints import CheckpointError
from astra_gym.world_model.config import get_preset
from astra_gym.world_model.framepack import FramePackLayout
from astra_gym.world_model.potential_reward import PotentialReward
from astra_gym.world_model.reward_model import RewardModel, get_reward_model_preset
from astra_gym.world_model.vae import SmallVAE, VideoVAE, get_small_vae_preset

#: The bundle format (``bundle.json``), written by :func:`astra_gym.training.bundle.make_bundle`.
BUNDLE_FORMAT = "astra-gym-model-bundle"
BUNDLE_VERSION = 1
MANIFEST = "bundle.json"

__all__ = [
    "BUNDLE_FORMAT",
    "MANIFEST",
    "read_bundle",
    "read_run_folder",
    "read_manifest",
    "BundleError",
    "WorldModelBundle",
    "scenario_modality",
    "scenario_action_dim",
    "debug_bundle",
    "load_bundle",
    "release_bundle",
    "RELEASE_MODALITY",
]

# Our env frames: 64x64 RGB (8x8 latents with the 8x spatial VAEs).
DEFAULT_FRAME_SIZE = (64, 64)


class BundleError(CheckpointError):
    """A bundle folder is missing, incomplete or does not fit together."""


def scenario_modality(scenario: str) -> str:
    """Action modality a scenario's model is conditioned on (its command feature's modality)."""
    return FEATURES[_inference_feature(scenario)].modality


def scenario_action_dim(scenario: str) -> int:
    """Width d of the scenario's command rows (without the flag)."""
    return FEATURES[_inference_feature(scenario)].dim


def _inference_feature(scenario: str) -> str:
    try:
        return INFERENCE_FEATURE[scenario]
    except KeyError:
        raise ValueError(f"unknown scenario {scenario!r}; choose one of {sorted(INFERENCE_FEATURE)}") from None


@dataclass(frozen=True, eq=False)
class WorldModelBundle:
    """The loaded parts of one world model and the settings it was trained with.

    Attributes:
        transformer: The AstraTransformer (eval mode).
        vae: Its VAE (eval mode).
        reward_model: Its reward model (eval mode), or None (rewards unavailable).
        rollout: Rollout defaults (modality, chunk, steps, guidance, shift, layout); ``device`` and
            ``dtype`` say where the modules were loaded.
        scenario: Scenario the model was trained on ("drive", "manipulation", "explore").
        frame_size: (H, W) of the frames the model generates.
        text_context: [1, L, text_dim] features of the prompt every rollout row gets, or None.
        action_scale: Per-column divisor of the scenario's action rows (the model's action
            normalisation), or None for raw rows.
        action_stats: (mean, std) per column of the action rows of the model's training data, or
            None when unknown: where in the action space the model has seen data (planners start
            their search there, :func:`~astra_gym.agents.mpc.world_model.behaviour_prior`).
    """

    transformer: nn.Module
    vae: VideoVAE
    reward_model: RewardModel | PotentialReward | None
    rollout: RolloutConfig
    scenario: str
    frame_size: tuple[int, int] = DEFAULT_FRAME_SIZE
    text_context: Tensor | None = None
    action_scale: tuple[float, ...] | None = None
    action_stats: tuple[tuple[float, ...], tuple[float, ...]] | None = None

    def engine(self, **overrides: Any) -> WorldModelRollout:
        """A :class:`WorldModelRollout` over these modules with rollout settings ``overrides``."""
        config = self.rollout.replace(**overrides) if overrides else self.rollout
        return WorldModelRollout(
            self.transformer, self.vae, config, self.reward_model, self.text_context, self.action_scale
        )


# ------------------------------------------------------------------------------------------------
# Debug bundle
# ------------------------------------------------------------------------------------------------


def debug_bundle(scenario: str = "drive", seed: int = 0, device: str | torch.device = "cpu") -> WorldModelBundle:
    """The weight-free test bundle: debug transformer, debug SmallVAE and debug reward model.

    Weights are PyTorch's default initialisation drawn from ``seed`` (the global RNG is left
    untouched), except the transformer's output head, which Wan initialises to zero (the model would
    ignore its inputs); it gets N(0, 0.02) weights so that actions and history change the frames.

    Args:
        scenario: Fixes the action modality and the reward model's action width.
        seed: Seed of the weights.
        device: Device of the modules.
    """
    from astra_gym.world_model.transformer import AstraTransformer

    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        transformer = AstraTransformer(get_preset("debug"))
        nn.init.normal_(transformer.head.head.weight, std=0.02)
        vae = SmallVAE(get_small_vae_preset("debug"))
        reward_model = RewardModel(get_reward_model_preset("debug", scenario_action_dim(scenario)))
    rollout = RolloutConfig(modality=scenario_modality(scenario), num_denoise_steps=4, device=device)
    return WorldModelBundle(
        transformer=transformer.eval().to(device),
        vae=vae.eval().to(device),
        reward_model=reward_model.eval().to(device),
        rollout=rollout,
        scenario=scenario,
    )


# ------------------------------------------------------------------------------------------------
# Trained bundles (astra_gym.training.bundle)
# ------------------------------------------------------------------------------------------------


def _layout(data: dict | None) -> FramePackLayout:
    if not data:
        return DEFAULT_LAYOUT
    data = dict(data)
    data["patch_hw"] = tuple(data.get("patch_hw", DEFAULT_LAYOUT.patch_hw))
    return FramePackLayout(**data)


def _scenario_entry(manifest: dict, scenario: str, folder: Path) -> dict:
    entries = manifest.get("scenarios", {})
    if scenario not in entries:
        raise BundleError(f"the bundle {folder} has no {scenario!r} model; it was trained for {sorted(entries)}")
    return entries[scenario]


def read_bundle(folder: str | os.PathLike) -> dict[str, Any]:
    """The manifest of a bundle with every relative path resolved against ``folder``."""
    folder = Path(folder)
    path = folder / MANIFEST
    if not path.is_file():
        raise FileNotFoundError(f"no {MANIFEST} in {folder}; build one with `python -m astra_gym.training.bundle`")
    manifest = json.loads(path.read_text(encoding="utf-8"))
    if manifest.get("format") != BUNDLE_FORMAT or int(manifest.get("format_version", 0)) > BUNDLE_VERSION:
        raise ValueError(f"{path} is not a model bundle of this astra-gym version")
    manifest["world_model"] = folder / manifest["world_model"]
    manifest["vae"] = folder / manifest["vae"]
    for entry in manifest["scenarios"].values():
        if entry["reward_model"] is not None:
            entry["reward_model"] = folder / entry["reward_model"]
        entry["task_reward_models"] = {t: folder / p for t, p in entry.get("task_reward_models", {}).items()}
        if entry.get("frame_bank"):
            entry["frame_bank"] = folder / entry["frame_bank"]
    return manifest


def read_run_folder(folder: str | os.PathLike) -> dict[str, Any]:
    """A bundle-style manifest of a trainer's world-model folder (``save_pretrained`` output).

    Its ``extra`` config names the scenarios (modality, feature, action normalisation), the sampler,
    the layout and the VAE folder it was trained with; it holds no reward model (give one to
    :func:`load_bundle`).
    """
    from astra_gym.world_model.checkpoints import read_pretrained_config

    folder = Path(folder)
    _, extra = read_pretrained_config(folder)
    vae = (extra.get("vae") or {}).get("folder")
    return {
        "world_model": folder,
        "vae": None if vae is None else Path(vae),
        "scenarios": {name: {**entry, "reward_model": None} for name, entry in (extra.get("scenarios") or {}).items()},
        "chunk_latents": extra.get("chunk_latents"),
        "layout": extra.get("layout"),
        "sampler": extra.get("sampler"),
    }


def read_manifest(folder: str | os.PathLike) -> dict[str, Any]:
    """:func:`read_bundle` for a bundle folder, else :func:`read_run_folder` for a world-model folder."""
    return read_bundle(folder) if (Path(folder) / MANIFEST).is_file() else read_run_folder(folder)


def load_bundle(
    folder: str | os.PathLike,
    scenario: str,
    device: str | torch.device = "cpu",
    dtype: str | torch.dtype = "float32",
    *,
    vae: str | os.PathLike | None = None,
    reward_model: str | os.PathLike | None = None,
    task: str | None = None,
) -> WorldModelBundle:
    """Loads the ``scenario`` part of a trained bundle (``python -m astra_gym.training.bundle``) or of a
    trainer's world-model folder (:func:`read_run_folder`).

    Weights stay as stored (float32); ``dtype`` is the compute dtype of the rollouts.

    Args:
        folder: The bundle or world-model folder.
        scenario: The scenario to load.
        device, dtype: Where and in which compute dtype to run.
        vae: A VAE folder to use instead of the one the manifest names.
        reward_model: A reward-model folder to use instead of the manifest's (if any).
        task: The agent task whose reward model to load (:mod:`astra_gym.data.tasks`); None or the
            scenario's own task = the simulator's reward model.

    Raises:
        BundleError: The folder is not a bundle, lacks the scenario, or a part does not load (every
            message names the file and the fix).
    """
    from astra_gym.data.tasks import get_task
    from astra_gym.world_model.checkpoints import load_pretrained
    from astra_gym.world_model.vae_io import load_vae

    folder = Path(folder)
    if task is not None:
        get_task(scenario, task)  # an unknown task raises here, listing the scenario's tasks
    try:
        manifest = read_manifest(folder)
        entry = _scenario_entry(manifest, scenario, folder)
        vae = vae if vae is not None else manifest["vae"]
        if vae is None:
            raise BundleError(f"{folder} does not name its VAE folder; pass the train_vae output as vae=")
        potential_scale = pose_reward = None
        if reward_model is None:
            reward_model, potential_scale, pose_reward = _task_reward_model(entry, scenario, task, folder)
        sampler = manifest.get("sampler") or {}
        rollout = RolloutConfig(
            modality=entry["modality"],
            chunk_latents=int(manifest.get("chunk_latents") or 1),
            num_denoise_steps=int(sampler.get("num_denoise_steps", 4)),
            guidance_scale=float(sampler.get("guidance_scale", 1.0)),
            shift=float(sampler.get("shift", 5.0)),
            layout=_layout(manifest.get("layout")),
            device=device,
            dtype=dtype,
        )
        return WorldModelBundle(
            transformer=load_pretrained(manifest["world_model"], device=device, dtype=torch.float32),
            vae=load_vae(vae, device=device),
            reward_model=None
            if reward_model is None
            else _reward_model(reward_model, potential_scale, device, pose_reward),
            rollout=rollout,
            scenario=scenario,
            action_scale=tuple(entry["action_normalization"]["scale"]),
            action_stats=_action_stats(entry["action_normalization"]),
        )
    except BundleError:
        raise
    except (OSError, KeyError, TypeError, ValueError, RuntimeError, SafetensorError) as err:
        raise BundleError(
            f"could not load the {scenario!r} world model from {folder}: {err}. Rebuild the bundle with "
            "`python -m astra_gym.training.bundle`, or pass a trainer's world-model folder."
        ) from err


def _task_reward_model(
    entry: dict, scenario: str, task: str | None, folder: Path
) -> tuple[Path | None, float | None, str | None]:
    """The manifest's reward-model folder of ``task`` (None: the simulator's own reward), the potential
    scale when the folder holds the potential of a potential-based task (else None), and the pose formula
    to read it with when that differs from the folder's own (else None).

    A task's own reward model comes first. A potential-based task without one is read as the change
    of its potential's reward model (on Manipulation ``progress`` the own model plans better:
    ``benchmarks/RESULTS.md``, session 8). A potential with neither, but with a pose formula
    (:data:`~astra_gym.world_model.reward_model.POSE_REWARDS`), is read through a pose reader of
    another task that predicts the same poses (Manipulation ``reach`` through the ``reach-push``
    reader: the gripper-block distance of the positions it predicts).
    """
    from astra_gym.data.tasks import get_task

    spec = None if task is None else get_task(scenario, task)
    if spec is None or spec.native:
        return entry.get("reward_model"), None, None
    found = entry.get("task_reward_models", {})
    if task in found:
        return found[task], None, None
    if spec.potential is not None and spec.potential in found:
        return found[spec.potential], spec.potential_scale, None
    reader = _pose_reader_for(found, scenario, spec.potential)
    if reader is not None:
        return reader, spec.potential_scale, spec.potential
    wanted = task if spec.potential is None else f"{task} or its potential {spec.potential} (read as its change)"
    raise BundleError(
        f"{folder} has no reward model for the {scenario} task {task!r}: it needs one of {wanted} (it has: "
        f"{sorted(found) or 'none'}); train one with `python -m astra_gym.training.train_reward --task {task} "
        f"--action-norm {folder / 'world_model'} ...` and add it with `python -m astra_gym.training.add_reward "
        f"--bundle {folder} --reward FOLDER`, or leave task unset for the simulator's own reward"
    )


def _pose_reader_for(found: dict[str, Path], scenario: str, potential: str | None) -> Path | None:
    """A folder of ``found`` whose model computes its reward from the poses ``potential``'s formula reads."""
    from astra_gym.data.tasks import get_task
    from astra_gym.world_model.reward_io import read_reward_config
    from astra_gym.world_model.reward_model import POSE_REWARDS

    if potential not in POSE_REWARDS:
        return None
    keys = get_task(scenario, potential).pose_keys
    for name, path in sorted(found.items()):
        config = read_reward_config(path)["config"]
        if config.get("pose_reward") in POSE_REWARDS and get_task(scenario, name).pose_keys == keys:
            return path
    return None


def _reward_model(
    path: Path, potential_scale: float | None, device: str | torch.device, pose_reward: str | None = None
) -> nn.Module:
    """The reward model in ``path`` (computing ``pose_reward``'s formula when given); wrapped as the
    change of a potential when a scale is given."""
    from astra_gym.world_model.reward_io import load_reward_model

    model = load_reward_model(path, device=device)[0]
    if pose_reward is not None:
        model = model.with_pose_reward(pose_reward)
    return model if potential_scale is None else PotentialReward(model, potential_scale).eval()


def _action_stats(normalization: dict) -> tuple[tuple[float, ...], tuple[float, ...]] | None:
    """(mean, std) of the action rows from a manifest's ``action_normalization``, when it records both."""
    if not normalization.get("mean") or not normalization.get("std"):
        return None
    return tuple(map(float, normalization["mean"])), tuple(map(float, normalization["std"]))


# ------------------------------------------------------------------------------------------------
# The authors' release
# ------------------------------------------------------------------------------------------------

# Release modality per scenario: vehicle commands go into nuScenes' 7-D vehicle slot; robot
# commands (7-D) into Open-X's 12-D slot, zero-padded by the env. Keyboard actions have no release
# modality.
RELEASE_MODALITY = {"drive": "nuscenes", "manipulation": "openx"}
# The released model generates 480x832 frames (4x temporal Wan VAE).
RELEASE_FRAME_SIZE = (480, 832)


def release_bundle(
    astra_release: str | os.PathLike,
    wan: str | os.PathLike,
    prompt: str,
    scenario: str,
    device: str | torch.device = "cuda",
    dtype: str | torch.dtype = "bfloat16",
) -> WorldModelBundle:
    """The authors' released transformer with the Wan2.1 VAE and UMT5 text encoder (a GPU setup).

    The released model was trained on camera/vehicle/end-effector *poses* with the release's own
    FramePack quirks; our envs give it the scenario's *command* rows in the exact convention, so its
    frames follow the commands only loosely. It has no reward model: rewards are 0 and episodes
    end only by truncation. Not exercised by the CPU tests (no weights on the CPU machines).

    Args:
        astra_release: The release's ``diffusion_pytorch_model.ckpt``, or the folder
            ``python -m astra_gym.world_model.release_checkpoint`` converted it to (loads without the
            Wan base merge, faster).
        wan: Local diffusers-format Wan2.1-T2V-1.3B folder (transformer base, vae/, text_encoder/, tokenizer/).
        prompt: Text prompt of every rollout.
        scenario: "drive" or "manipulation" (:data:`RELEASE_MODALITY`).
        device: Device of the modules.
        dtype: Weight and compute dtype of the transformer (the release runs bf16).
    """
    from astra_gym.utils.device import resolve_device, resolve_dtype
    from astra_gym.world_model.checkpoints import load_pretrained
    from astra_gym.world_model.release_checkpoint import load_astra_release
    from astra_gym.world_model.text import UMT5TextEncoder
    from astra_gym.world_model.vae import WanVAE

    if scenario not in RELEASE_MODALITY:
        raise ValueError(
            f"the released Astra model has no action modality for scenario {scenario!r}; it supports "
            f"{sorted(RELEASE_MODALITY)} (keyboard actions need a model trained by astra-gym)"
        )
    device = resolve_device(device)
    weights_dtype = resolve_dtype(dtype, device)
    if Path(astra_release).is_dir():  # converted offline to our format
        transformer = load_pretrained(astra_release, device=device, dtype=weights_dtype)
    else:
        transformer = load_astra_release(astra_release, wan_path=wan, device=device, dtype=weights_dtype)
    vae = WanVAE.from_pretrained(wan, device=device, dtype=torch.float32)
    text_context = UMT5TextEncoder.from_pretrained(wan, device=device, dtype=weights_dtype).encode(prompt)
    rollout = RolloutConfig(
        modality=RELEASE_MODALITY[scenario], num_denoise_steps=50, guidance_scale=2.0, device=device, dtype=dtype
    )
    return WorldModelBundle(transformer, vae, None, rollout, scenario, RELEASE_FRAME_SIZE, text_context)
