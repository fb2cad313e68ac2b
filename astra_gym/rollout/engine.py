"""The functional rollout core shared by the envs, MPC planners and benchmarks.

``WorldModelRollout`` turns the world model (transformer + VAE [+ reward model]) into pure
functions over an explicit :class:`~astra_gym.rollout.state.RolloutState`::

    state          = rollout.reset(context_frames, seeds)        # encode the start frames
    state, frames  = rollout.step(state, action_rows)            # denoise + decode one chunk
    reward, logit  = rollout.score(state, action_rows)           # reward model on the newest frames
    children       = rollout.fork(state, n)                      # n copies of every row (MPC)

plus the row bookkeeping of vector envs (:meth:`~WorldModelRollout.select`,
:meth:`~WorldModelRollout.reset_rows`, :meth:`~WorldModelRollout.put`). No call modifies its input
state, so any state can be kept, stepped again or branched.

One step, for batch row b (F = ``chunk_latents``, tf = the VAE's temporal factor)::

    history latents (FramePack: start, 4x, 2x, 1x)  +  F noisy latents   --sample_chunk-->  F clean latents
    history action rows                              +  F rows of action_rows[b] (flag 0)
    F clean latents --VAE decode (stream)--> F * tf frames (uint8 [F*tf, H, W, 3])
    history.append(F latents, their action rows)

Action convention (FramePack ``mode="exact"``): the row stored with latent k is the action that
produced latent k, so ``action_rows[b, j]`` is the action that generates latent j of the new chunk;
the first latent of every reset carries the null (zero) row. Rows are given in feature units
(:func:`~astra_gym.data.action_codecs.native_action_rows`); the engine applies the model's action
normalisation (``action_scale``) itself.

Long episodes: the history is bounded (``layout.window`` recent latents plus the start latent) and
``layout.max_start_distance`` keeps the start token at most that many latents before the chunk
being generated, so temporal RoPE distances stay within what the model was trained on however long
the episode runs (:data:`DEFAULT_LAYOUT`: 30; trained bundles store their own).

Batch invariance: row b's result depends only on row b. Noise comes from row b's own generator;
the history is packed with a fixed token layout whatever the other rows hold (every FramePack
group is always present, its tokens masked where row b has no latent); and on CPU the model calls
run with batch-invariant kernels (:mod:`astra_gym.rollout.batch_invariance`). In float32 on CPU a
batch of N rows therefore equals N batch-1 rollouts bit for bit (tested in ``tests/rollout``).
"""

from __future__ import annotations

import contextlib
import dataclasses
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from typing import Literal

import numpy as np
import torch
from torch import Tensor, nn

from astra_gym.rollout.batch_invariance import batch_invariant_cpu
from astra_gym.rollout.state import RolloutState, clone_generator, derive_generator
from astra_gym.utils.device import resolve_device, resolve_dtype
from astra_gym.utils.pixels import pixels_to_uint8, uint8_to_pixels
from astra_gym.utils.seeding import torch_generator
from astra_gym.world_model.action_encoders import make_action_rows
from astra_gym.world_model.conditioning import ActionInput, FramePackInputs, TokenGroup
from astra_gym.world_model.framepack import FramePackHistory, FramePackLayout, pack
from astra_gym.world_model.potential_reward import PotentialReward
from astra_gym.world_model.reward_model import RewardModel
from astra_gym.world_model.sampling import SamplerConfig, sample_chunk
from astra_gym.world_model.vae import SmallVAE, VaeStreamState, VideoVAE

__all__ = ["RolloutConfig", "WorldModelRollout", "DEFAULT_LAYOUT"]

# The layout of our models: exact token bookkeeping; the start token is kept at most 30 latents
# before the first target, the longest history our trainer conditions on, so the temporal RoPE
# distances of an arbitrarily long episode stay within the trained range.
DEFAULT_LAYOUT = FramePackLayout(mode="exact", max_start_distance=30)

Seeds = Sequence[int] | Sequence[torch.Generator]


