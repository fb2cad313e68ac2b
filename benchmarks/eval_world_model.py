"""Fidelity and action following of a world model on held-out simulator episodes.

From several starts of every held-out episode, the model is reset on real context frames and rolled
out for ``--chunks`` chunks under the recorded actions and, from the same start and noise, under
random actions of the data's random policy; the recorded continuation is the simulator's own
continuation under the recorded actions. Reported per chunk and overall: PSNR/SSIM, ΔPSNR (Genie),
the accuracy of an inverse-dynamics model trained on real frames on real vs generated video, the
reward model's error on real vs generated frames, and the VAE's reconstruction ceiling (see
:mod:`astra_gym.evaluation.rollouts` for the exact definitions).

Usage::

    python -m benchmarks.eval_world_model --checkpoint small-v0 --scenario drive \\
        --episodes data/heldout/drive --chunks 8 --context 4 --out results/eval_drive.json \\
        --idm results/idm_drive.safetensors --idm-train-episodes data/drive
    python -m benchmarks.eval_world_model --checkpoint debug --scenario explore --episodes data/explore \\
        --chunks 2 --starts-per-episode 1 --max-episodes 2 --out results/eval_debug.json   # plumbing check

``--checkpoint`` is a bundle name (``astra_gym/assets/models/NAME``), a bundle folder
(``python -m astra_gym.training.bundle``), a world-model folder (``save_pretrained``; give ``--vae``
unless its metadata names the VAE folder, and ``--reward-model`` to score rewards) or ``debug`` (the
tiny preset with random weights: tests the plumbing, its numbers mean nothing). The IDM is loaded
from ``--idm``; if that file does not exist and ``--idm-train-episodes`` is given, one is trained on
those (training-split) episodes and saved there first. ``--replay`` also runs the simulators (the
``sims`` extra): it checks that replaying the recorded actions reproduces the recording, and scores
the random-action rollouts against the simulator's continuation under the same random actions.

Writes one JSON file (``--out``; the command line is stored in it) and prints a markdown table.
"""

from __future__ import annotations

import dataclasses
import json
import math
import os
import shlex
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from astra_gym.data.action_codecs import INFERENCE_FEATURE
from astra_gym.data.episodes import Episode, episode_paths, load_episode
from astra_gym.envs.variants import bundled_model_path, installed_bundles
from astra_gym.evaluation.idm import (
    IDMTrainConfig,
    InverseDynamicsModel,
    action_labels,
    load_idm,
    make_idm_config,
    predict,
    save_idm,
    score_predictions,
    train_idm,
    transition_windows,
)
from astra_gym.evaluation.rollouts import (
    EvalPlan,
    evaluate_rollouts,
    make_starts,
    reconstruct,
    replay_continuations,
    run_rollouts,
)
from astra_gym.rollout.bundle import BundleError, debug_bundle, load_bundle, read_manifest
from astra_gym.rollout.engine import RolloutConfig, WorldModelRollout
from astra_gym.utils.atomic import atomic_write_text
from astra_gym.utils.cli_args import arg, parse_config
from astra_gym.utils.device import resolve_device
from astra_gym.world_model.checkpoints import read_pretrained_config
from benchmarks.common import environment_info

# ------------------------------------------------------------------------------------------------
# Loading the world model
# ------------------------------------------------------------------------------------------------


def load_world_model(args: Args, device: torch.device) -> tuple[WorldModelRollout, dict]:
    """(engine with the checkpoint's action normalisation, JSON description of what was loaded)."""
    overrides = {"num_denoise_steps": args.denoise_steps or None, "guidance_scale": args.guidance}
    overrides = {k: v for k, v in overrides.items() if v is not None}
    if args.checkpoint == "debug":
        engine = debug_bundle(args.scenario, seed=args.seed, device=device).engine(**overrides)
        info = {"kind": "debug (random weights)", "feature": INFERENCE_FEATURE[args.scenario]}
        return engine, {**info, "modality": engine.config.modality, "sampler": _sampler_info(engine.config)}
    folder = Path(args.checkpoint)
    if not folder.exists() and args.checkpoint in installed_bundles():
        folder = bundled_model_path(args.checkpoint)
    if not folder.is_dir():
        raise SystemExit(
            f"--checkpoint {args.checkpoint!r}: no such folder and no bundled model of that name (bundled: "
            f"{installed_bundles() or 'none'}); pass a bundle or save_pretrained folder, or 'debug'"
        )
    manifest = read_manifest(folder)
    entry = manifest["scenarios"].get(args.scenario)
    if entry is not None and entry["feature"] != INFERENCE_FEATURE[args.scenario]:
        raise SystemExit(
            f"{folder} conditions {args.scenario} on {entry['feature']!r}; this evaluation drives the model with "
            f"the commanded actions ({INFERENCE_FEATURE[args.scenario]!r}) and cannot evaluate pose-conditioned models"
        )
    try:
        bundle = load_bundle(folder, args.scenario, device, vae=args.vae, reward_model=args.reward_model)
    except BundleError as err:
        raise SystemExit(str(err)) from err
    engine = bundle.engine(**overrides)
    training = read_pretrained_config(manifest["world_model"])[1].get("training") or {}
    reward = args.reward_model or entry.get("reward_model")
    info = {
        "kind": "checkpoint",
        "world_model": str(manifest["world_model"]),
        "vae": str(args.vae or manifest["vae"]),
        "reward_model": None if reward is None else str(reward),
        "feature": entry["feature"],
        "modality": entry["modality"],
        "training": {k: v for k, v in training.items() if k != "config"},
        "training_datasets": (training.get("config") or {}).get("datasets", []),
        "sampler": _sampler_info(engine.config),
    }
    return engine, info


