"""Does a VAE keep the details agents need? Reconstructions of held-out frames, judged by the task's details.

PSNR over a whole frame hides the loss of objects a few pixels big (the ego car, a goal marker).
For each scenario and VAE this encodes and decodes ``--frames`` held-out frames and reports PSNR,
the detail PSNR and, per detail of :mod:`astra_gym.evaluation.details`, how often the real frames
have it, how often the reconstruction keeps it, and the IoU of the two colour masks.

    python -m benchmarks.vae_details --vae small-v0 --vae drive-v5 \\
        --episodes drive=data/heldout/drive --episodes manipulation=data/heldout/manipulation \\
        --out benchmarks/results/vae_details.json

``--vae`` takes bundle names (``astra_gym/assets/models/<name>``) or VAE folders.
"""

from __future__ import annotations

import dataclasses
import sys
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from astra_gym.data.episodes import episode_paths, load_episode
from astra_gym.envs.variants import bundle_folder
from astra_gym.evaluation.details import detail_report
from astra_gym.evaluation.metrics import psnr
from astra_gym.utils.cli_args import arg, parse_config
from astra_gym.world_model.vae_io import load_vae, reconstruct_frames
from benchmarks.common import write_results

STATIC_SHARE = 0.5  # a moving detail's colour in half of the frames (spread over the episodes) is scenery


def held_out_frames(folder: str, count: int) -> np.ndarray:
    """uint8 [count, H, W, 3] frames spread evenly over the episodes of ``folder``."""
    paths = episode_paths(folder)
    if not paths:
        raise FileNotFoundError(f"no episodes in {folder}; record some with python -m astra_gym.data.generate")
    frames = np.concatenate([load_episode(p).frames for p in paths])
    index = np.linspace(0, len(frames) - 1, min(count, len(frames))).round().astype(np.int64)
    return frames[index]


def vae_folder(name_or_path: str) -> Path:
    """A VAE folder from a bundle name or a path (a bundle folder or a VAE folder)."""
    path = bundle_folder(name_or_path)
    return path / "vae" if (path / "vae").is_dir() else path


@dataclass(frozen=True)
class Args:
    """Flags of ``vae_details`` (each field's help is its ``--help`` text)."""

    vae: tuple[str, ...] = arg((), help="bundle name or VAE folder; repeat (required)", parse=str, append=True)
    episodes: tuple[str, ...] = arg(
        (), help="SCENARIO=FOLDER of held-out episodes; repeat (required)", parse=str, append=True
    )
    frames: int = arg(1000, help="frames per scenario")
    threads: int = arg(1, help="torch threads")
    out: str = arg("results/vae_details.json", help="JSON results path")


def main(argv: list[str] | None = None) -> list[dict]:
    """CLI (see the module docstring); returns the result rows."""
    args = parse_config(Args, argv, __doc__)
    if not args.vae or not args.episodes:
        raise SystemExit("give at least one --vae and one --episodes SCENARIO=FOLDER (see --help)")
    torch.set_num_threads(args.threads)
    rows = []
    for spec in args.episodes:
        scenario, folder = spec.split("=", 1)
        frames = held_out_frames(folder, args.frames)
        for name in args.vae:
            vae = load_vae(vae_folder(name))
            recon = reconstruct_frames(vae, frames)
            row = {"vae": name, "scenario": scenario, "latent": f"{vae.spatial_factor}x, {vae.latent_channels} ch"}
            row["psnr"] = float(np.minimum(psnr(frames, recon), 60).mean())
            row.update(detail_report(frames, recon, scenario, static_share=STATIC_SHARE))
            rows.append(row)
            print({k: round(v, 3) if isinstance(v, float) else v for k, v in row.items()})
    write_results(args.out, "vae_details", dataclasses.asdict(args), rows, torch.device("cpu"))
    return rows


if __name__ == "__main__":
    main(sys.argv[1:])
