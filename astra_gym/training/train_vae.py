"""Train the per-frame :class:`~astra_gym.world_model.vae.SmallVAE` on recorded episode frames.

Usage::

    python -m astra_gym.training.train_vae --preset small --out runs/vae \\
        --episodes data/drive --episodes data/manipulation --episodes data/explore

Every step draws a batch of frames: each row picks a folder uniformly (so every scenario gets the
same share whatever its size), then a frame uniformly among that folder's training frames. The
loss is the VAE's own reconstruction + KL (:meth:`SmallVAE.loss`). At the end the latent
normalisation (per-channel mean/std of the posterior means) is set from ``--stats-frames``
training frames, the reconstruction PSNR is measured on frames of held-out episodes (also
logged every ``--eval-every`` steps as ``eval/psnr``), and the VAE is saved atomically to
``<out>/final`` (:mod:`astra_gym.world_model.vae_io`). Metrics go to ``<out>/metrics.csv`` and
TensorBoard. The run is short on purpose and not resumable; a failed run is simply restarted.
``--init-from`` fine-tunes a saved VAE instead (e.g. Drive's detail VAE on other simulators' frames).
"""

from __future__ import annotations

import logging
import math
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from astra_gym.training.checkpointing import step_generator
from astra_gym.training.episode_data import load_split
from astra_gym.training.loop import config_dict, run_steps
from astra_gym.training.metrics import MetricWriter
from astra_gym.training.optim import cosine_schedule, make_adamw, optimizer_step
from astra_gym.utils.cli_args import arg, parse_preset_config
from astra_gym.utils.device import resolve_device
from astra_gym.utils.pixels import uint8_to_pixels
from astra_gym.world_model.vae import SmallVAE, get_small_vae_preset
from astra_gym.world_model.vae_io import load_vae, save_vae

__all__ = ["VaeTrainConfig", "PRESETS", "FramePool", "psnr", "train_vae", "main"]

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class VaeTrainConfig:
    """Everything a VAE training run reads (each field is a CLI flag; see ``--help``)."""

    episodes: tuple[str, ...] = arg((), "episode folder (one per scenario); repeat the flag", parse=str, append=True)
    vae_preset: str = arg("small", "SmallVAE preset (architecture): small, detail or debug")
    init_from: str | None = arg(
        None, "saved VAE folder to fine-tune (its architecture must be --vae-preset's); none = a fresh init"
    )
    kl_weight: float | None = arg(None, "override of the preset's KL weight (none = keep)")
    batch_size: int = arg(32, "frames per step")
    total_steps: int = arg(20000, "optimizer steps")
    lr: float = arg(2e-4, "peak AdamW learning rate")
    min_lr_ratio: float = arg(0.1, "final learning rate as a fraction of --lr (cosine decay)")
    warmup_steps: int = arg(200, "linear learning-rate warm-up steps")
    weight_decay: float = arg(0.0, "AdamW weight decay (conv kernels only)")
    max_grad_norm: float = arg(1.0, "gradient clipping norm (0 = off)")
    holdout_fraction: float = arg(0.1, "share of each folder's episodes held out for PSNR")
    eval_every: int = arg(1000, "steps between held-out PSNR measurements (0 = only at the end)")
    eval_frames: int = arg(256, "held-out frames per PSNR measurement")
    stats_frames: int = arg(4096, "training frames used to set the latent mean/std")
    seed: int = arg(0, "seed of the split, the init and every random draw")
    device: str = arg("auto", "torch device: auto, cpu, cuda, cuda:N")
    out: str = arg("runs/vae", "output folder (the VAE is saved to OUT/final)")
    log_every: int = arg(50, "steps between metric rows")
    tensorboard: bool = arg(True, "also write TensorBoard event files")
    progress: bool = arg(True, "show a tqdm progress bar")

    def __post_init__(self) -> None:
        get_small_vae_preset(self.vae_preset)
        for name in ("batch_size", "total_steps", "eval_frames", "stats_frames", "log_every"):
            if getattr(self, name) < 1:
                raise ValueError(f"--{name.replace('_', '-')}={getattr(self, name)} must be >= 1")

    def vae_config(self):
        """The SmallVAE config: the preset, with the KL weight override."""
        config = get_small_vae_preset(self.vae_preset)
        return config if self.kl_weight is None else config.replace(kl_weight=self.kl_weight)