def _sampler_info(config: RolloutConfig) -> dict:
    """The sampler settings the rollouts actually use (checkpoint defaults + overrides)."""
    return {
        "num_denoise_steps": config.num_denoise_steps,
        "guidance_scale": config.guidance_scale,
        "shift": config.shift,
    }


# ------------------------------------------------------------------------------------------------
# Data, held-out check, IDM
# ------------------------------------------------------------------------------------------------


def load_heldout(args: Args) -> list[tuple[str, Episode]]:
    """(path, episode) pairs of ``--episodes`` of the scenario (at most ``--max-episodes``)."""
    paths = episode_paths(args.episodes)
    if not paths:
        raise SystemExit(
            f"no episode_*.hdf5 files in {args.episodes}; record held-out episodes with astra_gym.data.generate"
        )
    paths = paths[: args.max_episodes] if args.max_episodes else paths
    episodes = [(str(p), load_episode(p)) for p in paths]
    wrong = [p for p, ep in episodes if ep.scenario != args.scenario]
    if wrong:
        raise SystemExit(
            f"{len(wrong)} episodes are not {args.scenario!r} episodes (e.g. {wrong[0]}); check --episodes"
        )
    return episodes


def heldout_check(info: dict, episodes: list[tuple[str, Episode]]) -> dict:
    """Compares the held-out episodes with the world model's training caches (by source path and seed)."""
    seen_sources, seen_seeds, read = set(), set(), []
    for spec in info.get("training_datasets", []):
        index = Path(spec.get("root", "")) / "index.json"
        if not index.is_file():
            continue
        read.append(str(index.parent))
        for shard in json.loads(index.read_text(encoding="utf-8")).get("shards", []):
            for entry in shard.get("episodes", []):
                seen_sources.add(str(Path(entry.get("source", "")).resolve()))
                seen_seeds.add((entry.get("env_id"), entry.get("seed")))
    overlap = [p for p, ep in episodes if str(Path(p).resolve()) in seen_sources or (ep.env_id, ep.seed) in seen_seeds]
    return {"checked_caches": read, "overlapping_episodes": overlap}


def get_idm(
    args: Args,
    episodes: list[tuple[str, Episode]],
    device: torch.device,
    engine: WorldModelRollout | None = None,
) -> tuple[InverseDynamicsModel | None, dict]:
    """Loads ``--idm`` or trains it on ``--idm-train-episodes`` (then saves it to ``--idm``).

    With ``--idm-on-vae`` the IDM is trained on the ``engine``'s VAE reconstructions of the
    training episodes (it then judges video in the space the world model can produce).
    """
    if args.idm is None:
        return None, {"status": "skipped (no --idm)"}
    path = Path(args.idm)
    if path.is_file():
        idm, facts = load_idm(path, device)
        return _check_idm(idm, args, path, facts, episodes), {"path": str(path), "status": "loaded", **facts}
    if not args.idm_train_episodes:
        raise SystemExit(f"--idm {path} does not exist; pass --idm-train-episodes DIR (training split) to train it")
    train = [load_episode(p) for p in episode_paths(args.idm_train_episodes)]
    if not train:
        raise SystemExit(f"no episodes in --idm-train-episodes {args.idm_train_episodes}")
    if args.idm_on_vae:
        _log(f"reconstructing {len(train)} training episodes with the VAE for the IDM")
        train = [dataclasses.replace(ep, frames=reconstruct(engine, ep.frames[None])[0]) for ep in train]
    buttons = train[0].attrs.get("button_names", ()) if args.scenario == "explore" else ()
    config = make_idm_config(args.scenario, buttons, gripper=_fingers_move(train))
    settings = IDMTrainConfig(steps=args.idm_steps, batch_size=args.idm_batch_size)
    _log(f"training the IDM on {len(train)} episodes of {args.idm_train_episodes} ({settings.steps} steps)")
    idm, losses = train_idm(train, config, settings, generator=torch.Generator().manual_seed(args.seed), device=device)
    facts = {
        "train_episodes": str(args.idm_train_episodes),
        "num_train_episodes": len(train),
        "steps": settings.steps,
        "final_loss": float(np.mean(losses[-20:])),
        "heldout_full_episodes": _full_accuracy(idm, episodes),
        "train_seeds": sorted({(ep.env_id, ep.seed) for ep in train}),
        "trained_on": "vae_reconstructions" if args.idm_on_vae else "real_frames",
    }
    _check_idm(idm, args, path, facts, episodes)
    save_idm(idm, path, facts)
    return idm, {"path": str(path), "status": "trained", **facts}


