"""Video VAEs behind one interface: normalised latents in, pixels in [-1, 1] out, streaming decode.

* :class:`WanVAE` wraps diffusers' ``AutoencoderKLWan`` (the Wan2.1 VAE of the full model): causal 3-D
  convolutions, 8x spatial and 4x temporal compression, per-channel latent normalisation from the
  checkpoint config (astra-release.md §8.1).
* :class:`SmallVAE` is a per-frame 2-D convolutional VAE for the CPU presets (temporal factor 1).

Temporal rule (both): ``P`` pixel frames give ``1 + (P - 1) // tf`` latents (trailing frames that do
not fill a group of ``tf`` are not encoded), and ``L`` latents decode to ``1 + tf * (L - 1)`` frames.
In a streaming decode the first chunk of ``n`` latents yields ``1 + tf * (n - 1)`` frames and every
later chunk ``tf * n``; the concatenated frames equal decoding the whole sequence at once.
"""

from __future__ import annotations

import abc
import dataclasses
import math
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import torch
import torch.nn.functional as F
from torch import Tensor, nn

__all__ = [
    "VaeStreamState",
    "VideoVAE",
    "WanVAE",
    "SmallVAEConfig",
    "SMALL_VAE_PRESETS",
    "get_small_vae_preset",
    "SmallVAE",
    "detail_weights",
]


@dataclass(frozen=True)
class VaeStreamState:
    """Everything a streaming decode carries from one chunk to the next (no hidden module state).

    A state is never modified: :meth:`VideoVAE.decode_stream` returns a new one, so an old state can
    be decoded from again (e.g. to branch a rollout).

    Attributes:
        frames_decoded: Latent frames decoded so far; 0 means the next chunk starts the video.
        cache: VAE-specific causal cache (for :class:`WanVAE` one entry per causal convolution of
            the decoder: None, the marker ``"Rep"`` or a [B, C, <=2, h, w] tensor); empty if stateless.
        batch_size: Batch size the cache belongs to; None before the first chunk.
    """

    frames_decoded: int = 0
    cache: tuple[Any, ...] = ()
    batch_size: int | None = None

    @property
    def is_first(self) -> bool:
        """Whether the next chunk is the first of the video."""
        return self.frames_decoded == 0


