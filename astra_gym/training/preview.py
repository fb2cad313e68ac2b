"""Cheap training previews: a short autoregressive rollout per dataset, decoded to a PNG strip.

For each dataset one fixed window (the same at every preview, drawn from the ``"preview"`` random
stream) is rolled out chunk by chunk from its first latents with the recorded actions, exactly as
the rollout engine does at inference (clean history, Euler sampler, optional AFG). The image has
two rows per dataset: the recorded frames, then the generated ones. The mean squared error of the
generated latents against the recorded ones is returned as a cheap ``eval/preview_mse``.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch import Tensor, nn

from astra_gym.training.checkpointing import step_generator
from astra_gym.training.data import JointLatentData, frame_pack_to
from astra_gym.utils.pixels import pixels_to_uint8
from astra_gym.world_model.action_encoders import flag_columns, make_action_rows
from astra_gym.world_model.conditioning import ActionInput
from astra_gym.world_model.framepack import FramePackHistory, pack
from astra_gym.world_model.sampling import SamplerConfig, sample_chunk
from astra_gym.world_model.vae import VideoVAE

__all__ = ["PreviewConfig", "write_preview"]


@dataclass(frozen=True)
class PreviewConfig:
    """Settings of :func:`write_preview`.

    Attributes:
        chunks: Chunks generated per dataset.
        sampler: Sampler of every chunk.
        seed: Run seed (the windows and noise come from its ``"preview"`` stream).
    """

    chunks: int
    sampler: SamplerConfig
    seed: int


@torch.no_grad()
def _rollout(
    model: nn.Module, data: JointLatentData, dataset: int, cfg: PreviewConfig, device: torch.device
) -> tuple[Tensor, Tensor]:
    """(recorded, generated) latents [1, C, chunks * F, h, w] of one dataset's preview window."""
    generator = step_generator(cfg.seed, "preview", 0, dataset)
    item = data.datasets[dataset][int(data.datasets[dataset].sample_indices(1, generator)[0])]
    size = data.chunk_latents
    length = item["latents"].shape[1]
    chunks = min(cfg.chunks, (length - 1) // size)
    start = length - chunks * size
    rows = make_action_rows(data.normalizers[dataset].apply(item["rows"])[None], 0.0, data.width)  # [1, W, D]
    latents = item["latents"][None]  # [1, C, W, h, w]
    history = FramePackHistory.from_latents(latents[:, :, :start], rows[:, :start], window=data.layout.window)
    modality = torch.tensor([data.modality[dataset]])
    flags = flag_columns(data.config, modality)
    generated = []
    for k in range(chunks):
        target_rows = rows[:, start + k * size : start + (k + 1) * size]
        frame_pack, values = pack(history, target_rows, data.layout, flag_column=flags)
        out = sample_chunk(
            model,
            (1, latents.shape[1], size, *latents.shape[3:]),
            context=None,
            frame_pack=frame_pack_to(frame_pack, device),
            actions=ActionInput(values.to(device), modality.to(device)),
            config=cfg.sampler,
            generator=generator,
            device=device,
        ).cpu()
        generated.append(out)
        history = history.append(out, target_rows)
    return latents[:, :, start:], torch.cat(generated, dim=2)


def _strip(vae: VideoVAE, latents: Tensor) -> np.ndarray:
    """Decoded latents [1, C, T, h, w] -> uint8 [H, T * W, 3] frames side by side."""
    frames = pixels_to_uint8(vae.decode(latents.to(vae.device)))[0].cpu().numpy()  # [T, H, W, 3]
    return np.concatenate(list(frames), axis=1)


def write_preview(
    model: nn.Module, vae: VideoVAE | None, data: JointLatentData, cfg: PreviewConfig, path: str | os.PathLike
) -> float:
    """Rolls out every dataset's preview window and writes the PNG strip to ``path`` (if a VAE is given).

    Args:
        model: The model to sample from (e.g. the EMA copy), on its device.
        vae: Decoder of the cache's latents, or None to compute the metric only.
        data: The training data (windows, normalisation, layout).
        cfg: Preview settings.
        path: PNG file to write.

    Returns:
        Mean squared error of the generated latents against the recorded ones.
    """
    device = next(model.parameters()).device
    errors, panels = [], []
    for dataset in range(len(data.datasets)):
        recorded, generated = _rollout(model, data, dataset, cfg, device)
        errors.append(float((recorded - generated).pow(2).mean()))
        if vae is not None:
            panels += [_strip(vae, recorded), _strip(vae, generated)]
    if panels:
        import imageio.v3 as iio

        width = max(p.shape[1] for p in panels)
        padded = [np.pad(p, ((0, 0), (0, width - p.shape[1]), (0, 0))) for p in panels]
        Path(path).parent.mkdir(parents=True, exist_ok=True)
        iio.imwrite(path, np.concatenate(padded, axis=0))
    return float(np.mean(errors))