def _fingers_move(episodes: list[Episode]) -> bool:
    """Whether the recorded finger opening varies by more than 1 cm.

    FetchPush-v4 blocks the fingers (they only settle by about 1 mm after a reset), so its IDM has no
    gripper head; FetchPickAndPlace-v4 opens them by several centimetres.
    """
    openings = [ep.poses["gripper"] for ep in episodes if "gripper" in ep.poses]
    return bool(openings) and float(np.ptp(np.concatenate(openings))) > 0.01


def _check_idm(
    idm: InverseDynamicsModel, args: Args, path: Path, facts: dict, episodes: list[tuple[str, Episode]]
) -> InverseDynamicsModel:
    """The IDM is for this scenario and was not trained on the held-out episodes."""
    if idm.config.scenario != args.scenario:
        raise SystemExit(f"--idm {path} recovers {idm.config.scenario!r} actions, not {args.scenario!r}")
    trained_on = facts.get("trained_on", "real_frames")
    if trained_on != ("vae_reconstructions" if args.idm_on_vae else "real_frames"):
        raise SystemExit(
            f"--idm {path} was trained on {trained_on.replace('_', ' ')}; "
            + ("drop --idm-on-vae" if not args.idm_on_vae else "pass a new --idm path to train one on reconstructions")
        )
    trained = {tuple(pair) for pair in facts.get("train_seeds", [])}
    overlap = [p for p, ep in episodes if (ep.env_id, ep.seed) in trained]
    if overlap and not args.allow_train_overlap:
        raise SystemExit(
            f"the IDM was trained on {len(overlap)} of the --episodes (e.g. {overlap[0]}); train it on the training "
            "split (--idm-train-episodes) or pass --allow-train-overlap"
        )
    return idm


def _full_accuracy(idm: InverseDynamicsModel, episodes: list[tuple[str, Episode]]) -> dict:
    """IDM scores over every transition of the held-out episodes (real video), without per-head details."""
    windows, labels = [], []
    for _, ep in episodes:
        steps = np.arange(idm.config.frames_before, ep.num_steps)
        windows.append(transition_windows(ep.frames, steps, idm.config.frames_before))
        labels.append(action_labels(idm.config, ep.actions, ep.attrs.get("button_names"))[steps])
    scores = score_predictions(predict(idm, np.concatenate(windows)), np.concatenate(labels), idm.config.heads)
    return {k: v for k, v in scores.items() if k != "per_head"}


# ------------------------------------------------------------------------------------------------
# Output
# ------------------------------------------------------------------------------------------------

_COLUMNS = (
    ("chunk", "chunk", "{}"),
    ("psnr", "PSNR (dB)", "{:.2f}"),
    ("ssim", "SSIM", "{:.3f}"),
    ("psnr_random", "PSNR rand. act.", "{:.2f}"),
    ("delta_psnr", "ΔPSNR (dB)", "{:+.2f}"),
    ("vae_recon_psnr", "VAE ceiling (dB)", "{:.2f}"),
    ("idm_real", "IDM bal. acc. real", "{:.3f}"),
    ("idm_vae_recon", "IDM bal. acc. VAE recon.", "{:.3f}"),
    ("idm_generated", "IDM bal. acc. gen.", "{:.3f}"),
    ("idm_generated_random", "IDM bal. acc. gen. rand.", "{:.3f}"),
    ("psnr_replay_random", "PSNR vs replay rand.", "{:.2f}"),
    ("reward_mae_real", "reward MAE real", "{:.3f}"),
    ("reward_mae_generated", "reward MAE gen.", "{:.3f}"),
)


