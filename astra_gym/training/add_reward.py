"""Add a reward model (e.g. one for a dense agent task) to an existing bundle, keeping everything else.

Usage::

    python -m astra_gym.training.add_reward --bundle astra_gym/assets/models/small-v0 \\
        --reward runs/reward-manipulation-progress/final

The reward model's folder knows its scenario and task (``train_reward --task``); it is stored as
``reward/<scenario>-<task>/`` (``reward/<scenario>/`` for the simulator's own reward) and named in
``bundle.json``, so ``gym.make(id, task=...)`` finds it. The world model, VAE, the other reward
models and ``MODEL_CARD.md`` are copied unchanged (the card gets one line naming the new model). The
bundle is rewritten atomically: a crash leaves the old one.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from astra_gym.rollout.bundle import MANIFEST
from astra_gym.training.bundle import STORAGE_DTYPES, held_out_scores, reward_folder
from astra_gym.utils.atomic import atomic_folder
from astra_gym.utils.cli_args import arg, parse_config
from astra_gym.world_model.reward_io import copy_reward_model, read_reward_config

__all__ = ["add_reward_model", "main"]

logger = logging.getLogger(__name__)

_CARD_HEADING = "## Task reward models"


def add_reward_model(
    bundle: str | os.PathLike, reward: str | os.PathLike, weights_dtype: str = "float16", replace: bool = False
) -> Path:
    """Copies ``reward`` into ``bundle`` and names it in the manifest; returns the reward model's folder.

    Args:
        bundle: A bundle folder (``python -m astra_gym.training.bundle``'s output).
        reward: A reward-model folder (``train_reward``'s ``OUT/final``).
        weights_dtype: Storage dtype of its weights (``float16`` like the bundled models).
        replace: Replace a reward model the bundle already holds for the same scenario and task.

    Raises:
        ValueError: The bundle has no world model for the reward model's scenario, already holds
            one for its task (without ``replace``), its action normalisation differs from the world
            model's, or an unknown ``weights_dtype``.
    """
    if weights_dtype not in STORAGE_DTYPES:
        raise ValueError(f"weights_dtype={weights_dtype!r}: choose one of {sorted(STORAGE_DTYPES)}")
    bundle = Path(bundle)
    manifest = json.loads((bundle / MANIFEST).read_text(encoding="utf-8"))
    meta = read_reward_config(reward)
    scenario, task = meta["scenario"], meta["task"]
    entry = manifest["scenarios"].get(scenario)
    if entry is None:
        raise ValueError(f"{bundle} has no {scenario!r} world model (it has {sorted(manifest['scenarios'])})")
    if meta["action_normalization"]["scale"] != entry["action_normalization"]["scale"]:
        raise ValueError(
            f"reward model {reward} normalises actions differently from {bundle}'s world model; retrain it with "
            f"--action-norm {bundle / manifest['world_model']}"
        )
    relative = reward_folder(scenario, task)
    held = entry["reward_model"] if task is None else entry.get("task_reward_models", {}).get(task)
    if held is not None and not replace:
        raise ValueError(f"{bundle} already holds {held} for this scenario and task; pass replace=True (--replace)")
    if task is None:
        entry["reward_model"] = relative
    else:
        entry["task_reward_models"] = dict(sorted({**entry.get("task_reward_models", {}), task: relative}.items()))
    with atomic_folder(bundle) as tmp:
        shutil.copytree(bundle, tmp, dirs_exist_ok=True)
        shutil.rmtree(tmp / relative, ignore_errors=True)  # the replaced model, if any
        copy_reward_model(reward, tmp / relative, STORAGE_DTYPES[weights_dtype])
        (tmp / MANIFEST).write_text(json.dumps(manifest, indent=2, sort_keys=True), encoding="utf-8")
        _note_in_card(tmp / "MODEL_CARD.md", scenario, task, meta)
    logger.info("added %s to %s", relative, bundle)
    return bundle.absolute() / relative


def _note_in_card(card: Path, scenario: str, task: str | None, meta: dict) -> None:
    text = card.read_text(encoding="utf-8") if card.is_file() else ""
    if _CARD_HEADING not in text:
        text = text.rstrip("\n") + f"\n\n{_CARD_HEADING}\n"
    what = f"task `{task}`" if task else "the simulator's reward"
    line = f"- {scenario}, {what}: held-out {json.dumps(held_out_scores(meta))}"
    card.write_text(text.rstrip("\n") + f"\n{line}\n", encoding="utf-8")


@dataclass(frozen=True)
class Args:
    """Flags of ``python -m astra_gym.training.add_reward`` (each field's help is its ``--help`` text)."""

    bundle: str = arg(help="bundle folder to add to (rewritten atomically)")
    reward: str = arg(help="reward-model folder (train_reward's OUT/final; it knows its scenario and task)")
    weights_dtype: Literal["float32", "float16", "bfloat16"] = arg("float16", help="storage dtype of its weights")
    replace: bool = arg(False, help="replace the bundle's reward model of the same scenario and task")


def main(argv: Sequence[str] | None = None) -> None:
    """Command-line entry point (see the module docstring)."""
    args = parse_config(Args, argv, __doc__)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    add_reward_model(args.bundle, args.reward, args.weights_dtype, args.replace)


if __name__ == "__main__":
    main()
