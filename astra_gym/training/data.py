"""Joint multi-domain training batches for the world model, drawn from latent caches.

Each dataset is one latent-cache folder plus the scenario (and so the modality slot and action
feature) it trains: drive -> ``vehicle_command`` (vehicle slot), manipulation -> ``robot_command``
(robot slot), explore -> ``keyboard`` (keyboard slot) by default
(:data:`~astra_gym.data.action_codecs.INFERENCE_FEATURE`). One model is trained on all of them.

How one batch is drawn (all draws from one generator, in this order):

1. **Dataset** by the normalised sampling weights: per batch row (``mixing="sample"``, mixed-modality
   batches: rows of different modalities are padded to the widest row and each row carries its own
   modality index and flag column) or once for the whole batch (``mixing="step"``,
   single-modality batches; needed when the caches' latent sizes differ).
2. **Window** uniformly among the dataset's windows of ``max_history + chunk`` consecutive latents
   (:meth:`~astra_gym.data.latent_cache.LatentShardDataset.sample_indices`).
3. **History length** n with the release's distribution
   (:func:`~astra_gym.world_model.framepack.sample_history_length`, capped by ``max_history``).
4. **Offset** s ~ U{0 .. W - n - chunk} of the history inside the window; the history is latents
   [s, s + n) and the target chunk [s + n, s + n + chunk).

With ``episode_start_p`` > 0, a row is instead drawn, with that probability, from an episode's
first window with offset 0: its history begins at the episode's reset frame. Uniform windows
almost never do (one window in ~200 per episode), yet every real episode an agent plays starts
there (one extra draw per row, before step 2; p = 0 draws nothing extra).

Rows are normalised (:mod:`~astra_gym.training.normalization`), the history is put in a
:class:`~astra_gym.world_model.framepack.FramePackHistory` at its true episode indices and packed
with the ``exact`` layout; the targets' rows get flag 0 and the history rows flag 1 (set by
:func:`~astra_gym.world_model.framepack.pack`), as at inference in the rollout engine.
"""

from __future__ import annotations

import dataclasses
import logging
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Literal, TypeVar

import torch
from torch import Tensor

from astra_gym.data.action_codecs import FEATURES, INFERENCE_FEATURE, SCENARIO_FEATURES
from astra_gym.data.latent_cache import LatentShardDataset, WindowSpec, same_latent_space
from astra_gym.training.normalization import ActionNormalizer
from astra_gym.world_model.action_encoders import flag_columns, make_action_rows
from astra_gym.world_model.conditioning import ActionInput, FramePackInputs
from astra_gym.world_model.config import AstraTransformerConfig
from astra_gym.world_model.framepack import FramePackHistory, FramePackLayout, pack, sample_history_length

__all__ = [
    "DatasetSpec",
    "WindowDraw",
    "WorldModelBatch",
    "JointLatentData",
    "batch_to",
    "frame_pack_to",
    "map_tensors",
]

logger = logging.getLogger(__name__)

T = TypeVar("T")


@dataclass(frozen=True)
class DatasetSpec:
    """One training dataset.

    Attributes:
        root: Latent-cache folder (``python -m astra_gym.data.latent_cache``).
        scenario: ``"drive"``, ``"manipulation"`` or ``"explore"``; only its episodes are used.
        weight: Relative sampling weight (> 0).
        feature: Action feature to condition on; None = the scenario's inference (command) feature.
        name: Label in logs; None = the scenario.
    """

    root: str
    scenario: str
    weight: float = 1.0
    feature: str | None = None
    name: str | None = None

    def __post_init__(self) -> None:
        if self.scenario not in SCENARIO_FEATURES:
            raise ValueError(f"unknown scenario {self.scenario!r}; choose one of {sorted(SCENARIO_FEATURES)}")
        if not self.weight > 0:
            raise ValueError(f"dataset {self.label}: weight={self.weight} must be > 0")
        if self.feature is not None and self.feature not in SCENARIO_FEATURES[self.scenario]:
            raise ValueError(
                f"scenario {self.scenario!r} has no feature {self.feature!r}; it provides "
                f"{list(SCENARIO_FEATURES[self.scenario])}"
            )

    @property
    def label(self) -> str:
        """Name used in logs and metric keys."""
        return self.name or self.scenario

    @property
    def resolved_feature(self) -> str:
        """The feature actually used."""
        return self.feature or INFERENCE_FEATURE[self.scenario]

    @classmethod
    def parse(cls, text: str) -> DatasetSpec:
        """Parses ``"scenario=drive,path=DIR[,weight=1.0][,feature=NAME][,name=LABEL]"`` (the CLI form)."""
        fields: dict[str, str] = {}
        for part in text.split(","):
            key, sep, value = part.partition("=")
            if not sep or not value:
                raise ValueError(f"dataset {text!r}: expected comma-separated key=value pairs, got {part!r}")
            fields[key.strip()] = value.strip()
        unknown = sorted(set(fields) - {"scenario", "path", "weight", "feature", "name"})
        if unknown or "scenario" not in fields or "path" not in fields:
            raise ValueError(
                f"dataset {text!r}: needs scenario= and path=, optional weight=, feature=, name= (unknown: {unknown})"
            )
        weight = float(fields.get("weight", 1.0))
        return cls(fields["path"], fields["scenario"], weight, fields.get("feature"), fields.get("name"))