PRESETS: dict[str, VaeTrainConfig] = {
    "debug": VaeTrainConfig(
        vae_preset="debug",
        batch_size=4,
        total_steps=10,
        warmup_steps=2,
        eval_every=5,
        eval_frames=8,
        stats_frames=16,
        log_every=1,
        tensorboard=False,
    ),
    "small": VaeTrainConfig(vae_preset="small"),
    # 4x compression with the detail-weighted loss (keeps the ego car, dashboard bars, goal marker).
    "detail": VaeTrainConfig(vae_preset="detail"),
}


class FramePool:
    """All frames of some episodes grouped per folder, as uint8 arrays.

    Args:
        groups: Per folder, its episodes.
    """

    def __init__(self, groups: Sequence[Sequence]) -> None:
        self.frames = [np.concatenate([ep.frames for ep in eps]) for eps in groups if eps]
        shapes = {f.shape[1:] for f in self.frames}
        if len(shapes) != 1:
            raise ValueError(
                f"all episodes must have frames of one size, got {sorted(shapes)}; record with one --size"
            )
        logger.info(
            "frame pool: %d frames, %.1f MB",
            sum(len(f) for f in self.frames),
            sum(f.nbytes for f in self.frames) / 2**20,
        )

    def __len__(self) -> int:
        return sum(len(f) for f in self.frames)

    def sample(self, count: int, generator: torch.Generator) -> torch.Tensor:
        """``count`` frames, folder uniform then frame uniform: float [count, 3, 1, H, W] in [-1, 1]."""
        folders = torch.randint(len(self.frames), (count,), generator=generator).tolist()
        picks = [self.frames[g][int(torch.randint(len(self.frames[g]), (), generator=generator))] for g in folders]
        return uint8_to_pixels(np.stack(picks))[:, :, None]

    def first(self, count: int) -> torch.Tensor:
        """Up to ``count`` frames spread evenly over the pool (deterministic): [N, 3, 1, H, W]."""
        frames = np.concatenate(self.frames)
        index = np.linspace(0, len(frames) - 1, min(count, len(frames))).round().astype(np.int64)
        return uint8_to_pixels(frames[index])[:, :, None]


def psnr(reconstruction: torch.Tensor, pixels: torch.Tensor) -> float:
    """Peak signal-to-noise ratio in dB of two videos in [-1, 1] (peak = the full range 2)."""
    mse = float((reconstruction.float() - pixels.float()).pow(2).mean())
    return float("inf") if mse == 0 else 10.0 * math.log10(4.0 / mse)


@torch.no_grad()
def evaluate_psnr(vae: SmallVAE, pixels: torch.Tensor, batch: int = 64) -> float:
    """PSNR of ``vae.decode(vae.encode(x))`` against ``x`` [N, 3, 1, H, W] (deterministic)."""
    recon = torch.cat(
        [vae.decode(vae.encode(pixels[i : i + batch].to(vae.device))).cpu() for i in range(0, len(pixels), batch)]
    )
    return psnr(recon, pixels)


@torch.no_grad()
def set_latent_stats(vae: SmallVAE, pixels: torch.Tensor, batch: int = 64) -> None:
    """Sets the VAE's latent normalisation to the exact per-channel mean/std over ``pixels``."""
    vae.latent_count.zero_()
    for i in range(0, len(pixels), batch):
        vae.update_latent_stats(vae.encode_raw(pixels[i : i + batch].to(vae.device)))


