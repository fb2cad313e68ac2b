"""Bundle a trained world model, its VAE and reward models into one model folder for the envs.

Usage::

    python -m astra_gym.training.bundle --name small-v0 --world-model runs/wm/final --vae runs/vae/final \\
        --reward runs/reward-drive/final --reward runs/reward-manipulation/final \\
        --reward runs/reward-explore/final --out astra_gym/assets/models/small-v0

Layout of a bundle (written atomically)::

    <name>/
        bundle.json        manifest: relative paths, per-scenario modality/feature/normalisation/reward model
                           and the simulator settings of the training data (``--sim-config``, if not the defaults)
        MODEL_CARD.md      what was trained on what, sizes, held-out metrics, limitations
        world_model/       save_pretrained folder (checkpoints.load_pretrained)
        vae/               vae_io folder (training.vae_io.load_vae)
        reward/<scenario>/ reward_io folders (training.reward_io.load_reward_model): the simulator's reward
        reward/<scenario>-<task>/  the same for a dense task (astra_gym.data.tasks), if trained
        frame_bank-<scenario>.npz  start contexts the envs use by default (``--frame-bank``), if given

Checks before anything is written: the VAE is the one the world model's latent caches were built
with (same identity hash), every reward model scores a scenario the world model was trained on,
and its action normalisation equals the world model's (else a warning: the env normalises once).
"""

from __future__ import annotations

import json
import logging
import math
import os
import shutil
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import torch

from astra_gym.data.latent_cache import same_latent_space
from astra_gym.data.sims import resolve_sim_config
from astra_gym.rollout.bundle import BUNDLE_FORMAT, BUNDLE_VERSION, MANIFEST
from astra_gym.utils.atomic import atomic_folder
from astra_gym.utils.cli_args import arg, parse_config
from astra_gym.world_model.checkpoints import load_pretrained, read_pretrained_config, save_pretrained
from astra_gym.world_model.reward_io import copy_reward_model, read_reward_config
from astra_gym.world_model.vae_io import read_vae_config

__all__ = ["held_out_scores", "make_bundle", "main", "reward_folder"]

logger = logging.getLogger(__name__)

STORAGE_DTYPES = {
    "float32": torch.float32,
    "float16": torch.float16,
    "bfloat16": torch.bfloat16,
    "int8": torch.float16,
}
"""Float dtype of the stored weights per ``--weights-dtype``; ``int8`` also stores the world model's weight
matrices as int8 with a float16 scale per 32 inputs (``save_pretrained(..., int8=True)``)."""


def _check_vae(extra: Mapping[str, Any], vae_meta: Mapping[str, Any], allow_mismatch: bool) -> None:
    expected_identity = extra.get("vae", {}).get("identity", {})
    expected, found = expected_identity.get("hash"), vae_meta["identity"]["hash"]
    if not same_latent_space(expected_identity, vae_meta["identity"]):
        message = (
            f"the VAE (identity {found}) is not the one the world model's latent caches were built with ({expected}); "
            "pass the VAE whose weights encoded the caches"
        )
        if not allow_mismatch:
            raise ValueError(message + " (or --allow-vae-mismatch if only its metadata differs)")
        logger.warning(message)


RewardKey = tuple[str, str | None]  # (scenario, task; None = the simulator's own reward)


def reward_folder(scenario: str, task: str | None) -> str:
    """A reward model's folder inside a bundle: ``reward/<scenario>`` or ``reward/<scenario>-<task>``."""
    return f"reward/{scenario}" if task is None else f"reward/{scenario}-{task}"