@dataclass(frozen=True)
class WindowDraw:
    """Where one batch row comes from.

    Attributes:
        dataset: Index into the datasets.
        window: Window index within that dataset.
        history: History length n (latents).
        offset: First history latent within the window.
    """

    dataset: int
    window: int
    history: int
    offset: int


@dataclass(frozen=True, eq=False)
class WorldModelBatch:
    """Packed training inputs (before noise-as-mask, action dropout and target noise).

    Attributes:
        target: [B, C, F, h, w] clean target latents.
        frame_pack: Packed clean history.
        actions: Action rows [B, A, D] (normalised, flags set) and modality [B].
        dataset: [B] long dataset index of each row.
        history_length: [B] long history latents of each row.
        prefix: Only with ``JointLatentData(prefix=True)``: each row's history without its newest
            latent, packed to predict that latent (:mod:`~astra_gym.training.self_forcing`). Rows
            with one history latent hold it again here and are never self-forced.
        prefix_actions: The prefix's action rows and modality.
    """

    target: Tensor
    frame_pack: FramePackInputs
    actions: ActionInput
    dataset: Tensor
    history_length: Tensor
    prefix: FramePackInputs | None = None
    prefix_actions: ActionInput | None = None

    @property
    def batch_size(self) -> int:
        """Rows B."""
        return self.target.shape[0]


def map_tensors(tree: T, fn: Callable[[Tensor], Tensor]) -> T:
    """``tree`` with ``fn`` applied to every tensor in it (dataclasses and tuples are rebuilt).

    Args:
        tree: A tensor, or a dataclass / tuple holding tensors (e.g. a :class:`WorldModelBatch`,
            ``FramePackInputs`` or ``ModelInputs``); other values are kept as they are.
        fn: Applied to each tensor, e.g. ``lambda t: t.to(device)`` or ``lambda t: t[rows]``.

    Returns:
        A structure of the same type.
    """
    if isinstance(tree, Tensor):
        return fn(tree)
    if isinstance(tree, tuple):
        return type(tree)(map_tensors(item, fn) for item in tree)
    if dataclasses.is_dataclass(tree) and not isinstance(tree, type):
        fields = {f.name: map_tensors(getattr(tree, f.name), fn) for f in dataclasses.fields(tree) if f.init}
        return dataclasses.replace(tree, **fields)
    return tree


def frame_pack_to(frame_pack: FramePackInputs, device: torch.device | str) -> FramePackInputs:
    """Packed inputs with every tensor on ``device``."""
    return map_tensors(frame_pack, lambda t: t.to(device))


def batch_to(batch: WorldModelBatch, device: torch.device | str) -> WorldModelBatch:
    """The batch with every tensor on ``device``."""
    return map_tensors(batch, lambda t: t.to(device))