@dataclass(frozen=True)
class RolloutConfig:
    """Settings of :class:`WorldModelRollout`.

    Attributes:
        modality: Action modality of every row (a name in the transformer's ``config.modalities``).
        chunk_latents: Latents F generated per :meth:`WorldModelRollout.step` (1 for our per-frame
            VAE: one env step = one frame).
        num_denoise_steps: Euler steps per chunk.
        guidance_scale: Action-free guidance scale (1 = off: one forward per Euler step; else two,
            batched). See :class:`~astra_gym.world_model.sampling.SamplerConfig`.
        shift: Timestep shift of the sigma schedule.
        batch_guidance: Run the two AFG branches as one forward of batch 2B.
        batch_invariant: On CPU, run every model call under
            :func:`~astra_gym.rollout.batch_invariance.batch_invariant_cpu`, so a batch of N rows
            equals N batch-1 rollouts bit for bit (PyTorch's default CPU kernels differ in the last
            bits between batch sizes; see that module for the measurements and the cost, about
            +20-70 % per step at batch 1). No effect on GPU, where rows agree only to a tolerance.
        use_history_cache: Compute the history tokens' keys/values once per chunk and reuse them at
            every Euler step (:class:`~astra_gym.world_model.kv_cache.HistoryKVCache`). Only for
            models trained with ``history_attention="causal"``; the exact Astra path recomputes them.
        layout: FramePack layout; ``max_start_distance`` bounds the temporal distance between the
            episode's first latent and the chunk being generated (see :data:`DEFAULT_LAYOUT`).
        device: Device of the model and of the state tensors (``"auto"`` = CUDA if available).
        dtype: Compute dtype: ``"float32"`` (exact, CPU default) or ``"bfloat16"``/``"float16"``
            (autocast); ``"auto"`` = bf16 on capable GPUs, else float32.
    """

    modality: str
    chunk_latents: int = 1
    num_denoise_steps: int = 4
    guidance_scale: float = 1.0
    shift: float = 5.0
    batch_guidance: bool = True
    batch_invariant: bool = True
    use_history_cache: bool = False
    layout: FramePackLayout = field(default=DEFAULT_LAYOUT)
    device: str | torch.device = "cpu"
    dtype: str | torch.dtype = "float32"

    def __post_init__(self) -> None:
        if self.chunk_latents < 1:
            raise ValueError(f"RolloutConfig.chunk_latents={self.chunk_latents} must be >= 1")
        if self.layout.mode != "exact":
            raise ValueError(
                f"RolloutConfig.layout.mode={self.layout.mode!r}: the rollout engine stores action rows in the "
                "exact convention; use FramePackLayout(mode='exact', ...)"
            )
        self.sampler_config()  # validates steps, shift and guidance

    def sampler_config(self) -> SamplerConfig:
        """The :class:`SamplerConfig` of one chunk."""
        return SamplerConfig(
            num_steps=self.num_denoise_steps,
            shift=self.shift,
            guidance_scale=self.guidance_scale,
            batch_guidance=self.batch_guidance,
        )

    def replace(self, **changes) -> RolloutConfig:
        """Returns a copy with ``changes`` applied (validated)."""
        return dataclasses.replace(self, **changes)


# ------------------------------------------------------------------------------------------------
# The engine
# ------------------------------------------------------------------------------------------------