def _reward_entries(
    extra: Mapping[str, Any], rewards: Sequence[str | os.PathLike]
) -> dict[RewardKey, tuple[Path, dict]]:
    """{(scenario, task): (folder, metadata)}, checked against the world model's scenarios."""
    entries: dict[RewardKey, tuple[Path, dict]] = {}
    for folder in rewards:
        meta = read_reward_config(folder)
        key = (meta["scenario"], meta["task"])
        scenario = key[0]
        if scenario not in extra.get("scenarios", {}):
            raise ValueError(f"reward model {folder} scores {scenario!r}, which the world model was not trained on")
        if key in entries:
            what = f"task {key[1]!r}" if key[1] else "the simulator's own reward"
            raise ValueError(f"two reward models for {scenario!r}, {what}: {entries[key][0]} and {folder}")
        expected = extra["scenarios"][scenario]["action_normalization"]["scale"]
        if meta["action_normalization"]["scale"] != expected:
            logger.warning(
                "reward model %s normalises actions differently from the world model; retrain it with "
                "--action-norm pointing at the world-model folder",
                folder,
            )
        entries[key] = (Path(folder), meta)
    return entries


def _manifest(
    name: str, extra: Mapping[str, Any], rewards: Mapping[RewardKey, tuple[Path, dict]], sim_config: Mapping[str, Any]
) -> dict[str, Any]:
    scenarios = {}
    for scenario, entry in extra["scenarios"].items():
        scenarios[scenario] = {
            **entry,
            "reward_model": reward_folder(scenario, None) if (scenario, None) in rewards else None,
        }
        resolved = resolve_sim_config(scenario, **sim_config) if sim_config else {}
        if resolved:
            scenarios[scenario]["sim_config"] = resolved
        tasks = {task: reward_folder(scenario, task) for s, task in rewards if s == scenario and task is not None}
        if tasks:
            scenarios[scenario]["task_reward_models"] = dict(sorted(tasks.items()))
    return {
        "format": BUNDLE_FORMAT,
        "format_version": BUNDLE_VERSION,
        "name": name,
        "world_model": "world_model",
        "vae": "vae",
        "scenarios": scenarios,
        "chunk_latents": extra.get("chunk_latents"),
        "layout": extra.get("layout"),
        "sampler": extra.get("sampler"),
    }


def _model_card(
    name: str,
    config: Any,
    extra: Mapping[str, Any],
    vae_meta: Mapping,
    rewards: Mapping,
    manifest: Mapping | None = None,
) -> str:
    training = extra.get("training", {})
    datasets = training.get("config", {}).get("datasets", [])
    lines = [
        f"# {name}",
        "",
        "An Astra-style action-conditioned video world model (flow-matching DiT with FramePack history and a "
        "Mixture of Action Experts), trained by astra-gym on recordings of real simulators.",
        "",
        "## Contents",
        f"- world model: {config.num_layers} blocks, width {config.dim}, routing {config.routing}, "
        f"{config.num_experts} experts; {training.get('step')} steps, {training.get('samples_seen')} samples, "
        f"{training.get('weights')} weights",
        f"- VAE: SmallVAE preset {vae_meta.get('preset')}, held-out PSNR "
        f"{vae_meta.get('metrics', {}).get('holdout_psnr_db')} dB",
        f"- chunk: {extra.get('chunk_latents')} latent(s); sampler: {extra.get('sampler')}",
    ]
    train_config = training.get("config", {})
    if train_config.get("distill_from"):
        distill = train_config.get("distill", {})
        lines.append(
            f"- distilled from {train_config['distill_from']} (teacher: {distill.get('teacher_steps')} steps, "
            f"guidance {distill.get('teacher_guidance')}; student: {distill.get('student_steps')} step(s))"
        )
    lines += [
        "",
        "## Scenarios",
    ]
    for scenario, entry in extra["scenarios"].items():
        reward = rewards.get((scenario, None))
        lines.append(
            f"- {scenario}: modality {entry['modality']}, feature {entry['feature']}; reward model: "
            f"{'held-out ' + json.dumps(held_out_scores(reward[1])) if reward else 'none'}"
        )
        sim_config = (manifest or {}).get("scenarios", {}).get(scenario, {}).get("sim_config")
        if sim_config:
            lines.append(f"  - recorded with simulator settings {json.dumps(sim_config)}")
        for (s, task), (_, meta) in sorted(rewards.items(), key=str):
            if s == scenario and task is not None:
                lines.append(f"  - task {task}: reward model held-out {json.dumps(held_out_scores(meta))}")
    lines += ["", "## Training data"]
    lines += [f"- {d.get('scenario')}: {d.get('root')} (weight {d.get('weight')})" for d in datasets]
    lines += [
        "",
        "## Limitations",
        "- Trained on a few simulators at 64x64; frames outside that distribution are not modelled.",
        "- Long rollouts drift; rewards and terminations come from a separate per-frame model and inherit its errors.",
        "- Action rows must be normalised with `scenarios[s].action_normalization` of bundle.json before use.",
        "",
    ]
    return "\n".join(lines)


