"""Saving and loading trained :class:`~astra_gym.world_model.reward_model.RewardModel` folders.

A reward-model folder (written atomically)::

    reward.safetensors   state dict
    config.json          {"format": "astra-gym-reward-model", "format_version": 1,
                          "config": RewardModelConfig, "scenario": ..., "feature": ...,
                          "action_normalization": ActionNormalizer.to_dict(), "metrics": {...}}

The model reads action rows normalised with ``action_normalization`` (the world model's, when the
trainer was pointed at it), so an env applies one normalisation to the rows it gives both models.
"""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch
from safetensors.torch import load_file, save_file

from astra_gym.utils.atomic import atomic_folder
from astra_gym.world_model.reward_model import RewardModel, RewardModelConfig

if TYPE_CHECKING:  # the trainer's normaliser; only its to_dict() is written
    from astra_gym.training.normalization import ActionNormalizer

__all__ = ["REWARD_FORMAT", "save_reward_model", "load_reward_model", "read_reward_config", "copy_reward_model"]

REWARD_FORMAT = "astra-gym-reward-model"
REWARD_FORMAT_VERSION = 1
REWARD_WEIGHTS = "reward.safetensors"
_CONFIG = "config.json"


def save_reward_model(
    model: RewardModel,
    folder: str | os.PathLike,
    *,
    scenario: str,
    feature: str,
    normalizer: ActionNormalizer,
    metrics: dict[str, Any] | None = None,
    task: str | None = None,
) -> Path:
    """Writes ``model`` and its metadata to ``folder`` atomically (replaced as a whole).

    Args:
        model: The trained reward model.
        folder: Target folder.
        scenario: Scenario it scores (``"drive"``, ...).
        feature: Action feature of its rows (e.g. ``"vehicle_command"``).
        normalizer: Normalisation applied to the rows it was trained on.
        metrics: JSON-able held-out results.
        task: The agent task whose reward it learned (:mod:`astra_gym.data.tasks`); None = the
            simulator's own.

    Returns:
        The absolute folder.
    """
    meta = {
        "format": REWARD_FORMAT,
        "format_version": REWARD_FORMAT_VERSION,
        "config": model.config.to_dict(),
        "scenario": scenario,
        "task": task,
        "feature": feature,
        "action_normalization": normalizer.to_dict(),
        "metrics": dict(metrics or {}),
    }
    text = json.dumps(meta, indent=2, sort_keys=True, allow_nan=False)
    state = {k: v.detach().cpu().contiguous() for k, v in model.state_dict().items()}
    folder = Path(folder).absolute()
    with atomic_folder(folder) as tmp:
        save_file(state, str(tmp / REWARD_WEIGHTS))
        (tmp / _CONFIG).write_text(text, encoding="utf-8")
    return folder


def copy_reward_model(source: str | os.PathLike, target: str | os.PathLike, dtype: torch.dtype) -> Path:
    """Copies a reward-model folder with its weights stored as ``dtype`` (loading casts them back).

    Args:
        source: A reward-model folder (:func:`save_reward_model`'s).
        target: The folder to write (it must not exist; the caller writes it atomically).
        dtype: Storage dtype of the floating-point weights, e.g. ``torch.float16``.

    Returns:
        The absolute target folder.
    """
    source, target = Path(source), Path(target).absolute()
    read_reward_config(source)  # raises naming the problem if it is not a reward folder
    state = {
        k: v.to(dtype) if v.is_floating_point() else v for k, v in load_file(str(source / REWARD_WEIGHTS)).items()
    }
    target.mkdir(parents=True)
    save_file(state, str(target / REWARD_WEIGHTS))
    shutil.copy2(source / _CONFIG, target / _CONFIG)
    return target


def read_reward_config(folder: str | os.PathLike) -> dict[str, Any]:
    """The ``config.json`` of a reward-model folder (raises naming the problem if it is not one).

    ``task`` is None for the simulator's own reward (also in folders saved before tasks existed).
    """
    path = Path(folder) / _CONFIG
    if not path.is_file():
        raise FileNotFoundError(
            f"no {_CONFIG} in {folder}; train one with `python -m astra_gym.training.train_reward`"
        )
    meta = json.loads(path.read_text(encoding="utf-8"))
    if meta.get("format") != REWARD_FORMAT or int(meta.get("format_version", 0)) > REWARD_FORMAT_VERSION:
        raise ValueError(
            f"{path} is not a reward-model folder of this astra-gym version (format {meta.get('format')!r})"
        )
    meta.setdefault("task", None)
    return meta


def load_reward_model(
    folder: str | os.PathLike, device: torch.device | str = "cpu"
) -> tuple[RewardModel, dict[str, Any]]:
    """Loads a :func:`save_reward_model` folder (strict).

    Returns:
        (model in eval mode on ``device``, the folder's metadata).
    """
    meta = read_reward_config(folder)
    model = RewardModel(RewardModelConfig.from_dict(meta["config"]))
    model.load_state_dict(load_file(str(Path(folder) / REWARD_WEIGHTS)), strict=True)
    return model.to(device).eval(), meta