class VideoVAE(nn.Module, abc.ABC):
    """Base class: shape checks, latent normalisation, temporal rule and the decode/stream plumbing.

    Subclasses implement :meth:`encode_raw` (posterior mean, unnormalised) and
    :meth:`_decode_raw_chunk` (unnormalised latents -> unclamped pixels, advancing a stream state).

    Attributes:
        latent_channels: Channels C of the latents.
        spatial_factor: Pixels per latent along H and W.
        temporal_factor: Pixel frames per latent frame after the first (1 or 4).
        latents_mean: [C] float32 buffer subtracted from raw latents.
        latents_std: [C] float32 buffer dividing raw latents.
    """

    latents_mean: Tensor
    latents_std: Tensor

    def __init__(
        self,
        latent_channels: int,
        spatial_factor: int,
        temporal_factor: int,
        latents_mean: Sequence[float] | Tensor | None = None,
        latents_std: Sequence[float] | Tensor | None = None,
    ) -> None:
        super().__init__()
        self.latent_channels = int(latent_channels)
        self.spatial_factor = int(spatial_factor)
        self.temporal_factor = int(temporal_factor)
        mean = torch.zeros(latent_channels) if latents_mean is None else torch.as_tensor(latents_mean)
        std = torch.ones(latent_channels) if latents_std is None else torch.as_tensor(latents_std)
        if mean.shape != (latent_channels,) or std.shape != (latent_channels,):
            raise ValueError(
                f"latents_mean/std must have {latent_channels} entries (one per latent channel), "
                f"got shapes {tuple(mean.shape)} and {tuple(std.shape)}"
            )
        self.register_buffer("latents_mean", mean.float().clone())
        self.register_buffer("latents_std", std.float().clone())

    # ---- temporal rule -------------------------------------------------------------------------

    def num_latent_frames(self, num_pixel_frames: int) -> int:
        """Latents produced by :meth:`encode` for P pixel frames: ``1 + (P - 1) // temporal_factor``."""
        if num_pixel_frames < 1:
            raise ValueError(f"num_pixel_frames={num_pixel_frames} must be >= 1")
        return 1 + (num_pixel_frames - 1) // self.temporal_factor

    def num_pixel_frames(self, num_latent_frames: int, first: bool = True) -> int:
        """Pixel frames decoded from L latents: ``1 + tf * (L - 1)``, or ``tf * L`` for a later stream chunk."""
        if num_latent_frames < 1:
            raise ValueError(f"num_latent_frames={num_latent_frames} must be >= 1")
        if first:
            return 1 + self.temporal_factor * (num_latent_frames - 1)
        return self.temporal_factor * num_latent_frames

    # ---- normalisation -------------------------------------------------------------------------

    def normalize(self, raw: Tensor) -> Tensor:
        """Raw latents [B, C, T, h, w] -> ``(raw - mean) / std`` per channel, float32."""
        mean = self.latents_mean.view(1, -1, 1, 1, 1)  # [C] -> [1, C, 1, 1, 1]
        std = self.latents_std.view(1, -1, 1, 1, 1)
        return (raw.float() - mean) / std

    def denormalize(self, latents: Tensor) -> Tensor:
        """Inverse of :meth:`normalize`: ``latents * std + mean`` per channel, float32."""
        mean = self.latents_mean.view(1, -1, 1, 1, 1)  # [C] -> [1, C, 1, 1, 1]
        std = self.latents_std.view(1, -1, 1, 1, 1)
        return latents.float() * std + mean

    # ---- public API ----------------------------------------------------------------------------

    @property
    def param_dtype(self) -> torch.dtype:
        """dtype of the network weights (inputs are cast to it)."""
        return next(self.parameters()).dtype

    @property
    def device(self) -> torch.device:
        """Device of the network weights."""
        return next(self.parameters()).device

    def _check_pixels(self, pixels: Tensor) -> None:
        if pixels.ndim != 5 or pixels.shape[1] != 3:
            raise ValueError(f"pixels must be [B, 3, T, H, W] in [-1, 1], got shape {tuple(pixels.shape)}")
        h, w = pixels.shape[-2:]
        if h % self.spatial_factor or w % self.spatial_factor:
            raise ValueError(f"pixel height/width {h}x{w} must be multiples of {self.spatial_factor}; resize or crop")

    def _check_latents(self, latents: Tensor) -> None:
        if latents.ndim != 5 or latents.shape[1] != self.latent_channels:
            raise ValueError(f"latents must be [B, {self.latent_channels}, T, h, w], got shape {tuple(latents.shape)}")

    def encode(self, pixels: Tensor) -> Tensor:
        """Deterministic encode (posterior mean), normalised.

        Args:
            pixels: [B, 3, T, H, W] float video in [-1, 1]; H, W multiples of ``spatial_factor``.

        Returns:
            [B, C, num_latent_frames(T), H / f, W / f] float32 normalised latents.
        """
        self._check_pixels(pixels)
        raw = self.encode_raw(pixels.to(device=self.device, dtype=self.param_dtype))
        return self.normalize(raw)

    def decode(self, latents: Tensor) -> Tensor:
        """Decodes a whole latent video.

        Args:
            latents: [B, C, L, h, w] normalised latents.

        Returns:
            [B, 3, num_pixel_frames(L), h * f, w * f] float32 pixels clamped to [-1, 1].
        """
        return self.decode_stream(latents, VaeStreamState())[0]

    def decode_stream(self, latents: Tensor, state: VaeStreamState | None = None) -> tuple[Tensor, VaeStreamState]:
        """Decodes the next chunk of a latent video, carrying the causal cache in ``state``.

        Args:
            latents: [B, C, n, h, w] normalised latents following those already decoded with ``state``.
            state: State returned by the previous call, or None / ``VaeStreamState()`` to start a video.

        Returns:
            (pixels, new_state): pixels [B, 3, num_pixel_frames(n, first=state.is_first), h * f, w * f]
            float32 in [-1, 1], and the state to pass with the next chunk.
        """
        self._check_latents(latents)
        state = VaeStreamState() if state is None else state
        if state.batch_size is not None and state.batch_size != latents.shape[0]:
            raise ValueError(
                f"stream state was built for batch {state.batch_size} but got latents of batch {latents.shape[0]}; "
                "start a new stream with VaeStreamState()"
            )
        raw = self.denormalize(latents).to(device=self.device, dtype=self.param_dtype)
        pixels, new_state = self._decode_raw_chunk(raw, state)
        return pixels.float().clamp(-1.0, 1.0), new_state

    @abc.abstractmethod
    def encode_raw(self, pixels: Tensor) -> Tensor:
        """[B, 3, T, H, W] pixels (weights' device/dtype) -> [B, C, T', h, w] unnormalised posterior mean."""

    @abc.abstractmethod
    def _decode_raw_chunk(self, raw: Tensor, state: VaeStreamState) -> tuple[Tensor, VaeStreamState]:
        """[B, C, n, h, w] unnormalised latents -> (unclamped pixels [B, 3, P, H, W], advanced state)."""