def held_out_scores(meta: Mapping[str, Any]) -> dict[str, Any]:
    """The ``eval/*`` metrics a reward-model folder's metadata records (for model cards)."""
    return {k: v for k, v in meta["metrics"].items() if k.startswith("eval/")}


def make_bundle(
    name: str,
    world_model: str | os.PathLike,
    vae: str | os.PathLike,
    rewards: Sequence[str | os.PathLike],
    out: str | os.PathLike,
    allow_vae_mismatch: bool = False,
    weights_dtype: str = "float32",
    guidance: float | None = None,
    sim_config: Mapping[str, Any] | None = None,
    frame_banks: Sequence[str | os.PathLike] = (),
) -> Path:
    """Checks and copies the parts into ``out`` (replaced atomically as a whole); returns it.

    ``weights_dtype`` (``float32``, ``float16``, ``bfloat16`` or ``int8``) is the storage dtype of the
    world-model and reward-model weights (float16 halves the size; ``int8`` stores the world model's
    weight matrices as int8 with a float16 scale per 32 inputs, and the rest in float16; the envs compute in
    float32 either way). The VAE is copied as it is: its weights digest is the identity its latents carry.
    ``guidance`` replaces the action-free guidance scale of the sampler the world model was trained
    with (1 = none): a model warm-started from another variant's teacher may need another scale.
    ``sim_config`` names the simulator settings the training data was recorded with where they differ
    from the defaults (e.g. ``{"camera": "front"}``); the manifest records them resolved, and real
    starts, frame banks and real simulators of the benchmarks follow them
    (:func:`~astra_gym.envs.core.model_sim_config`). ``frame_banks`` are start contexts the bundle
    carries (one per scenario, recorded with those settings); the envs start from them by default.
    """
    if weights_dtype not in STORAGE_DTYPES:
        raise ValueError(f"weights_dtype={weights_dtype!r}: choose one of {sorted(STORAGE_DTYPES)}")
    if guidance is not None and not (math.isfinite(guidance) and guidance >= 0):
        raise ValueError(f"guidance={guidance} must be a finite scale >= 0 (1 = no action-free guidance)")
    config, extra = read_pretrained_config(world_model)
    vae_meta = read_vae_config(vae)
    _check_vae(extra, vae_meta, allow_vae_mismatch)
    reward_entries = _reward_entries(extra, rewards)
    bundled = dict(extra)  # what the bundle runs: the training sampler unless --guidance replaces its scale
    if guidance is not None:
        bundled["sampler"] = {**(extra.get("sampler") or {}), "guidance_scale": float(guidance)}
    manifest = _manifest(name, bundled, reward_entries, sim_config or {})
    banks = _bank_entries(manifest, frame_banks)
    card = _model_card(name, config, bundled, vae_meta, reward_entries, manifest)
    with atomic_folder(out) as tmp:
        if weights_dtype == "float32":
            shutil.copytree(world_model, tmp / "world_model")
        else:
            weights = load_pretrained(world_model, dtype=STORAGE_DTYPES[weights_dtype])
            save_pretrained(weights, tmp / "world_model", extra, int8=weights_dtype == "int8")
        shutil.copytree(vae, tmp / "vae")
        for (scenario, task), (folder, _) in reward_entries.items():
            copy_reward_model(folder, tmp / reward_folder(scenario, task), STORAGE_DTYPES[weights_dtype])
        for scenario, path in banks.items():
            shutil.copyfile(path, tmp / manifest["scenarios"][scenario]["frame_bank"])
        (tmp / MANIFEST).write_text(json.dumps(manifest, indent=2, sort_keys=True), encoding="utf-8")
        (tmp / "MODEL_CARD.md").write_text(card, encoding="utf-8")
    logger.info("wrote bundle %s to %s", name, out)
    return Path(out).absolute()