class WorldModelRollout:
    """Batched, stateless rollouts of an action-conditioned video world model.

    The engine holds only read-only modules and settings; every rollout lives in a
    :class:`RolloutState` that is passed in and returned. One engine serves any number of
    states (envs, MPC candidates) at once.

    Args:
        model: The :class:`~astra_gym.world_model.transformer.AstraTransformer` (eval mode, on
            ``config.device``; never modified).
        vae: The :class:`~astra_gym.world_model.vae.VideoVAE` whose latents the model was trained on.
        config: Rollout settings.
        reward_model: Optional :class:`RewardModel` (or :class:`PotentialReward`) used by :meth:`score`.
        text_context: Optional [1, L, text_dim] text features every reset row gets by default
            (None = the model's text-free zero token).
        action_scale: Optional [d] per-column divisor of the action rows (the model's
            ``ActionNormalizer.scale``, :mod:`astra_gym.training.normalization`). Callers pass rows
            in feature units (:func:`~astra_gym.data.action_codecs.native_action_rows`); the engine
            divides them once before the transformer and the reward model see them (null rows stay 0).

    Attributes:
        action_dim: Width d of the action rows :meth:`step` takes (the modality's width without the flag).
        temporal_factor: Pixel frames per latent of the VAE.
        frames_per_step: Pixel frames one :meth:`step` returns (``chunk_latents * temporal_factor``).
        action_scale: [d] divisor applied to every action row (ones without normalisation).
        reward_frames: Newest frames the reward model reads (kept in ``RolloutState.recent_frames``).
    """

    def __init__(
        self,
        model: nn.Module,
        vae: VideoVAE,
        config: RolloutConfig,
        reward_model: RewardModel | PotentialReward | None = None,
        text_context: Tensor | None = None,
        action_scale: Sequence[float] | None = None,
    ) -> None:
        self.config = config
        self.device = resolve_device(config.device)
        self.dtype = resolve_dtype(config.dtype, self.device)
        self.model, self.vae, self.reward_model = model, vae, reward_model
        self._check_modules()
        spec = model.config.modality(config.modality)
        self.action_dim = spec.dim - 1
        self.modality_index = [m.name for m in model.config.modalities].index(config.modality)
        self.temporal_factor = vae.temporal_factor
        self.frames_per_step = config.chunk_latents * vae.temporal_factor
        self.text_context = None if text_context is None else text_context.to(self.device)
        self.action_scale = self._check_scale(action_scale)
        self.reward_frames = 0 if reward_model is None else reward_model.config.num_frames
        self._sampler = config.sampler_config()
        self._stateless_vae = isinstance(vae, SmallVAE)  # decode_stream carries no cache

    def _check_scale(self, scale: Sequence[float] | None) -> Tensor:
        """[d] float32 divisor on the device (ones when None)."""
        if scale is None:
            return torch.ones(self.action_dim, device=self.device)
        scale = torch.as_tensor(scale, dtype=torch.float32)
        if scale.shape != (self.action_dim,) or not bool((scale > 0).all()):
            raise ValueError(f"action_scale must hold {self.action_dim} positive values, got {scale.tolist()}")
        return scale.to(self.device)

    def _check_modules(self) -> None:
        """Raises a ValueError unless model, VAE and reward model fit each other and the device."""
        model, vae = self.model, self.vae
        if model.config.in_channels != vae.latent_channels:
            raise ValueError(
                f"the transformer takes {model.config.in_channels}-channel latents but the VAE makes "
                f"{vae.latent_channels}; load the VAE the model was trained with"
            )
        if tuple(self.config.layout.patch_hw) != tuple(model.config.patch_size[1:]):
            raise ValueError(
                f"layout.patch_hw={self.config.layout.patch_hw} must equal the model's spatial patch "
                f"{tuple(model.config.patch_size[1:])}"
            )
        for name, module in (("model", model), ("vae", vae), ("reward_model", self.reward_model)):
            if module is None:
                continue
            where = next(module.parameters()).device
            if where.type != self.device.type or (where.index or 0) != (self.device.index or 0):
                raise ValueError(
                    f"the {name} is on {where} but the rollout runs on {self.device}; "
                    f"load it with device={self.device}"
                )

    # ------------------------------------------------------------------------------------------
    # Reset
    # ------------------------------------------------------------------------------------------

    @torch.inference_mode()
    def reset(
        self,
        context: Tensor | np.ndarray,
        seeds: Seeds,
        *,
        context_actions: Tensor | np.ndarray | None = None,
        text_context: Tensor | None = None,
    ) -> RolloutState:
        """Starts B rollouts from context frames.

        Args:
            context: uint8 [B, T, H, W, 3] start frames per row (oldest first), or [B, H, W, 3] one
                image per row. H, W must be multiples of the VAE's spatial factor.
            seeds: B ints (each seeds a CPU ``torch.Generator``) or B generators (cloned, not advanced).
            context_actions: [B, L, d] action rows of the L = ``vae.num_latent_frames(T)`` context
                latents (exact convention: row k produced latent k; row 0 is ignored and stored as
                the null row). None = null rows (actions unknown).
            text_context: [B or 1, L_text, text_dim] text features; None = the engine's default.

        Returns:
            The new state (steps = 0).
        """
        frames = self._as_frames(context)
        batch = frames.shape[0]
        generators = self._generators(seeds, batch)
        with self._kernels():
            latents = self.vae.encode(uint8_to_pixels(frames))  # [B, C, L, h, w]
            streams, pixels = self._warm_streams(latents, decode=self.reward_frames > 0)
        rows = self._context_rows(context_actions, batch, latents.shape[2])  # [B, L, D]
        decoded = frames if pixels is None else pixels_to_uint8(pixels)
        recent = _newest_frames(frames[:, :0], decoded, self.reward_frames)
        return RolloutState(
            history=FramePackHistory.from_latents(latents, rows, window=self.config.layout.window),
            generators=generators,
            text_context=self._text_rows(text_context, batch),
            modality=torch.full((batch,), self.modality_index, dtype=torch.long, device=self.device),
            vae_streams=streams,
            steps=torch.zeros(batch, dtype=torch.long),
            recent_frames=recent,
            start_frames=recent[:, -1:].clone(),  # the newest frame at reset: an anchored model's anchor
        )

    def _as_frames(self, context: Tensor | np.ndarray) -> Tensor:
        """Validated uint8 [B, T, H, W, 3] on the engine's device."""
        frames = torch.as_tensor(np.asarray(context) if not isinstance(context, Tensor) else context)
        if frames.ndim == 4:
            frames = frames[:, None]  # one image per row -> T = 1
        if frames.dtype != torch.uint8 or frames.ndim != 5 or frames.shape[-1] != 3 or frames.shape[1] < 1:
            raise ValueError(
                f"context must be uint8 [B, T, H, W, 3] (or [B, H, W, 3]) RGB frames, got {frames.dtype} "
                f"{tuple(frames.shape)}"
            )
        return frames.to(self.device)

    def _context_rows(self, actions: Tensor | np.ndarray | None, batch: int, length: int) -> Tensor:
        """[B, L, D] stored rows of the context latents: given rows (row 0 -> null), flag column 0."""
        width = self.action_dim + 1
        if actions is None:
            return torch.zeros(batch, length, width, device=self.device)
        values = torch.as_tensor(np.asarray(actions) if not isinstance(actions, Tensor) else actions)
        if values.shape != (batch, length, self.action_dim):
            raise ValueError(
                f"context_actions must be [B, L, d]=[{batch}, {length}, {self.action_dim}] (one row per context "
                f"latent), got {tuple(values.shape)}"
            )
        rows = make_action_rows(values.float().to(self.device) / self.action_scale, 0.0, width)
        rows[:, 0] = 0.0  # the first latent of an episode carries the null row
        return rows

    def _generators(self, seeds: Seeds, batch: int) -> tuple[torch.Generator, ...]:
        """B CPU generators from ints or generators (cloned)."""
        seeds = list(seeds)
        if len(seeds) != batch:
            raise ValueError(f"got {len(seeds)} seeds for {batch} rows; pass one int or generator per row")
        generators = []
        for seed in seeds:
            if isinstance(seed, torch.Generator):
                if seed.device.type != "cpu":
                    raise ValueError("rollout generators must be CPU generators (noise is drawn on CPU, then moved)")
                generators.append(clone_generator(seed))
            else:
                generators.append(torch_generator(int(seed)))
        return tuple(generators)

    def _text_rows(self, text_context: Tensor | None, batch: int) -> Tensor | None:
        """[B, L, text_dim] text features for B rows, or None."""
        text = self.text_context if text_context is None else text_context.to(self.device)
        if text is None:
            return None
        if text.ndim != 3 or text.shape[0] not in (1, batch):
            raise ValueError(f"text_context must be [B or 1, L, text_dim], got {tuple(text.shape)} for B={batch}")
        return text.expand(batch, -1, -1).clone()

    def _warm_streams(self, latents: Tensor, decode: bool) -> tuple[tuple[VaeStreamState, ...], Tensor | None]:
        """Per-row VAE streams positioned after the context latents (causal VAEs decode them once), and
        with ``decode`` the context's reconstruction [B, 3, T, H, W] (else None)."""
        batch, length = latents.shape[0], latents.shape[2]
        if self._stateless_vae:
            streams = tuple(VaeStreamState(length, (), 1) for _ in range(batch))
            return streams, self.vae.decode(latents) if decode else None
        decoded = [self.vae.decode_stream(latents[b : b + 1], VaeStreamState()) for b in range(batch)]
        return tuple(s for _, s in decoded), torch.cat([p for p, _ in decoded]) if decode else None

    # ------------------------------------------------------------------------------------------
    # Step
    # ------------------------------------------------------------------------------------------

    @torch.inference_mode()
    def step(self, state: RolloutState, action_rows: Tensor | np.ndarray) -> tuple[RolloutState, Tensor]:
        """Generates the next chunk of every row.

        Args:
            state: The rollouts to continue (not modified).
            action_rows: [B, F, d] float action rows of the F = ``chunk_latents`` new latents
                (without the flag; see :func:`~astra_gym.data.action_codecs.native_action_rows`).

        Returns:
            (new state, frames): frames are uint8 [B, frames_per_step, H, W, 3] on the engine's device.
        """
        rows = self._target_rows(action_rows, state.batch_size)  # [B, F, D], flag 0
        generators = [clone_generator(g) for g in state.generators]
        latents = self._sample(state, rows, generators)  # [B, C, F, h, w] float32
        with self._kernels():
            pixels, streams = self._decode(latents, state.vae_streams)
        frames = pixels_to_uint8(pixels)  # [B, F * tf, H, W, 3]
        new_state = dataclasses.replace(
            state,
            history=state.history.append(latents, rows),
            generators=tuple(generators),
            vae_streams=streams,
            steps=state.steps + 1,
            recent_frames=_newest_frames(state.recent_frames, frames, self.reward_frames),
        )
        return new_state, frames

    @torch.inference_mode()
    def disagreement(
        self, state: RolloutState, action_rows: Tensor | np.ndarray, stepped: RolloutState, draws: int = 1
    ) -> Tensor:
        """How much the world model's draws of one step disagree: an estimate of its error there.

        Samples ``draws`` more chunks from ``state`` with the same actions, each row on sibling noise
        streams (:func:`~astra_gym.rollout.state.derive_generator`; ``state``'s own streams are left as
        they are), and compares them with the chunk :meth:`step` drew. Where the data taught the model
        what the actions do, its draws agree (a simulator like FetchPush is deterministic); unfamiliar
        states and actions spread them. Offline model-based RL subtracts such a spread from the
        rewards so that agents do not exploit the model where it is wrong (MOPO; Offline DreamerV2).

        Args:
            state: The state :meth:`step` started from.
            action_rows: [B, F, d] the rows given to that :meth:`step`.
            stepped: The state that :meth:`step` returned (its newest F latents are the drawn chunk).
            draws: Extra draws to compare with (>= 1); the cost is one sampling pass each, no decoding.

        Returns:
            [B] float32 on the engine's device: the mean squared difference per latent element between
            the stepped chunk and the extra draws (twice the per-element variance of the draws).
        """
        if draws < 1:
            raise ValueError(f"disagreement: draws={draws} must be >= 1")
        if stepped.batch_size != state.batch_size or not torch.equal(stepped.steps, state.steps + 1):
            raise ValueError(
                "disagreement: `stepped` must be the state step() returned for `state` (same rows, one step on)"
            )
        rows = self._target_rows(action_rows, state.batch_size)
        drawn = stepped.history.recent_latents[:, :, -rows.shape[1] :].float()  # [B, C, F, h, w]
        total = torch.zeros(state.batch_size, device=drawn.device)
        for k in range(1, draws + 1):
            other = self._sample(state, rows, [derive_generator(g, k) for g in state.generators])
            total += (other.float() - drawn).square().mean(dim=(1, 2, 3, 4))
        return total / draws

    def _sample(self, state: RolloutState, rows: Tensor, generators: Sequence[torch.Generator]) -> Tensor:
        """The next chunk's latents [B, C, F, h, w] float32 for normalised rows [B, F, D] (advances ``generators``)."""
        frame_pack, values = self._pack(state.history, rows)
        shape = (state.batch_size, self.vae.latent_channels, rows.shape[1], *state.history.recent_latents.shape[3:])
        with self._kernels():
            return sample_chunk(
                self.model,
                shape,
                context=state.text_context,
                frame_pack=frame_pack,
                actions=ActionInput(values, state.modality),
                config=self._sampler,
                generator=list(generators),
                device=self.device,
                use_history_cache=self.config.use_history_cache,
            )

    def _target_rows(self, action_rows: Tensor | np.ndarray, batch: int) -> Tensor:
        """Validated, normalised [B, F, D] rows with flag 0 on the engine's device."""
        values = torch.as_tensor(np.asarray(action_rows) if not isinstance(action_rows, Tensor) else action_rows)
        expected = (batch, self.config.chunk_latents, self.action_dim)
        if tuple(values.shape) != expected:
            raise ValueError(f"action_rows must be [B, F, d]={list(expected)}, got {tuple(values.shape)}")
        values = values.float().to(self.device)
        if not bool(torch.isfinite(values).all()):
            raise ValueError("action_rows contain NaN or inf")
        return make_action_rows(values / self.action_scale, 0.0, self.action_dim + 1)

    def _pack(self, history: FramePackHistory, rows: Tensor) -> tuple[FramePackInputs, Tensor]:
        """Packs with a batch-independent token layout (see the module docstring).

        ``pack`` drops a history group when no row of the batch has a latent in it, which would
        make a row's token sequence depend on its neighbours. A sentinel row whose every slot is
        full is packed along and removed again, so every group is always present.
        """
        full = _cat_histories(history, _full_history_like(history))
        frame_pack, values = pack(full, torch.cat([rows, rows[:1]]), self.config.layout)
        return _drop_last_row(frame_pack), values[:-1]

    @contextlib.contextmanager
    def _kernels(self) -> Iterator[None]:
        """Autocast for bf16/fp16, and batch-invariant kernels on CPU when ``batch_invariant``."""
        with contextlib.ExitStack() as stack:
            if self.dtype != torch.float32:
                stack.enter_context(torch.autocast(device_type=self.device.type, dtype=self.dtype))
            if self.config.batch_invariant and self.device.type == "cpu":
                stack.enter_context(batch_invariant_cpu())
            yield

    def _decode(
        self, latents: Tensor, streams: tuple[VaeStreamState, ...]
    ) -> tuple[Tensor, tuple[VaeStreamState, ...]]:
        """Decodes the new latents of every row, continuing each row's VAE stream.

        Stateless VAEs decode the whole batch in one call; causal VAEs (WanVAE) decode row by row,
        since rows restarted at different times hold caches of different shapes.
        """
        count = latents.shape[2]
        if self._stateless_vae:
            pixels = self.vae.decode(latents)  # [B, 3, F, H, W]
            return pixels, tuple(VaeStreamState(s.frames_decoded + count, (), 1) for s in streams)
        decoded = [self.vae.decode_stream(latents[b : b + 1], streams[b]) for b in range(latents.shape[0])]
        return torch.cat([p for p, _ in decoded]), tuple(s for _, s in decoded)

    # ------------------------------------------------------------------------------------------
    # Rewards
    # ------------------------------------------------------------------------------------------

    @torch.inference_mode()
    def score(self, state: RolloutState, action_rows: Tensor | np.ndarray) -> tuple[Tensor, Tensor]:
        """Reward and termination logit of the step that led to ``state``.

        Args:
            state: The state returned by :meth:`step` (its ``recent_frames`` are what the reward
                model reads: the newest ``num_frames`` frames, context frames included; its
                ``start_frames``, the newest frame at reset, is an anchored model's anchor).
            action_rows: [B, F, d] the rows given to that :meth:`step` (the first row is scored).

        Returns:
            (reward [B], termination_logit [B]) float32 on the engine's device.
        """
        return self.score_frames(state.recent_frames, action_rows, anchor=state.start_frames)

    @torch.inference_mode()
    def score_frames(
        self, frames: Tensor | np.ndarray, action_rows: Tensor | np.ndarray, anchor: Tensor | np.ndarray | None = None
    ) -> tuple[Tensor, Tensor]:
        """Reward and termination logit of transitions given as frames (e.g. real ones, for diagnosis).

        Args:
            frames: uint8 [B, T, H, W, 3], oldest first; the newest ``num_frames`` are read.
            action_rows: [B, F, d] the rows of the step that produced the newest frame (first row scored).
            anchor: uint8 [B, T', H, W, 3] the episode's start frames: a reward model with
                ``RewardModelConfig.anchor`` reads the newest of them beside ``frames`` (such a model
                refuses None); others never read it, and it is not converted for them.

        Returns:
            (reward [B], termination_logit [B]) float32 on the engine's device.
        """
        if self.reward_model is None:
            raise ValueError("this rollout has no reward model; pass reward_model= to WorldModelRollout")
        pixels = self._reward_pixels(frames, "frames")
        rows = self._target_rows(action_rows, pixels.shape[0])[:, 0, : self.action_dim]  # [B, d]
        if anchor is not None and self.reward_model.config.anchor:
            anchor = self._reward_pixels(anchor, "anchor", count=1)  # [B, 1, 3, H, W]
        else:
            anchor = None
        with self._kernels():
            return self.reward_model(pixels, rows, anchor=anchor)

    def _reward_pixels(self, frames: Tensor | np.ndarray, name: str, count: int | None = None) -> Tensor:
        """Pixels [B, k, 3, H, W] of the newest k (``count``, default the reward model's ``num_frames``) of
        uint8 [B, T, H, W, 3]."""
        frames = torch.as_tensor(np.asarray(frames) if not isinstance(frames, Tensor) else frames)
        if frames.dtype != torch.uint8 or frames.ndim != 5 or frames.shape[-1] != 3:
            raise ValueError(f"{name} must be uint8 [B, T, H, W, 3], got {frames.dtype} {tuple(frames.shape)}")
        recent = frames[:, -(count or self.reward_model.config.num_frames) :].to(self.device)
        return uint8_to_pixels(recent).transpose(1, 2).contiguous()

    # ------------------------------------------------------------------------------------------
    # Row bookkeeping
    # ------------------------------------------------------------------------------------------

    @torch.inference_mode()
    def fork(
        self, state: RolloutState, n: int, noise: Literal["independent", "shared"] = "independent"
    ) -> RolloutState:
        """Repeats every row n times (row b -> rows b*n .. b*n + n - 1), e.g. for MPC candidates.

        Args:
            state: The state to branch (not modified).
            n: Copies per row (>= 1).
            noise: ``"independent"``: copy k of row b gets a generator derived from row b's generator
                state and k (:func:`~astra_gym.rollout.state.derive_generator`), so forking the same
                state twice gives the same children while siblings draw different noise.
                ``"shared"``: every copy continues row b's own noise stream, so a copy given row b's
                actions reproduces row b's continuation exactly (common random numbers).

        Returns:
            A state with B * n rows.
        """
        if n < 1:
            raise ValueError(f"fork: n={n} must be >= 1")
        if noise not in ("independent", "shared"):
            raise ValueError(f"fork: noise={noise!r} must be 'independent' or 'shared'")
        children = state.select(torch.arange(state.batch_size).repeat_interleave(n))
        if noise == "shared":
            return children
        generators = tuple(derive_generator(g, k) for g in state.generators for k in range(n))
        return dataclasses.replace(children, generators=generators)

    @torch.inference_mode()
    def select(self, state: RolloutState, rows: Tensor | Sequence[int]) -> RolloutState:
        """The given rows of ``state`` (indices or a [B] bool mask); see :meth:`RolloutState.select`."""
        return state.select(rows)

    @torch.inference_mode()
    def put(self, state: RolloutState, rows: Tensor | Sequence[int], other: RolloutState) -> RolloutState:
        """``state`` with ``rows`` replaced by the rows of ``other``; see :meth:`RolloutState.put`."""
        return state.put(rows, other)

    @torch.inference_mode()
    def reset_rows(
        self,
        state: RolloutState,
        rows: Tensor | Sequence[int],
        context: Tensor | np.ndarray,
        seeds: Seeds,
        *,
        context_actions: Tensor | np.ndarray | None = None,
        text_context: Tensor | None = None,
    ) -> RolloutState:
        """Restarts the given rows from new context frames (partial resets); other rows are untouched.

        Args:
            state: Current state.
            rows: n row indices or a [B] bool mask with n True entries.
            context, seeds, context_actions, text_context: As in :meth:`reset`, for the n rows.

        Returns:
            The updated state.
        """
        fresh = self.reset(context, seeds, context_actions=context_actions, text_context=text_context)
        return state.put(rows, fresh)