# ================================================================================================
# Wan2.1 VAE (diffusers AutoencoderKLWan)
# ================================================================================================


def _diffusers_wan():
    """The diffusers module of the Wan VAE, or an ImportError naming the extra to install."""
    try:
        from diffusers.models.autoencoders import autoencoder_kl_wan
    except ImportError as err:
        raise ImportError("WanVAE needs diffusers; install it with `pip install astra-gym[wan]`") from err
    return autoencoder_kl_wan


def _resolve_vae_folder(folder: str | Path) -> Path:
    """``folder/vae`` (diffusers pipeline layout) or ``folder`` itself, whichever has a config.json."""
    folder = Path(folder)
    for candidate in (folder / "vae", folder):
        if (candidate / "config.json").is_file():
            return candidate
    raise FileNotFoundError(
        f"no Wan VAE found: neither {folder / 'vae' / 'config.json'} nor {folder / 'config.json'} exists; "
        "pass a local diffusers-format Wan2.1 folder (e.g. Wan2.1-T2V-1.3B-Diffusers) or its vae/ subfolder"
    )


class WanVAE(VideoVAE):
    """The Wan2.1 causal video VAE with per-chunk streaming decode.

    Encoding is deterministic (posterior mean) and normalised with the config's ``latents_mean`` /
    ``latents_std``. The causal caches of encoder and decoder are plain lists built per call (decode:
    carried in :class:`VaeStreamState`), so the wrapped module's own ``_feat_map`` is never used.

    Args:
        model: A diffusers ``AutoencoderKLWan``.
    """

    def __init__(self, model: nn.Module) -> None:
        wan = _diffusers_wan()
        cfg = model.config
        patch = cfg.patch_size or 1
        super().__init__(
            latent_channels=cfg.z_dim,
            spatial_factor=2 ** (len(cfg.dim_mult) - 1) * patch,
            temporal_factor=2 ** sum(bool(t) for t in cfg.temperal_downsample),
            latents_mean=cfg.latents_mean,
            latents_std=cfg.latents_std,
        )
        self.model = model.eval()
        self._num_encoder_convs = sum(isinstance(m, wan.WanCausalConv3d) for m in model.encoder.modules())
        self._num_decoder_convs = sum(isinstance(m, wan.WanCausalConv3d) for m in model.decoder.modules())

    @classmethod
    def from_pretrained(
        cls, folder: str | Path, device: torch.device | str = "cpu", dtype: torch.dtype = torch.float32
    ) -> WanVAE:
        """Loads a local diffusers-format Wan VAE (``folder/vae/`` or ``folder/``) without network access.

        Args:
            folder: Wan2.1 diffusers folder or its ``vae`` subfolder.
            device: Device to place the weights on.
            dtype: Weight dtype (the release runs the VAE in bf16; float32 is the safe default).
        """
        path = _resolve_vae_folder(folder)
        model = _diffusers_wan().AutoencoderKLWan.from_pretrained(path, torch_dtype=dtype, local_files_only=True)
        return cls(model.to(device))

    @classmethod
    def from_config(cls, **config: Any) -> WanVAE:
        """Builds a randomly initialised VAE from ``AutoencoderKLWan`` keyword arguments (for tests).

        When ``z_dim`` differs from 16 and no ``latents_mean`` / ``latents_std`` are given, they
        default to zeros / ones of length ``z_dim``.
        """
        z_dim = config.get("z_dim", 16)
        if z_dim != 16:
            config.setdefault("latents_mean", [0.0] * z_dim)
            config.setdefault("latents_std", [1.0] * z_dim)
        return cls(_diffusers_wan().AutoencoderKLWan(**config))

    def encode_raw(self, pixels: Tensor) -> Tensor:
        """Causal chunked encode: frame 0 alone, then groups of ``temporal_factor`` frames.

        Args:
            pixels: [B, 3, T, H, W] in the weights' dtype.

        Returns:
            [B, C, 1 + (T - 1) // tf, H / f, W / f] posterior means (unnormalised).
        """
        patch = self.model.config.patch_size
        x = pixels if patch is None else _diffusers_wan().patchify(pixels, patch)  # [B, 3 * p * p, T, H / p, W / p]
        tf = self.temporal_factor
        bounds = [(0, 1)] + [(1 + tf * i, 1 + tf * (i + 1)) for i in range((x.shape[2] - 1) // tf)]
        cache: list[Any] = [None] * self._num_encoder_convs
        outs = [self.model.encoder(x[:, :, a:b], feat_cache=cache, feat_idx=[0]) for a, b in bounds]
        moments = self.model.quant_conv(torch.cat(outs, dim=2))  # [B, 2C, T', h, w]: mean, logvar
        return moments[:, : self.latent_channels]

    def _decode_raw_chunk(self, raw: Tensor, state: VaeStreamState) -> tuple[Tensor, VaeStreamState]:
        """Decodes latent frames one by one, continuing the causal cache held by ``state``."""
        cache = list(state.cache) if state.cache else [None] * self._num_decoder_convs
        x = self.model.post_quant_conv(raw)  # 1x1x1 conv: no temporal context
        frames = []
        for i in range(x.shape[2]):
            first = state.frames_decoded + i == 0
            frames.append(self.model.decoder(x[:, :, i : i + 1], feat_cache=cache, feat_idx=[0], first_chunk=first))
        out = torch.cat(frames, dim=2)  # [B, 3 * p * p, P, H / p, W / p]
        if self.model.config.patch_size is not None:
            out = _diffusers_wan().unpatchify(out, self.model.config.patch_size)  # -> [B, 3, P, H, W]
        new_state = VaeStreamState(state.frames_decoded + x.shape[2], tuple(cache), raw.shape[0])
        return out, new_state


# ================================================================================================
# Small per-frame VAE for the CPU presets
# ================================================================================================


@dataclass(frozen=True)
class SmallVAEConfig:
    """Sizes and loss settings of :class:`SmallVAE`.

    Attributes:
        latent_channels: Latent channels C (8 for the ``small`` model preset, 4 for ``debug``).
        channels: Feature widths of the downsampling stages; each stage halves H and W, so the
            spatial factor is ``2 ** len(channels)`` (3 stages -> 8x).
        num_res_blocks: Residual blocks per stage in the encoder and in the decoder.
        recon_loss: ``"l1"`` or ``"mse"`` pixel reconstruction loss.
        kl_weight: Weight of the KL divergence to N(0, I) (per latent element, averaged).
        logvar_clamp: Posterior log-variance is clamped to [-logvar_clamp, logvar_clamp].
        detail_weight: Extra reconstruction weight on small salient details (0 = plain loss). Each
            pixel's loss is weighted by ``1 + detail_weight * s / mean(s)``, where ``s`` is the
            pixel's local contrast (its distance to the 5x5 mean around it): an ego car, a goal
            marker or a dashboard bar covers a few pixels, so a plain loss can erase it almost for
            free, while this weight makes those pixels cost as much as large areas.
    """

    latent_channels: int = 8
    channels: tuple[int, ...] = (64, 128, 256)
    num_res_blocks: int = 2
    recon_loss: Literal["l1", "mse"] = "l1"
    kl_weight: float = 1e-4
    logvar_clamp: float = 20.0
    detail_weight: float = 0.0

    def __post_init__(self) -> None:
        if self.latent_channels < 1 or not self.channels or min(self.channels) < 1 or self.num_res_blocks < 0:
            raise ValueError(
                f"latent_channels={self.latent_channels}, channels={self.channels} must be positive and "
                f"num_res_blocks={self.num_res_blocks} >= 0"
            )
        if self.recon_loss not in ("l1", "mse"):
            raise ValueError(f"recon_loss={self.recon_loss!r} must be 'l1' or 'mse'")
        if self.kl_weight < 0 or self.detail_weight < 0:
            raise ValueError(f"kl_weight={self.kl_weight} and detail_weight={self.detail_weight} must be >= 0")

    @property
    def spatial_factor(self) -> int:
        """Pixels per latent along H and W."""
        return 2 ** len(self.channels)

    def replace(self, **changes) -> SmallVAEConfig:
        """Returns a copy with ``changes`` applied (validated)."""
        return dataclasses.replace(self, **changes)


SMALL_VAE_PRESETS: dict[str, SmallVAEConfig] = {
    "small": SmallVAEConfig(latent_channels=8, channels=(32, 64, 128), num_res_blocks=1),
    # 4x compression (16x16x8 latents for 64x64 frames) and a detail-weighted loss: keeps the few-pixel
    # objects agents need (CarRacing's car and dashboard bars, FetchPush's goal marker) that 8x erases.
    "detail": SmallVAEConfig(latent_channels=8, channels=(32, 64), num_res_blocks=2, detail_weight=4.0),
    "debug": SmallVAEConfig(latent_channels=4, channels=(8, 16, 16), num_res_blocks=1),
}


def get_small_vae_preset(name: str) -> SmallVAEConfig:
    """Returns the named :class:`SmallVAEConfig`; raises a ValueError listing the presets if unknown."""
    try:
        return SMALL_VAE_PRESETS[name]
    except KeyError:
        raise ValueError(f"unknown SmallVAE preset {name!r}; choose one of {sorted(SMALL_VAE_PRESETS)}") from None


def detail_weights(pixels: Tensor, detail_weight: float) -> Tensor:
    """Per-pixel loss weights that emphasise small salient details (see ``SmallVAEConfig.detail_weight``).

    Args:
        pixels: [B, 3, T, H, W] target video in [-1, 1].
        detail_weight: Extra weight at average local contrast; 0 gives all-ones weights.

    Returns:
        [B, 1, T, H, W] float32 weights with mean ``1 + detail_weight`` per frame.
    """
    if detail_weight == 0:
        return torch.ones_like(pixels[:, :1], dtype=torch.float32)
    images = _frames_to_images(pixels.float())  # [N, 3, H, W]
    local = F.avg_pool2d(images, 5, stride=1, padding=2, count_include_pad=False)
    contrast = (images - local).abs().sum(dim=1, keepdim=True)  # [N, 1, H, W]
    contrast = contrast / contrast.mean(dim=(2, 3), keepdim=True).clamp_min(1e-3)
    return _images_to_frames(1.0 + detail_weight * contrast, pixels.shape[0])


def _group_norm(channels: int) -> nn.GroupNorm:
    return nn.GroupNorm(math.gcd(channels, 8), channels)


class _ResBlock(nn.Module):
    """Pre-activation residual block: (GroupNorm, SiLU, 3x3 conv) x 2 plus identity."""

    def __init__(self, channels: int) -> None:
        super().__init__()
        self.body = nn.Sequential(
            _group_norm(channels),
            nn.SiLU(),
            nn.Conv2d(channels, channels, 3, padding=1),
            _group_norm(channels),
            nn.SiLU(),
            nn.Conv2d(channels, channels, 3, padding=1),
        )

    def forward(self, x: Tensor) -> Tensor:
        return x + self.body(x)


def _encoder(cfg: SmallVAEConfig) -> nn.Sequential:
    """[N, 3, H, W] -> [N, 2C, H / f, W / f] (posterior mean and log-variance)."""
    widths = (cfg.channels[0], *cfg.channels)
    layers: list[nn.Module] = [nn.Conv2d(3, widths[0], 3, padding=1)]
    for c_in, c_out in zip(widths[:-1], widths[1:], strict=True):
        layers.append(nn.Conv2d(c_in, c_out, 3, stride=2, padding=1))
        layers += [_ResBlock(c_out) for _ in range(cfg.num_res_blocks)]
    layers += [_group_norm(widths[-1]), nn.SiLU(), nn.Conv2d(widths[-1], 2 * cfg.latent_channels, 3, padding=1)]
    return nn.Sequential(*layers)


def _decoder(cfg: SmallVAEConfig) -> nn.Sequential:
    """[N, C, h, w] -> [N, 3, h * f, w * f] unclamped pixels."""
    widths = (*cfg.channels[::-1], cfg.channels[0])
    layers: list[nn.Module] = [nn.Conv2d(cfg.latent_channels, widths[0], 3, padding=1)]
    for c_in, c_out in zip(widths[:-1], widths[1:], strict=True):
        layers += [_ResBlock(c_in) for _ in range(cfg.num_res_blocks)]
        layers += [nn.Upsample(scale_factor=2.0, mode="nearest"), nn.Conv2d(c_in, c_out, 3, padding=1)]
    layers += [_group_norm(widths[-1]), nn.SiLU(), nn.Conv2d(widths[-1], 3, 3, padding=1)]
    return nn.Sequential(*layers)


def _frames_to_images(video: Tensor) -> Tensor:
    """[B, C, T, H, W] -> [B * T, C, H, W]."""
    b, c, t, h, w = video.shape
    return video.permute(0, 2, 1, 3, 4).reshape(b * t, c, h, w)


def _images_to_frames(images: Tensor, batch: int) -> Tensor:
    """[B * T, C, H, W] -> [B, C, T, H, W]."""
    n, c, h, w = images.shape
    return images.reshape(batch, n // batch, c, h, w).permute(0, 2, 1, 3, 4)


class SmallVAE(VideoVAE):
    """Per-frame 2-D convolutional VAE (temporal factor 1) for the CPU presets.

    The normalisation buffers start at mean 0 / std 1; the trainer sets them from data with
    :meth:`update_latent_stats` (running, exact over everything seen) or :meth:`set_latent_stats`.

    Args:
        config: Sizes and loss settings; see :data:`SMALL_VAE_PRESETS`.
    """

    latent_count: Tensor

    def __init__(self, config: SmallVAEConfig) -> None:
        super().__init__(config.latent_channels, config.spatial_factor, temporal_factor=1)
        self.config = config
        self.encoder = _encoder(config)
        self.decoder = _decoder(config)
        self.register_buffer("latent_count", torch.zeros((), dtype=torch.float64))

    @classmethod
    def from_preset(cls, name: str) -> SmallVAE:
        """Randomly initialised VAE of preset ``name`` (``"small"`` or ``"debug"``)."""
        return cls(get_small_vae_preset(name))

    def posterior(self, pixels: Tensor) -> tuple[Tensor, Tensor]:
        """Unnormalised posterior of every frame.

        Args:
            pixels: [B, 3, T, H, W] in [-1, 1], weights' device and dtype.

        Returns:
            (mean, logvar): each [B, C, T, H / f, W / f].
        """
        moments = _images_to_frames(self.encoder(_frames_to_images(pixels)), pixels.shape[0])  # [B, 2C, T, h, w]
        mean, logvar = moments.chunk(2, dim=1)
        return mean, logvar.clamp(-self.config.logvar_clamp, self.config.logvar_clamp)

    def encode_raw(self, pixels: Tensor) -> Tensor:
        """[B, 3, T, H, W] -> [B, C, T, H / f, W / f] posterior means (unnormalised)."""
        return self.posterior(pixels)[0]

    def decode_raw(self, raw: Tensor) -> Tensor:
        """[B, C, T, h, w] unnormalised latents -> [B, 3, T, h * f, w * f] unclamped pixels."""
        return _images_to_frames(self.decoder(_frames_to_images(raw)), raw.shape[0])

    def _decode_raw_chunk(self, raw: Tensor, state: VaeStreamState) -> tuple[Tensor, VaeStreamState]:
        """Stateless: every frame decodes on its own; the state only counts frames."""
        return self.decode_raw(raw), VaeStreamState(state.frames_decoded + raw.shape[2], (), raw.shape[0])

    def loss(self, pixels: Tensor, generator: torch.Generator) -> tuple[Tensor, dict[str, Tensor]]:
        """Reconstruction + KL loss of one batch, with a reparameterised posterior sample.

        Args:
            pixels: [B, 3, T, H, W] float video in [-1, 1].
            generator: Source of the posterior sample's noise (drawn on the generator's device).

        Returns:
            (loss, logs): 0-d float32 loss with gradients, and detached ``loss``, ``recon``, ``kl``.
        """
        self._check_pixels(pixels)
        pixels = pixels.to(device=self.device, dtype=self.param_dtype)
        mean, logvar = self.posterior(pixels)
        eps = torch.randn(mean.shape, generator=generator, device=generator.device, dtype=mean.dtype)
        recon = self.decode_raw(mean + torch.exp(0.5 * logvar) * eps.to(mean.device))
        err = (recon.float() - pixels.float()).abs()
        err = err if self.config.recon_loss == "l1" else err.square()
        rec = (err * detail_weights(pixels, self.config.detail_weight)).mean()
        kl = 0.5 * (mean.float() ** 2 + logvar.float().exp() - 1.0 - logvar.float()).mean()
        loss = rec + self.config.kl_weight * kl
        return loss, {"loss": loss.detach(), "recon": rec.detach(), "kl": kl.detach()}

    @torch.no_grad()
    def set_latent_stats(self, mean: Tensor, std: Tensor) -> None:
        """Sets the normalisation to the given per-channel [C] mean and std (std > 0)."""
        if mean.shape != (self.latent_channels,) or std.shape != (self.latent_channels,):
            raise ValueError(
                f"mean and std must be [{self.latent_channels}], got {tuple(mean.shape)} and {tuple(std.shape)}"
            )
        if (std <= 0).any():
            raise ValueError("latent std must be > 0 in every channel")
        self.latents_mean.copy_(mean)
        self.latents_std.copy_(std)

    @torch.no_grad()
    def update_latent_stats(self, raw: Tensor) -> None:
        """Merges a batch of raw latents into the running per-channel mean/std (exact, Chan et al.).

        Args:
            raw: [B, C, T, h, w] unnormalised latents, e.g. ``vae.encode_raw(pixels)``.
        """
        x = raw.detach().double().transpose(0, 1).reshape(self.latent_channels, -1)  # [C, N]
        n_b = float(x.shape[1])
        mean_b, var_b = x.mean(dim=1), x.var(dim=1, unbiased=False)
        n_a = float(self.latent_count)
        mean_a = self.latents_mean.double()
        var_a = self.latents_std.double() ** 2 if n_a > 0 else torch.zeros_like(mean_b)
        n = n_a + n_b
        delta = mean_b - mean_a
        mean = mean_a + delta * (n_b / n)
        var = (var_a * n_a + var_b * n_b + delta**2 * (n_a * n_b / n)) / n
        self.latent_count.fill_(n)
        self.set_latent_stats(mean.float(), var.sqrt().clamp_min(1e-6).float())
