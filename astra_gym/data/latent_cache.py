"""Latent cache: recorded episodes encoded once by a VAE into training-ready shards.

A cache is a folder::

    index.json                          manifest (below); the trainer reads only this up front
    shard-<run>-00000.safetensors       episodes 0 .. n-1
    shard-<run>-00001.safetensors       ...

Each shard holds, for its j-th episode (tensor keys prefixed ``"{j}/"``):

==================  =================  ===========================================================
key                 dtype, shape       meaning
==================  =================  ===========================================================
``latents``         float16 [C,L,h,w]  normalised VAE latents of the (trimmed) episode frames
``rows/{feature}``  float32 [L, d]     action rows of one feature (:data:`~.action_codecs.FEATURES`),
                                       aligned per latent: latent k's row is the action that
                                       produced it (:func:`~.action_codecs.align_to_latents`),
                                       without the flag
``rewards``         float32 [L]        sum of the rewards of the steps that produced latent k
                                       (steps f(k-1) .. fk-1); 0 for latent 0
``terminated``      bool [L]           any of those steps terminated
``truncated``       bool [L]           any of those steps was truncated
==================  =================  ===========================================================

Rewards and done flags follow the same "produced latent k" rule: they belong to the arrival in
latent k. Episodes are trimmed to a multiple of
the VAE's temporal factor f: the last ``T % f`` steps (which make no full latent) are dropped and
counted in the manifest (``dropped_steps``).

``index.json`` holds the format name/version, the VAE identity and its hash (class, sizes,
config, weights digest), the alignment (``"exact"``), every feature's modality/width/aggregation and
row statistics (over non-null rows), the inference feature per scenario, and per shard its
episodes (key, source path, seed, scenario, env id, steps, latents, features). ``complete`` is
false while a build is running or after it was interrupted.

Every file is written to a temporary name in the same folder and renamed into place, so a crash
never leaves a partial shard or index under its final name. Encoding is batched
(``CacheConfig.batch_frames``); per-frame VAEs (temporal factor 1 and no temporal context, like
:class:`~astra_gym.world_model.vae.SmallVAE`) are encoded in frame chunks, other VAEs one whole
episode clip at a time (episodes of equal length share a call).

CLI::

    python -m astra_gym.data.latent_cache --episodes DIR --vae small|debug|WAN_FOLDER \\
        [--vae-weights FILE.safetensors] --out DIR
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import logging
import os
import uuid
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal, Protocol

import numpy as np
import torch
from safetensors import safe_open
from safetensors.torch import save_file
from torch import Tensor

from astra_gym.data.action_codecs import (
    FEATURES,
    INFERENCE_FEATURE,
    SCENARIO_FEATURES,
    align_to_latents,
    episode_rows,
    latent_step_ranges,
)
from astra_gym.utils.atomic import atomic_write, atomic_write_text
from astra_gym.utils.cli_args import arg, parse_config
from astra_gym.utils.pixels import uint8_to_pixels

__all__ = [
    "FORMAT_NAME",
    "FORMAT_VERSION",
    "INDEX_NAME",
    "LatentEncoder",
    "CacheConfig",
    "CachedEpisode",
    "WindowSpec",
    "vae_identity",
    "same_latent_space",
    "encode_episodes",
    "build_latent_cache",
    "read_index",
    "LatentShardDataset",
    "load_vae",
    "main",
]

logger = logging.getLogger(__name__)

FORMAT_NAME = "astra-gym-latent-cache"
FORMAT_VERSION = 1
INDEX_NAME = "index.json"
_META_KEY = "astra_gym.latent_cache"


class LatentEncoder(Protocol):
    """What the cache needs of a VAE (:class:`~astra_gym.world_model.vae.VideoVAE` satisfies it).

    Attributes:
        latent_channels: C.
        spatial_factor: Pixels per latent along H and W.
        temporal_factor: Pixel frames per latent after the first.

    An encoder may also set ``per_frame = True`` when frames are encoded independently (no
    temporal context), which lets the cache encode long episodes in frame chunks;
    :class:`~astra_gym.world_model.vae.SmallVAE` is recognised without it.
    """

    latent_channels: int
    spatial_factor: int
    temporal_factor: int

    def encode(self, pixels: Tensor) -> Tensor:
        """[B, 3, P, H, W] float in [-1, 1] -> [B, C, 1 + (P - 1) // tf, H / sf, W / sf] normalised latents."""


@dataclass(frozen=True)
class CacheConfig:
    """How episodes are encoded and sharded.

    Action rows are aligned per latent by :func:`~astra_gym.data.action_codecs.align_to_latents`
    (latent k carries the action that produced it).

    Attributes:
        episodes_per_shard: Episodes per shard file.
        batch_frames: Upper bound on pixel frames per ``encode`` call (a single clip longer than
            this is still encoded whole unless the VAE is per-frame).
        features: Feature names to store (each episode keeps those its scenario provides);
            None -> every feature each episode can provide.
    """

    episodes_per_shard: int = 64
    batch_frames: int = 512
    features: tuple[str, ...] | None = None

    def __post_init__(self) -> None:
        if self.episodes_per_shard < 1 or self.batch_frames < 1:
            raise ValueError(
                f"episodes_per_shard={self.episodes_per_shard} and batch_frames={self.batch_frames} must be >= 1"
            )
        unknown = [f for f in self.features or () if f not in FEATURES]
        if unknown:
            raise ValueError(f"unknown features {unknown}; choose from {sorted(FEATURES)}")


@dataclass(frozen=True)
class CachedEpisode:
    """One encoded episode, as stored in a shard.

    Attributes:
        latents: [C, L, h, w] float16.
        rows: {feature: [L, d] float32} aligned action rows.
        rewards: [L] float32 per-latent rewards.
        terminated: [L] bool.
        truncated: [L] bool.
        meta: JSON-serialisable source info (source, seed, scenario, env_id, num_steps, ...).
    """

    latents: Tensor
    rows: dict[str, Tensor]
    rewards: Tensor
    terminated: Tensor
    truncated: Tensor
    meta: dict[str, Any] = field(default_factory=dict)


# ---------------------------------------------------------------------------------------------
# VAE identity
# ---------------------------------------------------------------------------------------------


def _jsonable(value: Any) -> Any:
    """Round-trips through JSON (tuples -> lists, unknown objects -> str)."""
    return json.loads(json.dumps(value, sort_keys=True, default=str))


def _vae_config(vae: Any) -> Any:
    config = getattr(vae, "config", None)
    if config is None:
        return None
    if dataclasses.is_dataclass(config):
        return _jsonable(dataclasses.asdict(config))
    if isinstance(config, Mapping):
        return _jsonable(dict(config))
    return str(config)


def _weights_digest(module: torch.nn.Module) -> str:
    digest = hashlib.sha256()
    for name, tensor in sorted(module.state_dict().items()):
        digest.update(name.encode())
        digest.update(str(tuple(tensor.shape)).encode())
        flat = tensor.detach().cpu().contiguous().reshape(-1)
        digest.update(flat.view(torch.uint8).numpy().tobytes())
    return digest.hexdigest()


def vae_identity(vae: LatentEncoder) -> dict[str, Any]:
    """What identifies the latents a VAE produces: class, sizes, config, weights digest, and their hash.

    Returns:
        JSON-serialisable dict; ``"hash"`` (16 hex digits) changes whenever any other field does,
        so a trainer can refuse a cache built with another VAE.
    """
    identity: dict[str, Any] = {
        "class": f"{type(vae).__module__}.{type(vae).__qualname__}",
        "latent_channels": int(vae.latent_channels),
        "spatial_factor": int(vae.spatial_factor),
        "temporal_factor": int(vae.temporal_factor),
        "config": _vae_config(vae),
    }
    if isinstance(vae, torch.nn.Module):
        identity["weights_sha256"] = _weights_digest(vae)
    identity["hash"] = hashlib.sha256(json.dumps(identity, sort_keys=True).encode()).hexdigest()[:16]
    return identity


def same_latent_space(a: Mapping[str, Any], b: Mapping[str, Any]) -> bool:
    """Whether two :func:`vae_identity` dicts encode frames to the same latents.

    The same class, sizes and weights digest suffice: a config field that only the VAE's training
    reads (a loss weight added in a later release, say) changes ``hash`` but not one latent. Without
    weights digests the hashes decide.
    """
    keys = ("class", "latent_channels", "spatial_factor", "temporal_factor", "weights_sha256")
    if a.get("weights_sha256") and b.get("weights_sha256"):
        return all(a.get(k) == b.get(k) for k in keys)
    return a.get("hash") == b.get("hash")


# ---------------------------------------------------------------------------------------------
# Encoding
# ---------------------------------------------------------------------------------------------


def _is_per_frame(vae: LatentEncoder) -> bool:
    """Whether frames can be encoded independently (no temporal context)."""
    if vae.temporal_factor != 1:
        return False
    try:
        from astra_gym.world_model.vae import SmallVAE
    except ImportError:  # pragma: no cover - the package ships it
        return False
    return isinstance(vae, SmallVAE) or bool(getattr(vae, "per_frame", False))


def _pixels(frames: np.ndarray) -> Tensor:
    """uint8 [P, H, W, 3] -> float32 [3, P, H, W] in [-1, 1]."""
    if frames.dtype != np.uint8 or frames.ndim != 4 or frames.shape[-1] != 3:
        raise ValueError(f"episode frames must be uint8 [T+1, H, W, 3], got {frames.dtype} {frames.shape}")
    return uint8_to_pixels(frames, channel_dim=0)


def _vae_device(vae: LatentEncoder) -> torch.device:
    try:
        return torch.device(vae.device)  # type: ignore[attr-defined]
    except (AttributeError, StopIteration, TypeError):
        return torch.device("cpu")


def _check_latents(vae: LatentEncoder, latents: Tensor, pixel_shape: Sequence[int]) -> None:
    """latents [B, C, L, h, w] must match the VAE's declared factors for pixels [B, 3, P, H, W]."""
    b, _, p, h, w = pixel_shape
    expected = (
        b,
        vae.latent_channels,
        1 + (p - 1) // vae.temporal_factor,
        h // vae.spatial_factor,
        w // vae.spatial_factor,
    )
    if tuple(latents.shape) != expected:
        raise ValueError(
            f"VAE {type(vae).__name__} returned latents {tuple(latents.shape)} for pixels {tuple(pixel_shape)}, "
            f"expected {expected} from its latent_channels/temporal_factor/spatial_factor; fix those attributes"
        )


@torch.inference_mode()
def _encode_clips(vae: LatentEncoder, frames: Sequence[np.ndarray], batch_frames: int) -> list[Tensor]:
    """Encodes equal-shape episodes' frames; returns one [C, L, h, w] float32 CPU tensor each."""
    device = _vae_device(vae)
    if _is_per_frame(vae):
        out = []
        for clip in frames:
            chunks = [
                vae.encode(_pixels(clip[a : a + batch_frames])[None].to(device)).float().cpu()
                for a in range(0, len(clip), batch_frames)
            ]
            latents = torch.cat(chunks, dim=2)
            _check_latents(vae, latents, (1, 3, *clip.shape[:3]))
            out.append(latents[0])
        return out
    per_call = max(1, batch_frames // len(frames[0]))
    out = []
    for a in range(0, len(frames), per_call):
        clip = torch.stack([_pixels(f) for f in frames[a : a + per_call]]).to(device)  # [B, 3, P, H, W]
        latents = vae.encode(clip)
        _check_latents(vae, latents, clip.shape)
        out.extend(latents.float().cpu().unbind(0))
    return out


@dataclass(frozen=True)
class _TrimmedEpisode:
    """View of an episode cut to its first ``steps`` steps (``steps + 1`` frames)."""

    episode: Any
    steps: int

    def __getattr__(self, name: str) -> Any:
        value = getattr(self.episode, name)
        if name in ("actions", "rewards", "terminated", "truncated"):
            return value[: self.steps]
        if name in ("frames", "step_index"):
            return value[: self.steps + 1]
        if name == "poses":
            return {k: v[: self.steps + 1] for k, v in value.items()}
        return value


def _latent_reduce(values: np.ndarray, temporal_factor: int, reduce: Literal["sum", "any"]) -> np.ndarray:
    """Per-step values [T] -> per-latent [L] under the "produced latent k" rule (latent 0 gets 0)."""
    ranges = latent_step_ranges(len(values), temporal_factor)
    out = np.zeros(len(ranges), dtype=np.float64)
    for k, span in enumerate(ranges[1:], start=1):
        chunk = values[span[0] : span[1]].astype(np.float64)
        out[k] = chunk.sum() if reduce == "sum" else float(np.any(chunk))
    return out


def _episode_meta(source: str, episode: Any, used_steps: int, latents: int, features: Sequence[str]) -> dict:
    return {
        "source": str(source),
        "seed": None if episode.seed is None else int(episode.seed),
        "scenario": str(episode.scenario),
        "env_id": str(episode.env_id),
        "num_steps": int(len(episode.actions)),
        "used_steps": int(used_steps),
        "dropped_steps": int(len(episode.actions) - used_steps),
        "num_latents": int(latents),
        "features": list(features),
    }


def _cached_episode(
    source: str, trimmed: _TrimmedEpisode, latents: Tensor, temporal_factor: int, config: CacheConfig
) -> CachedEpisode:
    episode, steps = trimmed.episode, trimmed.steps
    wanted = None
    if config.features is not None:  # each episode stores the requested features its scenario has
        wanted = tuple(f for f in config.features if f in SCENARIO_FEATURES.get(episode.scenario, ()))
    rows = episode_rows(trimmed, wanted)
    aligned = {
        name: torch.from_numpy(align_to_latents(r, temporal_factor, FEATURES[name].aggregation))
        for name, r in rows.items()
    }
    if not torch.isfinite(latents).all() or latents.abs().max() > torch.finfo(torch.float16).max:
        raise ValueError(f"episode {source}: latents are not finite or exceed the float16 range; check the VAE")
    return CachedEpisode(
        latents=latents.to(torch.float16).contiguous(),
        rows=aligned,
        rewards=torch.from_numpy(_latent_reduce(np.asarray(trimmed.rewards), temporal_factor, "sum")).float(),
        terminated=torch.from_numpy(_latent_reduce(np.asarray(trimmed.terminated), temporal_factor, "any") > 0),
        truncated=torch.from_numpy(_latent_reduce(np.asarray(trimmed.truncated), temporal_factor, "any") > 0),
        meta=_episode_meta(source, episode, steps, latents.shape[1], list(rows)),
    )


def encode_episodes(
    vae: LatentEncoder, episodes: Sequence[tuple[str, Any]], config: CacheConfig
) -> list[CachedEpisode]:
    """Encodes episodes and aligns their rows, rewards and done flags per latent.

    Args:
        vae: Any :class:`LatentEncoder`, placed on its device by the caller.
        episodes: (source path or id, ``Episode``) pairs.
        config: Cache settings.

    Returns:
        One :class:`CachedEpisode` per input, in order.
    """
    f = vae.temporal_factor
    trimmed = [_TrimmedEpisode(ep, f * (len(ep.actions) // f)) for _, ep in episodes]
    groups: dict[tuple[int, ...], list[int]] = {}  # equal frame shapes share encode calls
    for i, ep in enumerate(trimmed):
        groups.setdefault(tuple(ep.frames.shape), []).append(i)
    latents: dict[int, Tensor] = {}
    for members in groups.values():
        encoded = _encode_clips(vae, [trimmed[i].frames for i in members], config.batch_frames)
        latents.update(zip(members, encoded, strict=True))
    return [_cached_episode(src, trimmed[i], latents[i], f, config) for i, (src, _) in enumerate(episodes)]


# ---------------------------------------------------------------------------------------------
# Writing
# ---------------------------------------------------------------------------------------------


def _write_json(path: Path, data: Mapping[str, Any]) -> None:
    atomic_write_text(path, json.dumps(data, indent=1, sort_keys=True))


def _write_shard(path: Path, episodes: Sequence[CachedEpisode]) -> None:
    tensors: dict[str, Tensor] = {}
    for j, ep in enumerate(episodes):
        tensors[f"{j}/latents"] = ep.latents
        tensors[f"{j}/rewards"] = ep.rewards
        tensors[f"{j}/terminated"] = ep.terminated
        tensors[f"{j}/truncated"] = ep.truncated
        for name, rows in ep.rows.items():
            tensors[f"{j}/rows/{name}"] = rows.float().contiguous()
    meta = {_META_KEY: json.dumps({"format": FORMAT_NAME, "episodes": [ep.meta for ep in episodes]})}
    atomic_write(path, lambda tmp: save_file(tensors, str(tmp), metadata=meta))


@dataclass
class _RowStats:
    """Running per-column statistics of one feature's non-null rows."""

    count: int = 0
    total: np.ndarray | None = None
    total_sq: np.ndarray | None = None
    low: np.ndarray | None = None
    high: np.ndarray | None = None

    def add(self, rows: np.ndarray) -> None:
        rows = rows.astype(np.float64)
        if len(rows) == 0:
            return
        if self.total is None:
            self.total, self.total_sq = np.zeros(rows.shape[1]), np.zeros(rows.shape[1])
            self.low, self.high = rows.min(0), rows.max(0)
        self.count += len(rows)
        self.total += rows.sum(0)
        self.total_sq += (rows**2).sum(0)
        self.low, self.high = np.minimum(self.low, rows.min(0)), np.maximum(self.high, rows.max(0))

    def to_dict(self) -> dict[str, Any]:
        if self.total is None:
            return {"count": 0}
        mean = self.total / self.count
        std = np.sqrt(np.maximum(self.total_sq / self.count - mean**2, 0.0))
        stats = {"mean": mean, "std": std, "min": self.low, "max": self.high}
        return {"count": self.count, **{k: v.tolist() for k, v in stats.items()}}


def _non_null(rows: Tensor) -> np.ndarray:
    """Aligned rows [L, d] without latent 0's null row."""
    return rows[1:].numpy()


class _IndexBuilder:
    """Accumulates the manifest while shards are written."""

    def __init__(self, identity: dict[str, Any], config: CacheConfig) -> None:
        self.identity = identity
        self.config = config
        self.shards: list[dict[str, Any]] = []
        self.stats: dict[str, _RowStats] = {}
        self.latent_shape: list[int] | None = None

    def add_shard(self, name: str, episodes: Sequence[CachedEpisode]) -> None:
        entries = []
        for j, ep in enumerate(episodes):
            shape = [ep.latents.shape[0], *ep.latents.shape[2:]]
            if self.latent_shape is not None and shape != self.latent_shape:
                raise ValueError(
                    f"episode {ep.meta['source']} has latents [C, h, w]={shape} but the cache holds "
                    f"{self.latent_shape}; "
                    "record all episodes of one cache at the same frame size"
                )
            self.latent_shape = shape
            for feature, rows in ep.rows.items():
                self.stats.setdefault(feature, _RowStats()).add(_non_null(rows))
            entries.append({"key": str(j), **ep.meta})
        self.shards.append({"file": name, "episodes": entries})

    def to_dict(self, complete: bool) -> dict[str, Any]:
        features = {
            name: {**dataclasses.asdict(FEATURES[name]), "stats": stats.to_dict()}
            for name, stats in self.stats.items()
        }
        return {
            "format": FORMAT_NAME,
            "version": FORMAT_VERSION,
            "complete": complete,
            "vae": self.identity,
            "latent_shape": self.latent_shape,
            "alignment": {
                "convention": "exact",
                "temporal_factor": self.identity["temporal_factor"],
                "null_row": "zeros",
                "rewards": "sum over the steps that produced latent k; 0 for latent 0",
                "dones": "any over the steps that produced latent k",
            },
            "features": features,
            "inference_feature": dict(INFERENCE_FEATURE),
            "num_episodes": sum(len(s["episodes"]) for s in self.shards),
            "shards": self.shards,
        }


def _prepare_out_dir(out_dir: Path, overwrite: bool) -> list[Path]:
    """Creates ``out_dir``; returns the previous build's files (deleted once the new one completes)."""
    out_dir.mkdir(parents=True, exist_ok=True)
    old = sorted(out_dir.glob("shard-*.safetensors"))
    if (old or (out_dir / INDEX_NAME).exists()) and not overwrite:
        raise FileExistsError(
            f"{out_dir} already holds a latent cache; pass overwrite=True (--overwrite) or choose another --out"
        )
    return old


def _batches(items: Iterable[Any], size: int) -> Iterator[list[Any]]:
    batch: list[Any] = []
    for item in items:
        batch.append(item)
        if len(batch) == size:
            yield batch
            batch = []
    if batch:
        yield batch


def build_latent_cache(
    episodes: Iterable[tuple[str, Any]],
    vae: LatentEncoder,
    out_dir: str | os.PathLike,
    config: CacheConfig | None = None,
    overwrite: bool = False,
    progress: Callable[[int], None] | None = None,
) -> dict[str, Any]:
    """Encodes ``episodes`` into shards under ``out_dir`` and writes ``index.json``.

    The index is rewritten (atomically, ``complete: false``) after every shard and marked
    complete at the end; files of a previous build in ``out_dir`` are removed only then.

    Args:
        episodes: (source path or id, ``Episode``) pairs, streamed one shard at a time.
        vae: Encoder on its device (see :class:`LatentEncoder`).
        out_dir: Cache folder.
        config: Cache settings; None -> ``CacheConfig()``.
        overwrite: Allow replacing an existing cache in ``out_dir``.
        progress: Called with the number of episodes finished after each shard.

    Returns:
        The final manifest (the content of ``index.json``).
    """
    config = CacheConfig() if config is None else config
    out = Path(out_dir)
    stale = _prepare_out_dir(out, overwrite)
    run = uuid.uuid4().hex[:8]
    index = _IndexBuilder(vae_identity(vae), config)
    for n, batch in enumerate(_batches(episodes, config.episodes_per_shard)):
        name = f"shard-{run}-{n:05d}.safetensors"
        encoded = encode_episodes(vae, batch, config)
        index.add_shard(name, encoded)  # validates before anything is written
        _write_shard(out / name, encoded)
        _write_json(out / INDEX_NAME, index.to_dict(complete=False))
        if progress is not None:
            progress(len(batch))
    manifest = index.to_dict(complete=True)
    _write_json(out / INDEX_NAME, manifest)
    for path in stale:
        path.unlink(missing_ok=True)
    return manifest


# ---------------------------------------------------------------------------------------------
# Reading
# ---------------------------------------------------------------------------------------------


def read_index(root: str | os.PathLike, allow_incomplete: bool = False) -> dict[str, Any]:
    """Reads and checks ``root/index.json``.

    Raises:
        FileNotFoundError: No index (not a cache, or the build never finished a shard).
        ValueError: Another format/version, or an incomplete build without ``allow_incomplete``.
    """
    path = Path(root) / INDEX_NAME
    if not path.is_file():
        raise FileNotFoundError(
            f"no {INDEX_NAME} in {root}; build the cache with `python -m astra_gym.data.latent_cache`"
        )
    index = json.loads(path.read_text())
    if index.get("format") != FORMAT_NAME or index.get("version") != FORMAT_VERSION:
        raise ValueError(
            f"{path} is format {index.get('format')!r} v{index.get('version')}, expected {FORMAT_NAME!r} "
            f"v{FORMAT_VERSION}; rebuild the cache with this version of astra_gym"
        )
    if not index.get("complete") and not allow_incomplete:
        raise ValueError(f"{path}: the cache build did not finish; rebuild it or pass allow_incomplete=True")
    return index


@dataclass(frozen=True)
class WindowSpec:
    """A training window of consecutive latents: ``history`` condition latents then ``target`` ones.

    Attributes:
        history: Condition latents (>= 1).
        target: Latents to generate (>= 1).
        stride: Spacing of window starts within an episode.
    """

    history: int
    target: int
    stride: int = 1

    def __post_init__(self) -> None:
        if self.history < 1 or self.target < 1 or self.stride < 1:
            raise ValueError(f"history={self.history}, target={self.target}, stride={self.stride} must all be >= 1")

    @property
    def length(self) -> int:
        """Latents per window."""
        return self.history + self.target


@dataclass(frozen=True)
class _EpisodeRef:
    shard: Path
    key: str
    scenario: str
    feature: str
    num_latents: int
    meta: dict[str, Any]


class LatentShardDataset(torch.utils.data.Dataset):
    """Fixed-length latent windows with their aligned action rows, read lazily from a cache.

    Only ``index.json`` is read up front; each item reads the window's slices from its shard. Each
    episode contributes the windows starting at 0, stride, 2·stride, ... that fit inside it.

    Args:
        root: Cache folder.
        window: History and target lengths.
        features: Scenario -> feature whose rows to return; None -> the cache's inference feature
            per scenario (``index["inference_feature"]``).
        scenarios: Keep only these scenarios; None -> every scenario in ``features``.
        expected_vae_hash: If given, refuse a cache built with another VAE.
        allow_incomplete: Read a cache whose build did not finish.

    Items are dicts: ``latents`` [C, W, h, w] float32, ``rows`` [W, d] float32 (no flag),
    ``rewards`` [W] float32, ``terminated``/``truncated`` [W] bool, ``history`` (int), ``modality``
    and ``feature`` (str), ``episode`` (int) and ``start`` (int, first latent of the window).
    Batch items of one modality together (widths differ between modalities).
    """

    def __init__(
        self,
        root: str | os.PathLike,
        window: WindowSpec,
        features: Mapping[str, str] | None = None,
        scenarios: Sequence[str] | None = None,
        expected_vae_hash: str | None = None,
        allow_incomplete: bool = False,
    ) -> None:
        self.root = Path(root)
        self.index = read_index(self.root, allow_incomplete)
        if expected_vae_hash is not None and self.index["vae"]["hash"] != expected_vae_hash:
            raise ValueError(
                f"cache {root} was built with VAE {self.index['vae']['hash']} but {expected_vae_hash} was expected; "
                "rebuild the cache with the model's VAE"
            )
        self.window = window
        self.features = dict(self.index["inference_feature"] if features is None else features)
        self.episodes = self._select(scenarios)
        self.windows = self._windows()
        self._handles: dict[Path, Any] = {}

    def _select(self, scenarios: Sequence[str] | None) -> list[_EpisodeRef]:
        keep = set(self.features if scenarios is None else scenarios)
        refs = []
        for shard in self.index["shards"]:
            for entry in shard["episodes"]:
                if entry["scenario"] not in keep:
                    continue
                feature = self.features.get(entry["scenario"])
                if feature not in entry["features"]:
                    raise ValueError(
                        f"episode {entry['source']} ({entry['scenario']}) has no rows for feature {feature!r}, only "
                        f"{entry['features']}; pick another feature or rebuild the cache with it"
                    )
                refs.append(
                    _EpisodeRef(
                        self.root / shard["file"],
                        entry["key"],
                        entry["scenario"],
                        feature,
                        entry["num_latents"],
                        entry,
                    )
                )
        return refs

    def _windows(self) -> np.ndarray:
        """[N, 2] int64 (episode index, first latent) of every window, in cache order."""
        spans = [np.zeros((0, 2), dtype=np.int64)]
        for i, ref in enumerate(self.episodes):
            starts = np.arange(0, ref.num_latents - self.window.length + 1, self.window.stride, dtype=np.int64)
            spans.append(np.stack([np.full_like(starts, i), starts], 1))
        return np.concatenate(spans)

    def __len__(self) -> int:
        return len(self.windows)

    def __getstate__(self) -> dict[str, Any]:  # open shard handles do not pickle (DataLoader workers)
        return {**self.__dict__, "_handles": {}}

    def _shard(self, path: Path) -> Any:
        if path not in self._handles:
            self._handles[path] = safe_open(str(path), framework="pt")
        return self._handles[path]

    def sample_indices(self, num: int, generator: torch.Generator) -> Tensor:
        """``num`` window indices drawn uniformly with replacement, reproducible from ``generator``."""
        if len(self) == 0:
            raise ValueError(f"no window of {self.window.length} latents fits in any selected episode; shorten it")
        return torch.randint(len(self), (num,), generator=generator, device=generator.device).cpu()

    def __getitem__(self, i: int) -> dict[str, Any]:
        episode, start = (int(v) for v in self.windows[i])
        ref = self.episodes[episode]
        stop = start + self.window.length
        shard = self._shard(ref.shard)
        return {
            "latents": shard.get_slice(f"{ref.key}/latents")[:, start:stop].float(),
            "rows": shard.get_slice(f"{ref.key}/rows/{ref.feature}")[start:stop],
            "rewards": shard.get_slice(f"{ref.key}/rewards")[start:stop],
            "terminated": shard.get_slice(f"{ref.key}/terminated")[start:stop],
            "truncated": shard.get_slice(f"{ref.key}/truncated")[start:stop],
            "history": self.window.history,
            "modality": FEATURES[ref.feature].modality,
            "feature": ref.feature,
            "episode": episode,
            "start": start,
        }

    def load_episode(self, episode: int) -> dict[str, Tensor]:
        """Every stored tensor of one selected episode: ``latents`` [C, L, h, w] float16, ``rows/{feature}``, ..."""
        ref = self.episodes[episode]
        shard = self._shard(ref.shard)
        prefix = f"{ref.key}/"
        return {k[len(prefix) :]: shard.get_tensor(k) for k in shard.keys() if k.startswith(prefix)}

    def mean_latent(self, max_episodes: int = 64) -> Tensor:
        """The mean latent of up to ``max_episodes`` evenly spaced selected episodes (every latent of each).

        Returns:
            [C, h, w] float32, what a cell of this data holds on average (the static scene).
        """
        if not self.episodes:
            raise ValueError(f"{self.root}: no selected episode to average")
        picks = np.unique(np.linspace(0, len(self.episodes) - 1, min(max_episodes, len(self.episodes))).round())
        total, count = None, 0
        for episode in picks.astype(int).tolist():
            latents = self.load_episode(episode)["latents"].float()  # [C, L, h, w]
            total = latents.sum(dim=1) if total is None else total + latents.sum(dim=1)
            count += latents.shape[1]
        return total / count


# ---------------------------------------------------------------------------------------------
# CLI
# ---------------------------------------------------------------------------------------------


def load_vae(spec: str, weights: str | None = None, device: str = "cpu") -> LatentEncoder:
    """Builds the VAE named on the command line.

    Args:
        spec: ``"small"`` / ``"debug"`` (a :class:`~astra_gym.world_model.vae.SmallVAE` preset) or a
            local diffusers-format Wan2.1 VAE folder.
        weights: safetensors state dict for a SmallVAE preset (normalisation buffers included).
            Without it the preset is randomly initialised, which is only good for smoke tests.
        device: Torch device.
    """
    from safetensors.torch import load_file

    from astra_gym.world_model.vae import SMALL_VAE_PRESETS, SmallVAE, WanVAE

    if spec in SMALL_VAE_PRESETS:
        vae = SmallVAE.from_preset(spec)
        if weights is None:
            logger.warning("SmallVAE preset %r without --vae-weights is randomly initialised", spec)
        else:
            vae.load_state_dict(load_file(weights))
        return vae.to(device).eval()
    if weights is not None:
        raise ValueError(f"--vae-weights only applies to the presets {sorted(SMALL_VAE_PRESETS)}, not to {spec!r}")
    if not Path(spec).is_dir():
        raise ValueError(f"--vae {spec!r} is neither a preset {sorted(SMALL_VAE_PRESETS)} nor a Wan VAE folder")
    return WanVAE.from_pretrained(spec, device=device).eval()


def _episode_files(folder: Path) -> list[Path]:
    from astra_gym.data.episodes import episode_paths

    files = episode_paths(folder)
    if not files:
        raise FileNotFoundError(f"no episode files (*.hdf5) in {folder}; record episodes first")
    return files


def _iter_episodes(files: Sequence[Path]) -> Iterator[tuple[str, Any]]:
    from astra_gym.data.episodes import load_episode

    for path in files:
        yield str(path), load_episode(path)


@dataclass(frozen=True)
class Args:
    """Flags of ``python -m astra_gym.data.latent_cache`` (each field's help is its ``--help`` text)."""

    episodes: str = arg(help="folder of recorded episode_*.hdf5 files")
    vae: str = arg(help="'small', 'debug' or a Wan2.1 VAE folder")
    out: str = arg(help="cache folder to write")
    vae_weights: str | None = arg(None, help="safetensors weights of a small/debug VAE")
    episodes_per_shard: int = arg(CacheConfig.episodes_per_shard, help="episodes per shard file")
    batch_frames: int = arg(CacheConfig.batch_frames, help="frames per VAE call")
    features: tuple[str, ...] | None = arg(None, help="feature names (none: all available)")
    device: str = arg("auto", help="cpu, cuda or auto")
    overwrite: bool = arg(False, help="replace an existing cache")


def main(argv: Sequence[str] | None = None) -> None:
    """Command-line entry point (see the module docstring)."""
    from tqdm import tqdm

    from astra_gym.utils.device import resolve_device

    args = parse_config(Args, argv, __doc__)
    config = CacheConfig(
        episodes_per_shard=args.episodes_per_shard,
        batch_frames=args.batch_frames,
        features=None if args.features is None else tuple(args.features),
    )
    vae = load_vae(args.vae, args.vae_weights, str(resolve_device(args.device)))
    files = _episode_files(Path(args.episodes))
    with tqdm(total=len(files), desc="encoding episodes", unit="ep") as bar:
        manifest = build_latent_cache(_iter_episodes(files), vae, Path(args.out), config, args.overwrite, bar.update)
    tqdm.write(f"wrote {manifest['num_episodes']} episodes in {len(manifest['shards'])} shards to {args.out}")


if __name__ == "__main__":
    main()
