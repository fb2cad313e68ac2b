"""The explicit, batched state of a world-model rollout (no hidden module state anywhere).

A :class:`RolloutState` is everything :class:`~astra_gym.rollout.engine.WorldModelRollout` needs to
continue B imagined videos, one per batch row:

=================  ====================================  ==========================================
field              holds                                 bounded by
=================  ====================================  ==========================================
``history``        FramePack latent history + the        ``layout.window + 1`` latents per row
                   action row of every latent            (:class:`FramePackHistory`)
``generators``     one CPU ``torch.Generator`` per row   constant (mt19937 state, 5 KB)
``text_context``   [B, L, text_dim] text features        constant
``modality``       [B] action modality index             constant
``vae_streams``    one ``VaeStreamState`` per row        the VAE's causal cache (2 frames per conv
                                                         for Wan; empty for ``SmallVAE``)
``steps``          [B] chunks generated since reset      one integer per row
``recent_frames``  uint8 [B, K, H, W, 3] newest frames   K = the reward model's ``num_frames``
                   (what the reward model reads)         (0 without a reward model)
``start_frames``   uint8 [B, 1, H, W, 3] the newest      one frame per row
                   frame at reset (an anchored reward    (0 without a reward model)
                   model's anchor)
=================  ====================================  ==========================================

Nothing in it grows with the episode length, so memory is flat however long a rollout runs.

States are immutable: the engine never modifies one in place (tensors are replaced, generators
are cloned before they draw), so an old state can be stepped again, forked or kept as a snapshot.
The row helpers here (:meth:`select`, :meth:`repeat_interleave`, :meth:`put`) are the batch
bookkeeping of partial resets, autoreset and MPC forks.
"""

from __future__ import annotations

import dataclasses
import hashlib
from collections.abc import Sequence
from dataclasses import dataclass

import torch
from torch import Tensor

from astra_gym.world_model.framepack import FramePackHistory
from astra_gym.world_model.vae import VaeStreamState

__all__ = ["RolloutState", "clone_generator", "derive_generator"]


def clone_generator(generator: torch.Generator) -> torch.Generator:
    """A new generator on the same device with the same state (draws the same numbers next)."""
    copy = torch.Generator(device=generator.device)
    copy.set_state(generator.get_state())
    return copy


def derive_generator(generator: torch.Generator, child: int) -> torch.Generator:
    """A generator seeded from ``generator``'s state and ``child``, without advancing ``generator``.

    The seed is the first 8 bytes of BLAKE2b(state bytes || child), so deriving twice from the same
    state gives the same child, and different children get unrelated streams.
    """
    digest = hashlib.blake2b(generator.get_state().numpy().tobytes(), digest_size=8)
    digest.update(int(child).to_bytes(8, "little", signed=False))
    seed = int.from_bytes(digest.digest(), "little") >> 1  # 63 bits
    derived = torch.Generator(device=generator.device)
    derived.manual_seed(seed)
    return derived


def _rows_tensor(rows: Tensor | Sequence[int], batch: int) -> Tensor:
    """Long row indices (CPU) from indices or a [B] bool mask, validated against ``batch``."""
    rows = torch.as_tensor(rows).cpu()
    if rows.dtype == torch.bool:
        if rows.shape != (batch,):
            raise ValueError(f"a row mask must have shape [{batch}], got {tuple(rows.shape)}")
        rows = torch.nonzero(rows).flatten()
    rows = rows.long().flatten()
    if rows.numel() and (int(rows.min()) < -batch or int(rows.max()) >= batch):
        raise ValueError(f"row indices {rows.tolist()} out of range for a batch of {batch}")
    return rows % batch if batch else rows


