"""Saving and loading trained :class:`~astra_gym.world_model.vae.SmallVAE` folders.

A VAE folder (written atomically)::

    vae.safetensors   full state dict, normalisation buffers (latents_mean/std/count) included
    config.json       {"format": "astra-gym-small-vae", "format_version": 1, "config": SmallVAEConfig,
                       "preset": name or null, "identity": latent_cache.vae_identity(vae), "metrics": {...}}

``vae.safetensors`` is also what ``python -m astra_gym.data.latent_cache --vae PRESET --vae-weights``
takes, so a VAE trained from a preset can encode caches directly; ``identity["hash"]`` then equals
the hash the cache records.
"""

from __future__ import annotations

import dataclasses
import json
import os
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file, save_file

from astra_gym.data.latent_cache import vae_identity
from astra_gym.utils.atomic import atomic_folder
from astra_gym.utils.pixels import pixels_to_uint8, uint8_to_pixels
from astra_gym.world_model.vae import SmallVAE, SmallVAEConfig

__all__ = ["VAE_FORMAT", "VAE_WEIGHTS", "save_vae", "load_vae", "read_vae_config", "reconstruct_frames"]

VAE_FORMAT = "astra-gym-small-vae"
VAE_FORMAT_VERSION = 1
VAE_WEIGHTS = "vae.safetensors"
_CONFIG = "config.json"


def save_vae(
    vae: SmallVAE, folder: str | os.PathLike, preset: str | None = None, metrics: dict[str, Any] | None = None
) -> Path:
    """Writes ``vae`` to ``folder`` atomically (the folder is replaced as a whole).

    Args:
        vae: The trained VAE (its latent normalisation already set from data).
        folder: Target folder.
        preset: Name of the :data:`~astra_gym.world_model.vae.SMALL_VAE_PRESETS` entry it was built from.
        metrics: JSON-able training results (e.g. held-out PSNR).

    Returns:
        The absolute folder.
    """
    state = {k: v.detach().cpu().contiguous() for k, v in vae.state_dict().items()}
    meta = {
        "format": VAE_FORMAT,
        "format_version": VAE_FORMAT_VERSION,
        "config": dataclasses.asdict(vae.config),
        "preset": preset,
        "identity": vae_identity(vae),
        "metrics": dict(metrics or {}),
    }
    text = json.dumps(meta, indent=2, sort_keys=True, allow_nan=False)
    folder = Path(folder).absolute()
    with atomic_folder(folder) as tmp:
        save_file(state, str(tmp / VAE_WEIGHTS))
        (tmp / _CONFIG).write_text(text, encoding="utf-8")
    return folder


def read_vae_config(folder: str | os.PathLike) -> dict[str, Any]:
    """The ``config.json`` of a VAE folder.

    Raises:
        FileNotFoundError: No VAE folder there.
        ValueError: Not written by :func:`save_vae` or from a newer format.
    """
    path = Path(folder) / _CONFIG
    if not path.is_file():
        raise FileNotFoundError(f"no {_CONFIG} in {folder}; train a VAE with `python -m astra_gym.training.train_vae`")
    meta = json.loads(path.read_text(encoding="utf-8"))
    if meta.get("format") != VAE_FORMAT or int(meta.get("format_version", 0)) > VAE_FORMAT_VERSION:
        raise ValueError(f"{path} is not a VAE folder of this astra-gym version (format {meta.get('format')!r})")
    return meta


def load_vae(folder: str | os.PathLike, device: torch.device | str = "cpu") -> SmallVAE:
    """Loads a :func:`save_vae` folder (strict) in eval mode on ``device``."""
    meta = read_vae_config(folder)
    config = dict(meta["config"])
    config["channels"] = tuple(config["channels"])
    vae = SmallVAE(SmallVAEConfig(**config))
    vae.load_state_dict(load_file(str(Path(folder) / VAE_WEIGHTS)), strict=True)
    return vae.to(device).eval()


@torch.no_grad()
def reconstruct_frames(vae: SmallVAE, frames, batch: int = 256):
    """The VAE's reconstruction of uint8 [N, H, W, 3] frames, as uint8 [N, H, W, 3] (numpy)."""
    import numpy as np

    out = []
    for i in range(0, len(frames), batch):
        pixels = uint8_to_pixels(frames[i : i + batch])[:, :, None].to(vae.device)  # [n, 3, 1, H, W]
        out.append(pixels_to_uint8(vae.decode(vae.encode(pixels))[:, :, 0]).cpu().numpy())
    return np.concatenate(out)