class JointLatentData:
    """Draws and loads joint multi-domain batches (see the module docstring).

    Args:
        specs: The datasets.
        model_config: Transformer config (modality slots and their widths).
        chunk_latents: Target latents per sample F.
        max_history: Longest history n (release: 30 latents).
        layout: FramePack layout (mode must be ``"exact"``).
        action_norm: ``"rms"`` (:class:`ActionNormalizer` from each cache's stats) or ``"none"``.
        mixing: ``"sample"`` (dataset drawn per row) or ``"step"`` (one dataset per batch).
        fixed_normalizers: ``{feature: normaliser}`` used as they are instead of fitting them to the
            caches (fine-tuning keeps the normalisation the model learned with, see
            :func:`~astra_gym.training.train_world_model.init_normalizers`).
        episode_start_p: Probability that a row's history starts at an episode's first frame.
        prefix: Also pack each row's history without its newest latent (``WorldModelBatch.prefix``,
            for self-forcing; needs ``chunk_latents`` 1).
    """

    def __init__(
        self,
        specs: Sequence[DatasetSpec],
        model_config: AstraTransformerConfig,
        chunk_latents: int,
        max_history: int,
        layout: FramePackLayout,
        action_norm: Literal["rms", "none"] = "rms",
        mixing: Literal["sample", "step"] = "sample",
        fixed_normalizers: Mapping[str, ActionNormalizer] | None = None,
        episode_start_p: float = 0.0,
        prefix: bool = False,
    ) -> None:
        if not specs:
            raise ValueError("no datasets given; pass at least one --dataset scenario=...,path=...")
        if layout.mode != "exact":
            raise ValueError(f"layout.mode={layout.mode!r}: our models train with the 'exact' FramePack layout")
        if mixing not in ("sample", "step"):
            raise ValueError(f"mixing={mixing!r} must be 'sample' or 'step'")
        if not 0.0 <= episode_start_p <= 1.0:
            raise ValueError(f"episode_start_p={episode_start_p} must be a probability in [0, 1]")
        labels = [spec.label for spec in specs]
        shared = sorted({label for label in labels if labels.count(label) > 1})
        if shared:
            roots = [spec.root for spec in specs if spec.label == shared[0]]
            raise ValueError(
                f"datasets {roots} share the log label {shared[0]!r}, so their per-dataset metrics would overwrite "
                "each other; give each its own name= (e.g. --dataset scenario=...,path=...,name=probe)"
            )
        if prefix and chunk_latents != 1:
            raise ValueError(
                f"self-forcing replaces one history latent and needs chunk_latents=1, got {chunk_latents}; "
                "set --self-forcing-p 0 or train with --chunk-latents 1"
            )
        self.episode_start_p, self.prefix = episode_start_p, prefix
        self.specs, self.config, self.layout, self.mixing = tuple(specs), model_config, layout, mixing
        self.chunk_latents, self.max_history = chunk_latents, max_history
        window = WindowSpec(history=max_history, target=chunk_latents)
        self.datasets = [self._open(spec, window) for spec in self.specs]
        self.first_windows = [torch.from_numpy((ds.windows[:, 1] == 0).nonzero()[0]) for ds in self.datasets]
        self.modality = [self._modality_index(spec) for spec in self.specs]
        self.width = max(model_config.modalities[m].dim for m in self.modality)
        self.normalizers = self._normalizers(action_norm, fixed_normalizers or {})
        weights = torch.tensor([spec.weight for spec in self.specs], dtype=torch.float64)
        self.weights = weights / weights.sum()
        self._check_caches()

    # ------------------------------------------------------------------------------ set-up

    @staticmethod
    def _open(spec: DatasetSpec, window: WindowSpec) -> LatentShardDataset:
        dataset = LatentShardDataset(
            spec.root, window, features={spec.scenario: spec.resolved_feature}, scenarios=[spec.scenario]
        )
        if len(dataset) == 0:
            raise ValueError(
                f"dataset {spec.label} ({spec.root}): no episode of scenario {spec.scenario!r} has the "
                f"{window.length} latents a window needs; record longer episodes or lower "
                "--max-history / --chunk-latents"
            )
        return dataset

    def _modality_index(self, spec: DatasetSpec) -> int:
        feature = FEATURES[spec.resolved_feature]
        names = [m.name for m in self.config.modalities]
        if feature.modality not in names:
            raise ValueError(
                f"dataset {spec.label}: feature {feature.name!r} fills modality {feature.modality!r}, which this "
                f"model does not have (modalities {names}); pick a preset with ASTRA_GYM_MODALITIES"
            )
        index = names.index(feature.modality)
        if self.config.modalities[index].dim != feature.dim + 1:
            raise ValueError(
                f"dataset {spec.label}: feature {feature.name!r} has {feature.dim} columns but modality "
                f"{feature.modality!r} takes {self.config.modalities[index].dim - 1} (+ flag)"
            )
        return index

    def _normalizers(self, mode: str, fixed: Mapping[str, ActionNormalizer]) -> list[ActionNormalizer]:
        """One normaliser per feature (``fixed``, else pooled over every cache that trains it); one per dataset."""
        if mode not in ("rms", "none"):
            raise ValueError(f"action_norm={mode!r} must be 'rms' or 'none'")
        by_feature: dict[str, ActionNormalizer] = dict(fixed)
        for spec in self.specs:
            feature = spec.resolved_feature
            if feature in by_feature:
                continue
            if mode == "none":
                by_feature[feature] = ActionNormalizer.identity(feature, FEATURES[feature].dim)
                continue
            stats = [
                ds.index["features"][feature]["stats"]
                for other, ds in zip(self.specs, self.datasets, strict=True)
                if other.resolved_feature == feature
            ]
            by_feature[feature] = ActionNormalizer.from_stats(feature, stats)
        return [by_feature[spec.resolved_feature] for spec in self.specs]

    def _check_caches(self) -> None:
        """One VAE for all caches, one feature per scenario; latent sizes may differ only with ``mixing="step"``."""
        features: dict[str, set[str]] = {}
        for spec in self.specs:
            features.setdefault(spec.scenario, set()).add(spec.resolved_feature)
        clashes = {k: sorted(v) for k, v in features.items() if len(v) > 1}
        if clashes:
            raise ValueError(f"a scenario must train one action feature, got {clashes}; set feature= consistently")
        first = self.datasets[0].index["vae"]
        if not all(same_latent_space(first, ds.index["vae"]) for ds in self.datasets[1:]):
            hashes = {ds.index["vae"]["hash"] for ds in self.datasets}
            raise ValueError(
                f"the latent caches were built with different VAEs (hashes {sorted(hashes)}); rebuild them all "
                "with the one VAE the world model will use"
            )
        shapes = {tuple(ds.index["latent_shape"]) for ds in self.datasets}
        if len(shapes) > 1 and self.mixing == "sample":
            raise ValueError(
                f"the caches hold latents of different sizes {sorted(shapes)}; per-sample mixing needs one size. "
                "Record all scenarios at the same --size, or train with --mixing step"
            )
        if any(s[0] != self.config.in_channels for s in shapes):
            raise ValueError(
                f"latents have {sorted(shapes)} [C, h, w] but the model takes {self.config.in_channels} channels"
            )

    # ------------------------------------------------------------------------------ drawing

    def draw(self, batch_size: int, generator: torch.Generator) -> list[WindowDraw]:
        """Draws ``batch_size`` rows (dataset, window, history length, offset) from ``generator``."""
        if self.mixing == "step":
            one = int(torch.multinomial(self.weights, 1, generator=generator))
            choices = [one] * batch_size
        else:
            choices = torch.multinomial(self.weights, batch_size, replacement=True, generator=generator).tolist()
        return [self._draw_row(d, generator) for d in choices]

    def _draw_row(self, dataset: int, generator: torch.Generator) -> WindowDraw:
        ds = self.datasets[dataset]
        from_start = self.episode_start_p > 0 and float(torch.rand((), generator=generator)) < self.episode_start_p
        if from_start:
            firsts = self.first_windows[dataset]
            window = int(firsts[torch.randint(len(firsts), (), generator=generator)])
        else:
            window = int(ds.sample_indices(1, generator)[0])
        length = ds.window.length
        history = sample_history_length(generator, self.max_history, target_len=self.chunk_latents, clip_len=length)
        high = length - history - self.chunk_latents
        offset = 0 if from_start else int(torch.randint(0, high + 1, (), generator=generator))
        return WindowDraw(dataset, window, history, offset)

    # ------------------------------------------------------------------------------ loading

    def load(self, draws: Sequence[WindowDraw]) -> WorldModelBatch:
        """Reads, normalises and packs the drawn rows (CPU tensors)."""
        rows = [self._load_row(d) for d in draws]
        target = torch.cat([r[1] for r in rows])  # [B, C, F, h, w]
        modality = torch.tensor([self.modality[d.dataset] for d in draws], dtype=torch.long)
        frame_pack, actions = self._pack([r[0] for r in rows], [r[2] for r in rows], modality)
        prefix = prefix_actions = None
        if self.prefix:
            prefix, prefix_actions = self._pack([r[3] for r in rows], [r[4] for r in rows], modality)
        return WorldModelBatch(
            target=target,
            frame_pack=frame_pack,
            actions=actions,
            dataset=torch.tensor([d.dataset for d in draws], dtype=torch.long),
            history_length=torch.tensor([d.history for d in draws], dtype=torch.long),
            prefix=prefix,
            prefix_actions=prefix_actions,
        )

    def _pack(
        self, histories: Sequence[FramePackHistory], target_rows: Sequence[Tensor], modality: Tensor
    ) -> tuple[FramePackInputs, ActionInput]:
        """Rows' histories and target action rows [1, F, D] packed into one batch."""
        flags = flag_columns(self.config, modality)
        frame_pack, values = pack(_cat_histories(histories), torch.cat(target_rows), self.layout, flag_column=flags)
        return frame_pack, ActionInput(values, modality)

    def _load_row(self, draw: WindowDraw) -> tuple[FramePackHistory, Tensor, Tensor, FramePackHistory, Tensor]:
        """One row: (history with n latents, target [1, C, F, h, w], target rows [1, F, D], and the
        prefix: history without the newest latent (n - 1 >= 1, else the same one latent), its rows [1, 1, D])."""
        item = self.datasets[draw.dataset][draw.window]
        rows = make_action_rows(self.normalizers[draw.dataset].apply(item["rows"])[None], 0.0, self.width)  # [1, W, D]
        split, stop = draw.offset + draw.history, draw.offset + draw.history + self.chunk_latents
        latents = item["latents"][None]  # [1, C, W, h, w]

        def history(end: int) -> FramePackHistory:
            return FramePackHistory.from_latents(
                latents[:, :, draw.offset : end],
                rows[:, draw.offset : end],
                window=self.layout.window,
                start_index=item["start"] + draw.offset,
            )

        full = history(split)
        prefix = history(split - 1) if self.prefix and draw.history > 1 else full
        return full, latents[:, :, split:stop], rows[:, split:stop], prefix, rows[:, split - 1 : split]

    def batch(self, batch_size: int, generator: torch.Generator, rows: slice | None = None) -> WorldModelBatch:
        """Draws ``batch_size`` rows and loads ``rows`` of them (a data-parallel rank's share)."""
        draws = self.draw(batch_size, generator)
        return self.load(draws if rows is None else draws[rows])

    # ------------------------------------------------------------------------------ metadata

    def mean_latents(self, max_episodes: int = 64) -> tuple[Tensor, ...]:
        """Each dataset's mean latent [C, h, w] float32 (:meth:`LatentShardDataset.mean_latent`), by dataset index."""
        return tuple(ds.mean_latent(max_episodes) for ds in self.datasets)

    def scenario_metadata(self) -> dict[str, Any]:
        """What an env needs per scenario: modality slot, feature, width and action normalisation."""
        meta: dict[str, Any] = {}
        for spec, modality, norm in zip(self.specs, self.modality, self.normalizers, strict=True):
            meta[spec.scenario] = {
                "modality": self.config.modalities[modality].name,
                "feature": spec.resolved_feature,
                "action_dim": FEATURES[spec.resolved_feature].dim,
                "action_normalization": norm.to_dict(),
            }
        return meta

    def vae_identity(self) -> Mapping[str, Any]:
        """The VAE identity recorded by the caches (identical for all; checked at start)."""
        return self.datasets[0].index["vae"]


def _cat_histories(histories: Sequence[FramePackHistory]) -> FramePackHistory:
    """Row concatenation of histories of equal window and shapes."""
    fields = dataclasses.fields(FramePackHistory)
    return FramePackHistory(**{f.name: torch.cat([getattr(h, f.name) for h in histories]) for f in fields})