@dataclass(frozen=True, eq=False)
class RolloutState:
    """B rollouts in flight (see the module docstring for the field table).

    Attributes:
        history: Latent history and action rows, on the engine's device.
        generators: B CPU generators; row i's noise comes from ``generators[i]`` alone.
        text_context: [B, L, text_dim] text features on the engine's device, or None (no text).
        modality: [B] long modality index of each row, on the engine's device.
        vae_streams: B per-row VAE stream states (batch size 1 each, or empty for stateless VAEs).
        steps: [B] long chunks generated since each row's reset (CPU).
        recent_frames: uint8 [B, K, H, W, 3] the K newest frames of each row, oldest first, on the
            engine's device (K may be 0). After a reset they are the VAE's reconstructions of the
            context, the image domain of every generated frame, so a reward model compares like with like.
        start_frames: uint8 [B, 1, H, W, 3] the newest of ``recent_frames`` at the row's reset ([B, 0, ...]
            without a reward model): the real start that a reward model with ``RewardModelConfig.anchor``
            reads beside the newest frames (e.g. where FetchPush's block and goal were before the world
            model could lose them).
    """

    history: FramePackHistory
    generators: tuple[torch.Generator, ...]
    text_context: Tensor | None
    modality: Tensor
    vae_streams: tuple[VaeStreamState, ...]
    steps: Tensor
    recent_frames: Tensor
    start_frames: Tensor

    def __post_init__(self) -> None:
        batch = self.history.batch_size
        sizes = {
            "generators": len(self.generators),
            "modality": self.modality.shape[0],
            "vae_streams": len(self.vae_streams),
            "steps": self.steps.shape[0],
            "recent_frames": self.recent_frames.shape[0],
            "start_frames": self.start_frames.shape[0],
        }
        if self.text_context is not None:
            sizes["text_context"] = self.text_context.shape[0]
        wrong = {name: size for name, size in sizes.items() if size != batch}
        if wrong:
            raise ValueError(f"RolloutState fields must all have the history's batch size {batch}, got {wrong}")

    @property
    def batch_size(self) -> int:
        """Rows B."""
        return self.history.batch_size

    def select(self, rows: Tensor | Sequence[int]) -> RolloutState:
        """The given rows (long indices, repeats allowed, or a [B] bool mask), sharing no generator."""
        index = _rows_tensor(rows, self.batch_size)
        picked = index.tolist()
        return RolloutState(
            history=self.history.select(index.to(self.history.device)),
            generators=tuple(clone_generator(self.generators[i]) for i in picked),
            text_context=None if self.text_context is None else self.text_context[index.to(self.text_context.device)],
            modality=self.modality[index.to(self.modality.device)],
            vae_streams=tuple(self.vae_streams[i] for i in picked),
            steps=self.steps[index],
            recent_frames=self.recent_frames[index.to(self.recent_frames.device)],
            start_frames=self.start_frames[index.to(self.start_frames.device)],
        )

    def put(self, rows: Tensor | Sequence[int], other: RolloutState) -> RolloutState:
        """This state with rows ``rows`` replaced by the rows of ``other`` (in order).

        Args:
            rows: n distinct long indices or a [B] bool mask with n True entries.
            other: A state with n rows.
        """
        index = _rows_tensor(rows, self.batch_size)
        if other.batch_size != index.numel():
            raise ValueError(f"put: {index.numel()} target rows but the other state has {other.batch_size} rows")
        if len(set(index.tolist())) != index.numel():
            raise ValueError(f"put: target rows {index.tolist()} contain duplicates")
        generators, streams = list(self.generators), list(self.vae_streams)
        for source, target in enumerate(index.tolist()):
            generators[target] = other.generators[source]
            streams[target] = other.vae_streams[source]
        return RolloutState(
            history=_put_history(self.history, index.to(self.history.device), other.history),
            generators=tuple(generators),
            text_context=_put_rows(self.text_context, index, other.text_context),
            modality=_put_rows(self.modality, index, other.modality),
            vae_streams=tuple(streams),
            steps=_put_rows(self.steps, index, other.steps),
            recent_frames=_put_rows(self.recent_frames, index, other.recent_frames),
            start_frames=_put_rows(self.start_frames, index, other.start_frames),
        )

    def clone(self) -> RolloutState:
        """A deep copy: new tensors and new generators with the same states."""
        return RolloutState(
            history=self.history.clone(),
            generators=tuple(clone_generator(g) for g in self.generators),
            text_context=None if self.text_context is None else self.text_context.clone(),
            modality=self.modality.clone(),
            vae_streams=tuple(_clone_stream(s) for s in self.vae_streams),
            steps=self.steps.clone(),
            recent_frames=self.recent_frames.clone(),
            start_frames=self.start_frames.clone(),
        )

    def nbytes(self) -> int:
        """Bytes held by the state's tensors (history, context, counters, VAE caches, generator states)."""
        tensors = [getattr(self.history, f.name) for f in dataclasses.fields(self.history)]
        tensors += [self.modality, self.steps, self.recent_frames, self.start_frames]
        tensors += [self.text_context] if self.text_context is not None else []
        tensors += [t for s in self.vae_streams for t in s.cache if isinstance(t, Tensor)]
        total = sum(t.numel() * t.element_size() for t in tensors)
        return total + sum(g.get_state().numel() for g in self.generators)


def _put_rows(mine: Tensor | None, index: Tensor, theirs: Tensor | None) -> Tensor | None:
    """``mine`` with rows ``index`` replaced by ``theirs`` (both None -> None)."""
    if mine is None or theirs is None:
        if mine is not theirs:
            raise ValueError("put: both states must have a text context, or neither")
        return None
    out = mine.clone()
    out[index.to(out.device)] = theirs.to(out.device, out.dtype)
    return out


def _put_history(mine: FramePackHistory, index: Tensor, theirs: FramePackHistory) -> FramePackHistory:
    """Row replacement for every tensor of a FramePackHistory."""
    fields = {
        f.name: _put_rows(getattr(mine, f.name), index, getattr(theirs, f.name)) for f in dataclasses.fields(mine)
    }
    return FramePackHistory(**fields)


def _clone_stream(stream: VaeStreamState) -> VaeStreamState:
    """A stream state whose cached tensors are copies (markers and None are kept)."""
    cache = tuple(t.clone() if isinstance(t, Tensor) else t for t in stream.cache)
    return dataclasses.replace(stream, cache=cache)
