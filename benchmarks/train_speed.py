"""World-model training throughput (samples/s) per transformer preset, on synthetic Drive latents.

Builds ``--episodes`` synthetic CarRacing-like episodes (random 64x64 frames, scripted driving;
no simulator needed), encodes them with an untrained SmallVAE of the ``detail`` preset (4x: 16x16
latents at 64x64 px; its latent channels follow each transformer preset, e.g. 16 for
``wan2.1-1.3b``; throughput does not depend on the weights), then runs the real trainer
(``train_world_model.train``) for ``--steps`` steps per preset and reports its own
``perf/samples_per_s`` over the steps after the first logging window (start-up excluded).

    python -m benchmarks.train_speed --presets small-p4 --batch-size 8 --steps 20 --out results/train_speed_cpu.json
    python -m benchmarks.train_speed --device cuda --presets small-p4 wan2.1-1.3b --batch-size 128 32 \\
        --mixed-precision bf16 --data-workers 8 --out results/train_speed_gpu.json
"""

from __future__ import annotations

import dataclasses
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import torch

from astra_gym.data.latent_cache import CacheConfig, build_latent_cache
from astra_gym.data.synthetic import drive_episode
from astra_gym.training import train_world_model
from astra_gym.training.data import DatasetSpec
from astra_gym.utils.cli_args import arg, parse_config
from astra_gym.utils.device import resolve_device
from astra_gym.world_model.checkpoints import load_pretrained
from astra_gym.world_model.config import get_preset
from astra_gym.world_model.vae import SmallVAE
from benchmarks.common import write_results


def build_cache(episodes: int, steps: int, channels: int, out: Path, device: torch.device) -> Path:
    """Encodes synthetic Drive episodes with an untrained ``detail`` VAE of ``channels`` latent channels."""
    torch.manual_seed(0)
    base = SmallVAE.from_preset("detail").config
    vae = SmallVAE(dataclasses.replace(base, latent_channels=channels)).to(device).eval()
    pairs = ((f"drive-{i}", drive_episode(steps // 2, steps - steps // 2, seed=i, size=64)) for i in range(episodes))
    build_latent_cache(pairs, vae, out, CacheConfig(episodes_per_shard=8))
    return out


def measure(preset: str, batch: int, cache: Path, args: Args, run_dir: Path) -> dict:
    """Trains ``preset`` for ``args.steps`` steps; returns its throughput row."""
    log_every = max(args.steps // 4, 1)
    cfg = dataclasses.replace(
        train_world_model.PRESETS["small-gpu" if args.device != "cpu" else "small-cpu"],
        datasets=(DatasetSpec(str(cache), "drive", 1.0),),
        model_preset=preset,
        batch_size=batch,
        total_steps=args.steps,
        warmup_steps=1,
        log_every=log_every,
        checkpoint_every=args.steps,
        preview_every=0,
        max_history=args.max_history,
        mixed_precision=args.mixed_precision,
        data_workers=args.data_workers,
        progress=False,
        run_dir=str(run_dir),
    )
    result = train_world_model.train(cfg)
    windows = [r["perf/samples_per_s"] for r in result.rows if "perf/samples_per_s" in r]
    steady = windows[1:] or windows  # the first window holds start-up and compilation
    params = sum(p.numel() for p in load_pretrained(result.final).parameters())
    return {
        "preset": preset,
        "parameters": params,
        "batch_size": batch,
        "steps": args.steps,
        "mixed_precision": args.mixed_precision,
        "data_workers": args.data_workers,
        "samples_per_s": sum(steady) / len(steady),
        "samples_per_s_windows": windows,
        "final_loss": next(r["train/loss"] for r in reversed(result.rows) if "train/loss" in r),
    }


@dataclass(frozen=True)
class Args:
    """Flags of ``train_speed`` (each field's help is its ``--help`` text)."""

    presets: tuple[str, ...] = arg(("small-p4",), help="transformer presets to train")
    batch_size: tuple[int, ...] = arg((8,), help="per preset (one value: all)")
    steps: int = arg(20, help="training steps per preset")
    episodes: int = arg(8, help="synthetic episodes")
    episode_steps: int = arg(64, help="steps per synthetic episode")
    max_history: int = arg(30, help="the trainer's --max-history")
    mixed_precision: Literal["no", "bf16"] = arg("no", help="the trainer's autocast")
    data_workers: int = arg(0, help="the trainer's batch-packing processes")
    device: str = arg("cpu", help="cpu or cuda (the trainer uses accelerate's device)")
    work: str | None = arg(None, help="scratch folder (none: a temporary one)")
    out: str = arg("results/train_speed.json", help="JSON results path")


def main(argv: list[str] | None = None) -> list[dict]:
    """Builds the data, trains each preset; prints and writes the rows."""
    args = parse_config(Args, argv, __doc__)
    batches = args.batch_size * len(args.presets) if len(args.batch_size) == 1 else args.batch_size
    if len(batches) != len(args.presets):
        raise SystemExit("--batch-size takes one value, or one per --presets entry")
    device = resolve_device(args.device)
    with tempfile.TemporaryDirectory(dir=args.work) as scratch:
        work = Path(scratch)
        rows, caches = [], {}
        for preset, batch in zip(args.presets, batches, strict=True):
            channels = get_preset(preset).in_channels
            if channels not in caches:
                cache = work / f"cache-{channels}"
                caches[channels] = build_cache(args.episodes, args.episode_steps, channels, cache, device)
            rows.append(measure(preset, batch, caches[channels], args, work / f"run-{preset}"))
            print(
                f"{preset:>12} {rows[-1]['parameters'] / 1e6:8.1f}M params  batch {batch:<4} "
                f"{rows[-1]['samples_per_s']:10.1f} samples/s",
                flush=True,
            )
    write_results(args.out, "train_speed", dataclasses.asdict(args), rows, device)
    return rows


if __name__ == "__main__":
    main()