def markdown_table(per_chunk: list[dict]) -> str:
    """The per-chunk rows as a markdown table (columns absent from every row are left out)."""
    columns = [c for c in _COLUMNS if any(c[0] in row for row in per_chunk)]
    lines = ["| " + " | ".join(c[1] for c in columns) + " |", "|" + "|".join("---:" for _ in columns) + "|"]
    for row in per_chunk:
        cells = [_cell(row.get(key), fmt) for key, _, fmt in columns]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def _cell(value: Any, fmt: str) -> str:
    if value is None:
        return "–"
    if isinstance(value, str):
        return value
    return fmt.format(value)


def summary_lines(summary: dict) -> list[str]:
    """Headline numbers under the table."""
    lines = [
        f"starts: {summary['num_starts']} from {summary['num_episodes']} held-out episodes",
        f"PSNR {summary['psnr']['mean_capped']:.2f} dB (exact frames: {summary['psnr']['num_inf']}), "
        f"SSIM {summary['ssim']['mean_capped']:.3f}, ΔPSNR {summary['delta_psnr']['mean_capped']:+.2f} dB, "
        f"VAE ceiling {summary['vae_recon_psnr']['mean_capped']:.2f} dB",
    ]
    if "idm" in summary:
        idm, real, gen = summary["idm"], summary["idm"]["real"], summary["idm"]["generated"]
        lines.append(
            f"IDM balanced accuracy: real {real['balanced_accuracy']:.3f}, VAE-reconstructed real "
            f"{idm['vae_recon']['balanced_accuracy']:.3f}, generated {gen['balanced_accuracy']:.3f} "
            f"(ratio {_fmt(idm['ratio_generated_to_real'])}, above-chance ratio {_fmt(idm['above_chance_ratio'])}), "
            f"generated under random actions {idm['generated_random']['balanced_accuracy']:.3f}; "
            f"chance {real['balanced_chance']:.3f}"
        )
        lines.append(
            f"IDM mean accuracy: real {real['mean_accuracy']:.3f}, generated {gen['mean_accuracy']:.3f}; "
            f"majority baseline {real['majority_baseline']:.3f}"
        )
    if "reward_model" in summary:
        rm = summary["reward_model"]
        lines.append(
            f"reward MAE: real {rm['real']['reward_mae']:.3f}, generated {rm['generated']['reward_mae']:.3f} "
            f"(target std {rm['target_reward_std']:.3f}); termination accuracy real "
            f"{rm['real']['termination_accuracy']:.3f}, generated {rm['generated']['termination_accuracy']:.3f}"
        )
    return lines


def _fmt(value: float | None) -> str:
    return "n/a" if value is None else f"{value:.3f}"


def _jsonable(value: Any) -> Any:
    """Nested value with non-finite floats as "inf"/"-inf"/"nan" strings and paths/tuples/arrays converted."""
    if isinstance(value, dict):
        return {str(k): _jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_jsonable(v) for v in value]
    if isinstance(value, np.ndarray):
        return _jsonable(value.tolist())
    if isinstance(value, (np.floating, float)):
        return float(value) if math.isfinite(value) else str(float(value))
    if isinstance(value, np.integer):
        return int(value)
    if isinstance(value, (Path, torch.device)):
        return str(value)
    return value


def write_json(path: str | os.PathLike, payload: dict) -> Path:
    """Strict JSON (no NaN/Infinity tokens), written atomically."""
    return atomic_write_text(path, json.dumps(_jsonable(payload), indent=2, allow_nan=False))