def _step(vae: SmallVAE, pool: FramePool, optimizer, scheduler, cfg: VaeTrainConfig, step: int) -> dict[str, float]:
    """One optimizer step; returns scalar logs."""
    pixels = pool.sample(cfg.batch_size, step_generator(cfg.seed, "data", step)).to(vae.device)
    loss, logs = vae.loss(pixels, step_generator(cfg.seed, "noise", step))
    loss.backward()
    lr, norm = optimizer_step(vae, optimizer, scheduler, cfg.max_grad_norm)
    return {**{f"train/{k}": float(v) for k, v in logs.items()}, "train/lr": lr, "train/grad_norm": float(norm)}


def train_vae(cfg: VaeTrainConfig) -> Path:
    """Trains, normalises, evaluates and saves a SmallVAE; returns the saved folder."""
    device = resolve_device(cfg.device)
    vae = _initial_vae(cfg).to(device).train()  # first: a wrong --init-from fails before the frames load
    split = load_split(cfg.episodes, cfg.holdout_fraction, step_generator(cfg.seed, "split", 0))
    pool, held = FramePool(split.train), FramePool(split.holdout) if any(split.holdout) else None
    optimizer = make_adamw(vae, cfg.lr, cfg.weight_decay)
    scheduler = cosine_schedule(optimizer, cfg.warmup_steps, cfg.total_steps, cfg.min_lr_ratio)
    keys = ["train/loss", "train/recon", "train/kl", "train/lr", "train/grad_norm", "perf/samples_per_s", "eval/psnr"]
    writer = MetricWriter(cfg.out, keys, 0, cfg.tensorboard)
    eval_pixels = held.first(cfg.eval_frames) if held is not None else None
    try:
        _loop(vae, pool, eval_pixels, optimizer, scheduler, cfg, writer)
        vae.eval()
        set_latent_stats(vae, pool.first(cfg.stats_frames))
        metrics = {"steps": cfg.total_steps, "train_frames": len(pool)}
        if eval_pixels is not None:
            metrics["holdout_psnr_db"] = evaluate_psnr(vae, eval_pixels)
            writer.write(cfg.total_steps, {"eval/psnr": metrics["holdout_psnr_db"]})
    finally:
        writer.close()
    metrics["config"] = config_dict(cfg)
    folder = save_vae(vae.cpu(), Path(cfg.out) / "final", cfg.vae_preset, metrics)
    logger.info("saved VAE to %s (held-out PSNR %s dB)", folder, metrics.get("holdout_psnr_db"))
    return folder


def _initial_vae(cfg: VaeTrainConfig) -> SmallVAE:
    """A fresh seeded SmallVAE of the preset, or the ``--init-from`` one (same architecture, checked)."""
    if cfg.init_from is None:
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(step_generator(cfg.seed, "init", 0).initial_seed())
            return SmallVAE(cfg.vae_config())
    vae, wanted = load_vae(cfg.init_from), cfg.vae_config()
    if vae.config.replace(kl_weight=wanted.kl_weight) != wanted:
        raise ValueError(
            f"--init-from {cfg.init_from}: its SmallVAE config {vae.config} is not --vae-preset "
            f"{cfg.vae_preset!r}'s {wanted}; pass the preset it was trained with"
        )
    vae.config = wanted  # the --kl-weight override applies to the fine-tune
    return vae


def _loop(vae, pool, eval_pixels, optimizer, scheduler, cfg: VaeTrainConfig, writer: MetricWriter) -> None:
    """The training steps with logging, periodic PSNR and a progress bar."""

    def evaluate() -> dict[str, float]:
        vae.eval()
        logs = {"eval/psnr": evaluate_psnr(vae, eval_pixels)}
        vae.train()
        return logs

    run_steps(
        cfg,
        writer,
        lambda step: _step(vae, pool, optimizer, scheduler, cfg, step),
        evaluate if eval_pixels is not None else None,
        "train VAE",
        show_sps=True,
    )


def main(argv: Sequence[str] | None = None) -> None:
    """Command-line entry point (see the module docstring): ``--preset`` (default small), then one flag
    per :class:`VaeTrainConfig` field; ``--print-config`` shows the result."""
    cfg = parse_preset_config(VaeTrainConfig, PRESETS, "small", argv, __doc__)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    train_vae(cfg)


if __name__ == "__main__":
    main()