def _bank_entries(manifest: dict[str, Any], frame_banks: Sequence[str | os.PathLike]) -> dict[str, Path]:
    """{scenario: bank file}; names each bank in ``manifest`` after checking its scenario and settings."""
    from astra_gym.envs.core import check_bank_matches
    from astra_gym.envs.frame_bank import load_frame_bank

    banks: dict[str, Path] = {}
    for path in frame_banks:
        bank = load_frame_bank(Path(path))
        entry = manifest["scenarios"].get(bank.scenario)
        if entry is None or bank.scenario in banks:
            raise ValueError(
                f"frame bank {path} holds {bank.scenario!r} contexts; give one bank per scenario of the world "
                f"model ({sorted(manifest['scenarios'])})"
            )
        check_bank_matches(bank, bank.scenario, entry.get("sim_config") or {})
        banks[bank.scenario] = Path(path)
        entry["frame_bank"] = f"frame_bank-{bank.scenario}.npz"
    return banks


def sim_setting(text: str) -> tuple[str, Any]:
    """``"KEY=VALUE"`` as (key, int, float or the string), e.g. ``camera=front`` or ``frame_skip=4``."""
    key, sep, value = text.partition("=")
    if not sep or not key:
        raise SystemExit(f"--sim-config {text!r}: write KEY=VALUE, e.g. camera=front")
    for convert in (int, float):
        try:
            return key, convert(value)
        except ValueError:
            pass
    return key, value


@dataclass(frozen=True)
class Args:
    """Flags of ``python -m astra_gym.training.bundle`` (each field's help is its ``--help`` text)."""

    name: str = arg(help="bundle name (the folder name under astra_gym/assets/models)")
    world_model: str = arg(help="world-model folder (train_world_model's RUN/final)")
    vae: str = arg(help="VAE folder (train_vae's OUT/final)")
    out: str = arg(help="bundle folder to write (replaced as a whole)")
    reward: tuple[str, ...] = arg(
        (), help="reward-model folder (repeat per scenario and task; each knows its own)", parse=str, append=True
    )
    allow_vae_mismatch: bool = arg(False, help="warn instead of failing on a VAE hash mismatch")
    weights_dtype: Literal["float32", "float16", "bfloat16", "int8"] = arg(
        "float32",
        help="storage dtype of the world-model and reward weights (float16 halves the size; int8 stores the world "
        "model's weight matrices as int8 with a scale per 32 inputs; compute stays float32)",
    )
    guidance: float | None = arg(
        None, help="action-free guidance scale of the bundle's sampler (none: the world model's training sampler)"
    )
    sim_config: tuple[str, ...] = arg(
        (), help="KEY=VALUE simulator setting the training data was recorded with, e.g. camera=front (repeat)",
        parse=str, append=True,
    )  # fmt: skip
    frame_bank: tuple[str, ...] = arg(
        (), help="start contexts (.npz of astra_gym.envs.frame_bank) the envs use by default (one per scenario)",
        parse=str, append=True,
    )  # fmt: skip


def main(argv: Sequence[str] | None = None) -> None:
    """Command-line entry point (see the module docstring)."""
    args = parse_config(Args, argv, __doc__)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    make_bundle(
        args.name,
        args.world_model,
        args.vae,
        args.reward,
        args.out,
        args.allow_vae_mismatch,
        args.weights_dtype,
        args.guidance,
        dict(map(sim_setting, args.sim_config)),
        args.frame_bank,
    )


if __name__ == "__main__":
    main()