def _newest_frames(previous: Tensor, frames: Tensor, count: int) -> Tensor:
    """The ``count`` newest of ``previous`` + ``frames`` (uint8 [B, n, H, W, 3]), the oldest repeated
    when there are fewer; [B, 0, H, W, 3] when ``count`` is 0."""
    if count == 0:
        return frames[:, :0].clone()
    joined = torch.cat([previous, frames], dim=1)  # [B, n, H, W, 3]
    if joined.shape[1] < count:
        pad = joined[:, :1].expand(-1, count - joined.shape[1], -1, -1, -1)
        joined = torch.cat([pad, joined], dim=1)
    return joined[:, -count:].clone()


# ------------------------------------------------------------------------------------------------
# Packing helpers
# ------------------------------------------------------------------------------------------------


def _full_history_like(history: FramePackHistory) -> FramePackHistory:
    """One zero row whose every recent slot holds a latent (indices 1..K after a start latent 0)."""
    window = history.window
    empty = FramePackHistory.empty(
        1,
        history.recent_latents.shape[1],
        *history.recent_latents.shape[3:],
        history.action_width,
        history.device,
        history.recent_latents.dtype,
        window=window,
        action_dtype=history.recent_actions.dtype,
    )
    index = torch.arange(1, window + 1, device=history.device)[None]  # [1, K]
    return dataclasses.replace(empty, recent_index=index, length=torch.full_like(empty.length, window + 1))


def _cat_histories(first: FramePackHistory, second: FramePackHistory) -> FramePackHistory:
    """Row concatenation of two histories."""
    return FramePackHistory(
        **{f.name: torch.cat([getattr(first, f.name), getattr(second, f.name)]) for f in dataclasses.fields(first)}
    )


def _drop_last_row(frame_pack: FramePackInputs) -> FramePackInputs:
    """The packed inputs without their last batch row."""

    def group(g: TokenGroup) -> TokenGroup:
        return dataclasses.replace(
            g, latents=g.latents[:-1], frame_pos=g.frame_pos[:-1], action_row=g.action_row[:-1], valid=g.valid[:-1]
        )

    return FramePackInputs(
        history=tuple(group(g) for g in frame_pack.history),
        target_frame_pos=frame_pack.target_frame_pos[:-1],
        target_action_row=frame_pack.target_action_row[:-1],
    )