def _log(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


# ------------------------------------------------------------------------------------------------
# Main
# ------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Args:
    """Flags of ``eval_world_model`` (each field's help is its ``--help`` text)."""

    checkpoint: str = arg("", help="bundle name or folder, world-model folder, or 'debug' (required)")
    scenario: str = arg("", help=f"one of {sorted(INFERENCE_FEATURE)} (required)")
    episodes: str = arg("", help="folder of HELD-OUT episodes, never used in training (required)")
    chunks: int = arg(8, help="chunks generated per rollout")
    context: int = arg(4, help="real context frames per start")
    starts_per_episode: int = arg(4, help="evenly spaced starts per episode")
    max_episodes: int | None = arg(None, help="use only the first N episodes")
    out: str | None = arg(None, help="JSON results file (none: results/eval_<scenario>.json)")
    markdown: str | None = arg(None, help="also write the table to this file")
    idm: str | None = arg(None, help="IDM file (.safetensors); trained there if missing (see below)")
    idm_train_episodes: str | None = arg(None, help="training-split episodes to train a missing --idm on")
    idm_steps: int = arg(2000, help="IDM optimizer steps when training")
    idm_batch_size: int = arg(64, help="IDM batch size when training")
    idm_on_vae: bool = arg(
        False,
        help="train the IDM on the VAE's reconstructions of the training episodes (a judge of what the VAE can show)",
    )
    vae: str | None = arg(None, help="VAE folder (overrides the checkpoint's)")
    reward_model: str | None = arg(None, help="reward-model folder (overrides the bundle's)")
    replay: bool = arg(False, help="run the simulators: replay check + random-action truth")
    denoise_steps: int | None = arg(None, help="Euler steps per chunk (none: the checkpoint's)")
    guidance: float | None = arg(None, help="action-free guidance scale (none: the checkpoint's)")
    batch_size: int = arg(8, help="starts per engine call (2 rows each)")
    seed: int = arg(0, help="seed of random actions, rollout noise and the IDM")
    device: str = arg("cpu", help="cpu, cuda or auto")
    threads: int | None = arg(None, help="torch CPU threads (none: torch's)")
    allow_train_overlap: bool = arg(False, help="evaluate even if episodes were trained on")


def parse_args(argv: list[str] | None) -> Args:
    """The flags, with the required ones checked."""
    args = parse_config(Args, argv, __doc__)
    missing = [f"--{name}" for name in ("checkpoint", "scenario", "episodes") if not getattr(args, name)]
    if missing:
        raise SystemExit(f"eval_world_model needs {', '.join(missing)} (see --help)")
    if args.scenario not in INFERENCE_FEATURE:
        raise SystemExit(f"--scenario {args.scenario!r}: choose one of {sorted(INFERENCE_FEATURE)}")
    return args


def main(argv: list[str] | None = None) -> dict:
    """Runs the evaluation, writes the JSON and prints the table; returns the JSON payload."""
    args = parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    device = resolve_device(args.device)
    engine, model_info = load_world_model(args, device)
    episodes = load_heldout(args)
    check = heldout_check(model_info, episodes)
    if check["overlapping_episodes"] and not args.allow_train_overlap:
        raise SystemExit(
            f"{len(check['overlapping_episodes'])} --episodes were used to train the model (e.g. "
            f"{check['overlapping_episodes'][0]}); evaluate on held-out episodes or pass --allow-train-overlap"
        )
    plan = EvalPlan(
        args.scenario,
        args.context,
        args.chunks,
        engine.config.chunk_latents,
        engine.temporal_factor,
        args.starts_per_episode,
        args.seed,
    )
    starts = make_starts(episodes, plan)
    if not starts:
        raise SystemExit(
            f"no episode of {args.episodes} has the {plan.steps_needed} steps a start needs; "
            "lower --chunks or --context"
        )
    idm, idm_info = get_idm(args, episodes, device, engine)
    _log(f"rolling out {len(starts)} starts x 2 action sequences x {plan.chunks} chunks")
    outputs = run_rollouts(
        engine, starts, plan, args.batch_size, progress=lambda done, total: _log(f"  {done}/{total} starts")
    )
    real_random, replay_checks = replay_continuations(episodes, starts, plan) if args.replay else (None, None)
    results = evaluate_rollouts(starts, outputs, plan, idm, real_random)
    payload = {
        "benchmark": "eval_world_model",
        "command": "python -m benchmarks.eval_world_model " + shlex.join(sys.argv[1:] if argv is None else argv),
        "config": dataclasses.asdict(args),
        "plan": {**plan.__dict__, "frames_per_chunk": plan.frames_per_chunk, "horizon": plan.horizon},
        "model": model_info,
        "data": {"episodes": args.episodes, "num_episodes": len(episodes), "heldout_check": check},
        "idm": idm_info,
        "environment": environment_info(device),
        **results,
        "replay_check": replay_checks,
    }
    table = markdown_table(results["per_chunk"])
    text = "\n".join([table, "", *summary_lines(results["summary"])])
    print(text)
    if args.markdown:
        Path(args.markdown).parent.mkdir(parents=True, exist_ok=True)
        Path(args.markdown).write_text(f"`{payload['command']}`\n\n{text}\n", encoding="utf-8")
    out = write_json(args.out or f"results/eval_{args.scenario}.json", payload)
    _log(f"wrote {out}")
    return payload


if __name__ == "__main__":
    main()
