"""Astra's diffusion transformer: the Wan2.1 DiT plus FramePack history and action conditioning.

Parameter names follow Wan's original ("civitai") layout and Astra's release, so the released
state dict loads with ``strict=True`` (astra-release.md §1.2, §2.2). One forward pass:

1. Embed the timestep (sinusoid -> ``time_embedding`` -> ``time_projection``, float32) into the
   AdaLN modulation shared by every token, and the text context with ``text_embedding``.
2. Embed each history :class:`~astra_gym.world_model.conditioning.TokenGroup` with its
   ``clean_x_embedder`` Conv3d and the noisy target with ``patch_embedding``; concatenate
   ``[history groups..., target]`` and give every token its explicit 3-D RoPE position.
3. Encode the action rows once (modality processor, routing), then in every block add that
   block's expert features of each token's action row to the modulated self-attention input.
4. Run the blocks (self-attention with key padding, ACT-Adapter ``projector``, cross-attention,
   FFN) and decode only the target tokens with the head, then unpatchify.

With ``actions=None`` and no history this is exactly Wan2.1 (identity ``projector``).

``config.history_attention="causal"`` (not the release) modulates history tokens with timestep 0
and lets them attend only to history tokens, so :meth:`AstraTransformer.encode_history` can compute
their per-block keys/values once per chunk and ``forward(..., history_cache=...)`` runs only the
target tokens. ``"full"`` (default) is the release path above, unchanged.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Literal, NamedTuple

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.utils.checkpoint import checkpoint

from astra_gym.world_model import causal_history
from astra_gym.world_model.action_cross_attention import ActionCrossAttention, rename_legacy_keys
from astra_gym.world_model.action_encoders import ActionExperts, ModalityProcessor, encode_actions, route
from astra_gym.world_model.conditioning import ActionInput, FramePackInputs, TokenGroup, key_padding_mask
from astra_gym.world_model.config import AstraTransformerConfig
from astra_gym.world_model.kv_cache import HistoryKVCache
from astra_gym.world_model.layers import Attention, LayerNorm32
from astra_gym.world_model.rope import RopeTable, grid_positions, rope_table

__all__ = ["AstraTransformer", "AstraBlock", "Attention", "sinusoidal_embedding", "ASTRA_TRAINABLE_MARKERS"]

# Substrings of the parameter names the release trains (train_single.py; astra-release.md §2.4).
# ``projector`` also matches ``{modality}_processor.projector``. ``global_router`` is added for
# learned routing (the release never calls it).
ASTRA_TRAINABLE_MARKERS: tuple[str, ...] = (
    "cam_encoder",
    "projector",
    "self_attn",
    "clean_x_embedder",
    "moe",
    "_processor",
    "action_attn",
)

# Modules that are not part of Wan2.1 and keep PyTorch's default (or their own) initialisation.
_ASTRA_MODULE_MARKERS: tuple[str, ...] = (
    "cam_encoder",
    "projector",
    "moe",
    "clean_x_embedder",
    "_processor",
    "action_attn",
)

_EMBEDDER_NAMES: dict[int, str] = {1: "proj", 2: "proj_2x", 4: "proj_4x"}


# ----------------------------------------------------------------------------------------------
# Precision helpers
# ----------------------------------------------------------------------------------------------


def sinusoidal_embedding(timestep: Tensor, dim: int) -> Tensor:
    """Wan's timestep embedding: ``[cos(t * w_k), sin(t * w_k)]``, ``w_k = 10000^(-k / (dim/2))``.

    Computed in float64 (float32 on MPS) and returned in float32.

    Args:
        timestep: [B] timesteps in [0, 1000].
        dim: Embedding width (even).

    Returns:
        [B, dim] float32 embedding, cosines first.
    """
    dtype = torch.float32 if timestep.device.type == "mps" else torch.float64
    half = dim // 2
    freqs = torch.pow(10000.0, -torch.arange(half, dtype=dtype, device=timestep.device) / half)  # [dim/2]
    angles = timestep.to(dtype)[:, None] * freqs[None, :]  # [B, dim/2]
    return torch.cat([angles.cos(), angles.sin()], dim=1).float()


def _fp32_sequential(layers: nn.Sequential, x: Tensor) -> Tensor:
    """Runs ``layers`` in float32 with autocast off, whatever the parameters' dtype.

    Linear layers use float32 copies of their weights; other layers (activations) run as is.
    """
    with torch.autocast(device_type=x.device.type, enabled=False):
        x = x.float()
        for layer in layers:
            if isinstance(layer, nn.Linear):
                bias = None if layer.bias is None else layer.bias.float()
                x = F.linear(x, layer.weight.float(), bias)
            else:
                x = layer(x)
    return x


# ----------------------------------------------------------------------------------------------
# Blocks
# ----------------------------------------------------------------------------------------------


@dataclass(frozen=True, eq=False)
class ActionRows:
    """Action rows of one forward pass, shared by every block's action encoder.

    Attributes:
        rows: [B, R, X] rows, R = A + 1: the last one is the zero row that ``action_row == -1``
            refers to. X = U (unified features, with experts) or the widest modality (raw,
            ``cam_encoder`` path).
        weights: [B, R, E] routing weights; None on the ``cam_encoder`` path.
        active_experts: Experts with a non-zero weight somewhere (the others are skipped).
        token_rows: [B, S] long row of ``rows`` read by each token.
        key_mask: [B, R] bool rows read by a valid token, plus the zero row: the keys of the
            ``action_injection="cross_attn"`` ablation (None otherwise).
    """

    rows: Tensor
    weights: Tensor | None
    active_experts: tuple[int, ...]
    token_rows: Tensor
    key_mask: Tensor | None


class AstraBlock(nn.Module):
    """One Wan2.1 block with Astra's action injection and ACT-Adapter (astra-release.md §1.4).

    Args:
        config: Model config.
    """

    def __init__(self, config: AstraTransformerConfig) -> None:
        super().__init__()
        dim, eps = config.dim, config.eps
        self.norm1 = LayerNorm32(dim, eps, elementwise_affine=False)
        self.self_attn = Attention(dim, config.num_heads, eps)
        self.norm3 = LayerNorm32(dim, eps, elementwise_affine=True)
        self.cross_attn = Attention(dim, config.num_heads, eps)
        self.norm2 = LayerNorm32(dim, eps, elementwise_affine=False)
        self.ffn = nn.Sequential(
            nn.Linear(dim, config.ffn_dim), nn.GELU(approximate="tanh"), nn.Linear(config.ffn_dim, dim)
        )
        self.modulation = nn.Parameter(torch.randn(1, 6, dim) / dim**0.5)
        self.projector = nn.Linear(dim, dim)  # ACT-Adapter, identity at init
        self.cam_encoder = nn.Linear(max(m.dim for m in config.modalities), dim)  # used only without experts
        self.moe = (
            ActionExperts(config.unified_dim, dim, config.num_experts, config.expert_hidden)
            if config.num_experts
            else None
        )
        # The paper's cross-attention adapter ablation replaces the additive injection.
        self.action_attn = (
            ActionCrossAttention(dim, config.num_heads, eps) if config.action_injection == "cross_attn" else None
        )
        if self.action_attn is not None:
            self._register_load_state_dict_pre_hook(rename_legacy_keys)
        self._init_astra_layers()

    def _init_astra_layers(self) -> None:
        """Identity ``projector`` and zero ``cam_encoder``, as attached by the release scripts."""
        with torch.no_grad():
            nn.init.eye_(self.projector.weight)
            nn.init.zeros_(self.projector.bias)
            nn.init.zeros_(self.cam_encoder.weight)
            nn.init.zeros_(self.cam_encoder.bias)

    def row_features(self, actions: ActionRows) -> Tensor:
        """This block's feature of every action row: [B, R, dim]."""
        rows = actions.rows
        if self.moe is None:
            return self.cam_encoder(rows)  # [B, R, dim]
        flat = self.moe(rows.flatten(0, 1), actions.weights.flatten(0, 1), actions.active_experts)  # [B*R, dim]
        return flat.unflatten(0, rows.shape[:2])  # [B, R, dim]

    def action_features(self, actions: ActionRows) -> Tensor:
        """This block's action feature of every token.

        Args:
            actions: The forward pass's action rows.

        Returns:
            [B, S, dim] features (each token's row, broadcast over its spatial grid).
        """
        features = self.row_features(actions)  # [B, R, dim]
        index = actions.token_rows[..., None].expand(-1, -1, features.shape[-1])  # [B, S, dim]
        return features.gather(1, index)  # [B, S, dim]

    def added_features(self, actions: ActionRows | None) -> Tensor | None:
        """[B, S, dim] features added to the attention input (ACT-Adapter path), or None."""
        if actions is None or self.action_attn is not None:
            return None
        return self.action_features(actions)

    def forward(
        self,
        x: Tensor,
        context: Tensor,
        t_mod: Tensor,
        rope: RopeTable,
        attn_mask: Tensor | None,
        actions: ActionRows | None,
    ) -> Tensor:
        """Runs the block.

        Args:
            x: [B, S, dim] hidden states.
            context: [B, L, dim] embedded text.
            t_mod: [B, 6, dim] float32 timestep modulation (before this block's ``modulation``).
            rope: Rotation table of the S tokens.
            attn_mask: [B, 1, 1, S] bool key padding mask, or None.
            actions: Action rows, or None for no action injection.

        Returns:
            [B, S, dim] updated hidden states.
        """
        mod = self.modulation_terms(t_mod)  # six [B, 1, dim]
        h = self.attention_input(x, mod, self.added_features(actions))  # [B, S, dim]
        attn = self.projector(self.self_attn(h, rope=rope, attn_mask=attn_mask))
        return self.after_attention(x, attn, mod, context, actions)

    def modulation_terms(self, t_mod: Tensor) -> tuple[Tensor, ...]:
        """[B, 6, dim] timestep modulation -> six [B, 1, dim] float32 terms (shift/scale/gate x 2)."""
        return (self.modulation.float() + t_mod).chunk(6, dim=1)

    def attention_input(self, x: Tensor, mod: tuple[Tensor, ...], features: Tensor | None) -> Tensor:
        """Modulated self-attention input [B, S, dim] of ``x`` [B, S, dim], plus action features."""
        shift_msa, scale_msa = mod[0], mod[1]
        h = (self.norm1(x.float()) * (1 + scale_msa) + shift_msa).to(x.dtype)
        return h if features is None else h + features.to(h.dtype)

    def after_attention(
        self, x: Tensor, attn: Tensor, mod: tuple[Tensor, ...], context: Tensor, actions: ActionRows | None
    ) -> Tensor:
        """Gated residual of the (projected) attention output, (the ablation's action attention),
        text cross-attention and FFN; [B, S, dim]."""
        _, _, gate_msa, shift_mlp, scale_mlp, gate_mlp = mod
        x = (x.float() + gate_msa * attn.float()).to(x.dtype)
        if self.action_attn is not None and actions is not None:  # the ablation
            x = self.action_attn(x, self.row_features(actions), actions.key_mask)
        x = x + self.cross_attn(self.norm3(x), context).to(x.dtype)
        h = (self.norm2(x.float()) * (1 + scale_mlp) + shift_mlp).to(x.dtype)
        return (x.float() + gate_mlp * self.ffn(h).float()).to(x.dtype)


class OutputHead(nn.Module):
    """Wan's head: AdaLN from the timestep embedding, then a Linear to the patch outputs.

    Args:
        dim: Model width.
        out_features: ``out_channels * prod(patch_size)``.
        eps: LayerNorm epsilon.
    """

    def __init__(self, dim: int, out_features: int, eps: float) -> None:
        super().__init__()
        self.norm = LayerNorm32(dim, eps, elementwise_affine=False)
        self.head = nn.Linear(dim, out_features)
        self.modulation = nn.Parameter(torch.randn(1, 2, dim) / dim**0.5)

    def forward(self, x: Tensor, t_emb: Tensor) -> Tensor:
        """[B, N, dim] tokens and [B, dim] float32 timestep embedding -> [B, N, out_features]."""
        shift, scale = (self.modulation.float() + t_emb[:, None, :]).chunk(2, dim=1)  # [B, 1, dim] each
        return self.head((self.norm(x.float()) * (1 + scale) + shift).to(x.dtype))


class HistoryEmbedder(nn.Module):
    """FramePack's ``clean_x_embedder``: one Conv3d per history compression scale.

    Scale s has kernel = stride = (s, s*ph, s*pw): ``proj`` (1x), ``proj_2x``, ``proj_4x``.

    Args:
        config: Model config (``history_scales``, ``patch_size``, channels, width).
    """

    def __init__(self, config: AstraTransformerConfig) -> None:
        super().__init__()
        _, ph, pw = config.patch_size
        for scale in sorted(config.history_scales):
            kernel = (scale, scale * ph, scale * pw)
            conv = nn.Conv3d(config.in_channels, config.dim, kernel_size=kernel, stride=kernel)
            self.add_module(_EMBEDDER_NAMES[scale], conv)

    def forward(self, latents: Tensor, scale: int) -> Tensor:
        """[B, C, T, H, W] latents -> [B, dim, T/s, H/(s*ph), W/(s*pw)] token grid."""
        conv = getattr(self, _EMBEDDER_NAMES[scale])
        return conv(latents.to(conv.weight.dtype))


# ----------------------------------------------------------------------------------------------
# Token assembly
# ----------------------------------------------------------------------------------------------


class Tokens(NamedTuple):
    """A run of tokens with their per-token bookkeeping.

    Attributes:
        x: [B, N, dim] embedded tokens.
        positions: [B, N, 3] float (t, h, w) RoPE positions.
        action_row: [B, N] long action row (-1 = zero feature).
        valid: [B, N] bool; False = masked out as attention key.
    """

    x: Tensor
    positions: Tensor
    action_row: Tensor
    valid: Tensor


def _per_token(values: Tensor, tokens_per_frame: int) -> Tensor:
    """[B, T] per temporal token -> [B, T * tokens_per_frame] per token (row-major t, h, w)."""
    return values[:, :, None].expand(-1, -1, tokens_per_frame).flatten(1)


def _grid_tokens(grid: Tensor, frame_pos: Tensor, action_row: Tensor, valid: Tensor, spatial_scale: float) -> Tokens:
    """Flattens an embedded [B, dim, t, h, w] grid and attaches per-token positions, rows, validity."""
    _, _, _, height, width = grid.shape
    x = grid.flatten(2).transpose(1, 2)  # [B, t*h*w, dim]
    positions = grid_positions(frame_pos, height, width, spatial_scale)  # [B, t*h*w, 3]
    per_frame = height * width
    return Tokens(x, positions, _per_token(action_row.long(), per_frame), _per_token(valid.bool(), per_frame))


# ----------------------------------------------------------------------------------------------
# The model
# ----------------------------------------------------------------------------------------------


class AstraTransformer(nn.Module):
    """Astra's action-conditioned flow-matching DiT (Wan2.1 backbone, original parameter names).

    Args:
        config: Sizes and options; see :class:`~astra_gym.world_model.config.AstraTransformerConfig`.

    Attributes:
        gradient_checkpointing: Recompute each block in the backward pass (saves activations).
    """

    def __init__(self, config: AstraTransformerConfig) -> None:
        super().__init__()
        self.config = config
        dim = config.dim
        self.patch_embedding = nn.Conv3d(
            config.in_channels, dim, kernel_size=config.patch_size, stride=config.patch_size
        )
        self.text_embedding = nn.Sequential(
            nn.Linear(config.text_dim, dim), nn.GELU(approximate="tanh"), nn.Linear(dim, dim)
        )
        self.time_embedding = nn.Sequential(nn.Linear(config.freq_dim, dim), nn.SiLU(), nn.Linear(dim, dim))
        self.time_projection = nn.Sequential(nn.SiLU(), nn.Linear(dim, 6 * dim))
        self.blocks = nn.ModuleList(AstraBlock(config) for _ in range(config.num_layers))
        self.head = OutputHead(dim, config.out_channels * math.prod(config.patch_size), config.eps)
        self._init_wan_weights()
        self.clean_x_embedder = HistoryEmbedder(config)
        if config.num_experts:
            for spec in config.modalities:
                self.add_module(f"{spec.name}_processor", ModalityProcessor(spec.dim, config.unified_dim))
            self.global_router = nn.Linear(config.unified_dim, config.num_experts)
        else:
            self.global_router = None
        self.gradient_checkpointing = False

    @classmethod
    def from_config(cls, config: AstraTransformerConfig) -> AstraTransformer:
        """Same as the constructor."""
        return cls(config)

    def _init_wan_weights(self) -> None:
        """Wan2.1's initialisation of the backbone (Astra's modules keep their own)."""
        with torch.no_grad():
            for name, module in self.named_modules():
                if isinstance(module, nn.Linear) and not any(m in name for m in _ASTRA_MODULE_MARKERS):
                    nn.init.xavier_uniform_(module.weight)
                    nn.init.zeros_(module.bias)
            nn.init.xavier_uniform_(self.patch_embedding.weight.flatten(1))
            for layer in (*self.text_embedding, *self.time_embedding):
                if isinstance(layer, nn.Linear):
                    nn.init.normal_(layer.weight, std=0.02)
            nn.init.zeros_(self.head.head.weight)

    # ------------------------------------------------------------------------------------------
    # Introspection
    # ------------------------------------------------------------------------------------------

    @property
    def processors(self) -> dict[str, ModalityProcessor]:
        """Modality name -> its ``{name}_processor`` (empty without experts)."""
        if not self.config.num_experts:
            return {}
        return {spec.name: getattr(self, f"{spec.name}_processor") for spec in self.config.modalities}

    def num_parameters(self, trainable_only: bool = False) -> int:
        """Number of parameters (only those with ``requires_grad`` if ``trainable_only``)."""
        return sum(p.numel() for p in self.parameters() if p.requires_grad or not trainable_only)

    def trainable_parameter_names(self, mode: Literal["full", "astra"]) -> list[str]:
        """Names of the parameters to train.

        Args:
            mode: ``"full"`` = every parameter; ``"astra"`` = the release's set: names containing
                cam_encoder, projector, self_attn, clean_x_embedder, moe or _processor, plus
                global_router for learned routing.

        Returns:
            Parameter names in ``named_parameters`` order.
        """
        if mode not in ("full", "astra"):
            raise ValueError(f"mode={mode!r} must be 'full' or 'astra'")
        names = [name for name, _ in self.named_parameters()]
        if mode == "full":
            return names
        markers = ASTRA_TRAINABLE_MARKERS + (("global_router",) if self.config.routing == "learned" else ())
        return [name for name in names if any(m in name for m in markers)]

    # ------------------------------------------------------------------------------------------
    # Forward
    # ------------------------------------------------------------------------------------------

    def forward(
        self,
        latents: Tensor,
        timestep: Tensor,
        context: Tensor | None = None,
        frame_pack: FramePackInputs | None = None,
        actions: ActionInput | None = None,
        return_aux: bool = False,
        history_cache: HistoryKVCache | None = None,
    ) -> Tensor | tuple[Tensor, dict[str, Tensor]]:
        """Predicts the flow-matching velocity of the target chunk.

        Args:
            latents: [B, C, F, H, W] noisy target latents.
            timestep: [B] float timesteps in [0, 1000] (1000 * sigma).
            context: [B, L, text_dim] text-encoder features; None = one all-zero token.
            frame_pack: History token groups and target positions/action rows; None =
                :meth:`FramePackInputs.no_history` (targets at 0..F-1, action rows 0..F-1).
            actions: Raw action rows and modality; None = no action features at all.
            return_aux: Also return ``{"moe_balance_loss": scalar}`` (with ``history_cache``: over
                the target tokens' action rows only).
            history_cache: From :meth:`encode_history` of the same history, context and actions
                (``history_attention="causal"`` only): then only the target tokens run through the
                blocks and ``frame_pack.history`` is not read. Equals the uncached forward.

        Returns:
            [B, C_out, F, H, W] velocity, or ``(velocity, aux)`` when ``return_aux``.
        """
        batch, _, frames, height, width = self._check_latents(latents)
        if frame_pack is None:
            frame_pack = FramePackInputs.no_history(batch, frames, latents.device)
        if history_cache is not None:
            return causal_history.forward_cached(
                self, latents, timestep, context, frame_pack, actions, history_cache, return_aux
            )
        t_emb, t_mod = self._embed_timestep(timestep, batch)  # [B, dim], [B, 6, dim]
        context = self._embed_context(context, batch, latents.device)  # [B, L, dim]
        tokens = self._assemble_tokens(latents, frame_pack)
        rope = rope_table(tokens.positions, self.config.rope_split, self.config.rope_theta)
        action_rows, balance_loss = self._prepare_actions(actions, tokens, batch, latents.device)
        if self.config.history_attention == "causal":
            num_target = frames * (height // self.config.patch_size[1]) * (width // self.config.patch_size[2])
            num_history = tokens.x.shape[1] - num_target
            x = causal_history.run_blocks(self, tokens.x, context, t_mod, num_history, rope, tokens.valid, action_rows)
        else:
            attn_mask, x = key_padding_mask(tokens.valid), tokens.x
            for block in self.blocks:
                x = self._run_block(block, x, context, t_mod, rope, attn_mask, action_rows)
        velocity = self._decode(x, t_emb, latents.shape)
        return (velocity, {"moe_balance_loss": balance_loss}) if return_aux else velocity

    def _decode(self, x: Tensor, t_emb: Tensor, latent_shape: torch.Size) -> Tensor:
        """Head + unpatchify of the trailing target tokens of ``x`` [B, S, dim] -> [B, C_out, F, H, W]."""
        _, _, frames, height, width = latent_shape
        grid = (frames, height // self.config.patch_size[1], width // self.config.patch_size[2])
        out = self.head(x[:, -math.prod(grid) :], t_emb)  # [B, F*h*w, pt*ph*pw*C_out]
        return self._unpatchify(out, grid)

    def _run_block(self, fn, *args) -> Tensor:
        """Runs one block (or a :mod:`~astra_gym.world_model.causal_history` function of one), with activation
        checkpointing when enabled and training."""
        if self.gradient_checkpointing and torch.is_grad_enabled():
            return checkpoint(fn, *args, use_reentrant=False)
        return fn(*args)

    def encode_history(
        self, context: Tensor | None, frame_pack: FramePackInputs, actions: ActionInput | None = None
    ) -> HistoryKVCache:
        """Computes every block's history keys/values once (``history_attention="causal"`` only).

        Args:
            context: [B, L, text_dim] text features, or None (as in :meth:`forward`).
            frame_pack: Packed history; only ``history`` and the batch size are read.
            actions: The action input the forward passes will use (history tokens carry action
                features, so AFG's unconditional branch needs its own cache), or None.

        Returns:
            The :class:`~astra_gym.world_model.kv_cache.HistoryKVCache` of the B rows, for
            ``forward(..., history_cache=...)`` (see :mod:`~astra_gym.world_model.causal_history`).
        """
        return causal_history.encode_history(self, context, frame_pack, actions)

    def _embed_timestep(self, timestep: Tensor, batch: int) -> tuple[Tensor, Tensor]:
        """[B] timesteps -> ([B, dim] embedding for the head, [B, 6, dim] block modulation), float32."""
        if timestep.shape != (batch,):
            raise ValueError(
                f"timestep must be [B]=[{batch}] (one value per batch row), got shape {tuple(timestep.shape)}; "
                "expand a scalar with t.expand(B)"
            )
        sinusoid = sinusoidal_embedding(timestep, self.config.freq_dim)  # [B, freq_dim]
        t_emb = _fp32_sequential(self.time_embedding, sinusoid)  # [B, dim]
        t_mod = _fp32_sequential(self.time_projection, t_emb)  # [B, 6*dim]
        return t_emb, t_mod.unflatten(1, (6, self.config.dim))  # [B, dim], [B, 6, dim]

    def _embed_context(self, context: Tensor | None, batch: int, device: torch.device) -> Tensor:
        """[B, L, text_dim] text features (None -> one zero token) -> [B, L, dim]."""
        dtype = self.text_embedding[0].weight.dtype
        if context is None:
            context = torch.zeros(batch, 1, self.config.text_dim, device=device, dtype=dtype)
        if context.ndim != 3 or context.shape[0] != batch or context.shape[2] != self.config.text_dim:
            raise ValueError(
                f"context must be [B, L, text_dim]=[{batch}, L, {self.config.text_dim}], got shape "
                f"{tuple(context.shape)}; pass the text encoder's features (or None for no text)"
            )
        return self.text_embedding(context.to(dtype))

    def _check_latents(self, latents: Tensor) -> tuple[int, int, int, int, int]:
        """Validates the noisy target [B, C, F, H, W] and returns its shape."""
        cfg = self.config
        if latents.ndim != 5:
            raise ValueError(f"latents must be [B, C, F, H, W], got shape {tuple(latents.shape)}")
        batch, channels, frames, height, width = latents.shape
        if channels != cfg.in_channels:
            raise ValueError(f"latents have {channels} channels but the model expects in_channels={cfg.in_channels}")
        _, ph, pw = cfg.patch_size
        if height % ph or width % pw:
            raise ValueError(
                f"latent size H x W = {height} x {width} is not divisible by the patch ({ph}, {pw}); "
                "crop or pad the latents to a multiple of the patch size"
            )
        return batch, channels, frames, height, width

    def _assemble_tokens(self, latents: Tensor, frame_pack: FramePackInputs) -> Tokens:
        """Embeds ``[history groups..., target]`` into one token sequence with its bookkeeping."""
        target = self._target_tokens(latents, frame_pack)
        runs = [self._embed_group(group, index, latents.shape[0]) for index, group in enumerate(frame_pack.history)]
        runs.append(target)
        return Tokens(*(torch.cat(parts, dim=1) for parts in zip(*runs, strict=True)))

    def _target_tokens(self, latents: Tensor, frame_pack: FramePackInputs) -> Tokens:
        """Validates the target bookkeeping and embeds the noisy target with ``patch_embedding``."""
        batch, _, frames = latents.shape[:3]
        shape = tuple(frame_pack.target_frame_pos.shape)  # both [B, F] (checked by FramePackInputs)
        if shape != (batch, frames):
            raise ValueError(f"FramePackInputs targets must be [B, F]=[{batch}, {frames}], got {shape}")
        target = self.patch_embedding(latents.to(self.patch_embedding.weight.dtype))  # [B, dim, F, h, w]
        valid = torch.ones(batch, frames, dtype=torch.bool, device=latents.device)
        return _grid_tokens(target, frame_pack.target_frame_pos, frame_pack.target_action_row, valid, 1.0)

    def _history_tokens(self, frame_pack: FramePackInputs, batch: int, device: torch.device) -> Tokens:
        """Embeds the history groups into one run [B, S_h, ...] (S_h = 0 without history)."""
        runs = [self._embed_group(group, index, batch) for index, group in enumerate(frame_pack.history)]
        if not runs:
            dtype = self.patch_embedding.weight.dtype
            return Tokens(
                torch.zeros(batch, 0, self.config.dim, device=device, dtype=dtype),
                torch.zeros(batch, 0, 3, device=device),
                torch.zeros(batch, 0, dtype=torch.long, device=device),
                torch.zeros(batch, 0, dtype=torch.bool, device=device),
            )
        return Tokens(*(torch.cat(parts, dim=1) for parts in zip(*runs, strict=True)))

    def _embed_group(self, group: TokenGroup, index: int, batch: int) -> Tokens:
        """Validates and embeds one history group with its ``clean_x_embedder`` Conv3d."""
        self._check_group(group, index, batch)
        grid = self.clean_x_embedder(group.latents, group.scale)  # [B, dim, t, h, w]
        return _grid_tokens(grid, group.frame_pos, group.action_row, group.valid, group.spatial_scale)

    def _check_group(self, group: TokenGroup, index: int, batch: int) -> None:
        """Raises a ValueError naming the problem if ``group`` does not fit this model.

        The group's own shapes were checked where it was built (:class:`TokenGroup`).
        """
        cfg, where = self.config, f"history group {index} (scale {group.scale})"
        if group.scale not in cfg.history_scales:
            raise ValueError(
                f"{where}: the model has no clean_x_embedder for this scale; history_scales={cfg.history_scales}"
            )
        if group.latents.shape[:2] != (batch, cfg.in_channels):
            raise ValueError(
                f"{where}: latents must be [B, C, T, H, W] with B={batch}, C={cfg.in_channels}, "
                f"got {tuple(group.latents.shape)}"
            )
        _, ph, pw = cfg.patch_size
        s = group.scale
        height, width = group.latents.shape[-2:]
        if height % (s * ph) or width % (s * pw):
            raise ValueError(
                f"{where}: latents H x W = {height} x {width} must be multiples of the kernel "
                f"({s * ph}, {s * pw}); pad the group (FramePack replicate-pads) before packing"
            )

    def _prepare_actions(
        self, actions: ActionInput | None, tokens: Tokens, batch: int, device: torch.device
    ) -> tuple[ActionRows | None, Tensor]:
        """Encodes and routes the action rows once per forward; returns them and the balance loss."""
        zero_loss = torch.zeros((), device=device)
        if actions is None:
            return None, zero_loss
        values = actions.values
        if values.shape[0] != batch:
            raise ValueError(f"ActionInput has batch {values.shape[0]} but the latents have batch {batch}")
        num_rows = values.shape[1]
        actions = ActionInput(values.to(self.blocks[0].cam_encoder.weight.dtype), actions.modality)
        token_rows = self._check_action_rows(tokens.action_row, num_rows)  # [B, S], -1 -> A
        key_mask = None
        if self.config.action_injection == "cross_attn":
            key_mask = _used_rows(tokens.valid, token_rows, num_rows)  # [B, A+1]
            key_mask[:, num_rows] = True  # the zero row: every sample has at least one key
        if not self.config.num_experts:
            rows = self._raw_action_rows(actions)  # [B, A, max modality dim]
            zero_row = rows.new_zeros(batch, 1, rows.shape[-1])
            return ActionRows(torch.cat([rows, zero_row], dim=1), None, (), token_rows, key_mask), zero_loss
        unified = encode_actions(self.processors, self.config, actions)  # [B, A, U]
        unified = torch.cat([unified, unified.new_zeros(batch, 1, unified.shape[-1])], dim=1)  # [B, A+1, U]
        used = _used_rows(tokens.valid, token_rows, num_rows)  # [B, A+1]
        routing = route(self.config, self.global_router, unified, actions.modality, used)
        rows = ActionRows(unified, routing.weights, routing.active_experts, token_rows, key_mask)
        return rows, routing.balance_loss

    @staticmethod
    def _check_action_rows(action_row: Tensor, num_rows: int) -> Tensor:
        """Validates [B, S] rows in [-1, A) and maps -1 to the zero row A."""
        low, high = int(action_row.min()), int(action_row.max())
        if low < -1 or high >= num_rows:
            raise ValueError(
                f"action_row values span [{low}, {high}] but ActionInput.values has {num_rows} rows; "
                f"rows must be in [-1, {num_rows - 1}] (-1 = no action); pass the action sequence the packer indexed"
            )
        return torch.where(action_row < 0, num_rows, action_row)  # [B, S]

    def _raw_action_rows(self, actions: ActionInput) -> Tensor:
        """Raw rows for the shared ``cam_encoder``: each row's modality columns, zero-padded.

        Returns:
            [B, A, W] with W the widest modality; columns past the row's own ``spec.dim`` are 0.
        """
        specs = self.config.modalities
        modality = actions.modality
        if int(modality.min()) < 0 or int(modality.max()) >= len(specs):
            raise ValueError(
                f"modality indices {modality.tolist()} out of range for modalities {[m.name for m in specs]}"
            )
        width = max(m.dim for m in specs)
        values = actions.values[..., :width]
        values = F.pad(values, (0, width - values.shape[-1]))  # [B, A, W]
        dims = torch.tensor([m.dim for m in specs], device=values.device)[modality]  # [B]
        keep = torch.arange(width, device=values.device)[None, :] < dims[:, None]  # [B, W]
        return values * keep[:, None, :].to(values.dtype)

    def _unpatchify(self, out: Tensor, grid: tuple[int, int, int]) -> Tensor:
        """[B, F*h*w, pt*ph*pw*C] (channel fastest) -> [B, C, F*pt, h*ph, w*pw]."""
        frames, height, width = grid
        pt, ph, pw = self.config.patch_size
        batch, channels = out.shape[0], self.config.out_channels
        out = out.reshape(batch, frames, height, width, pt, ph, pw, channels)  # [B, F, h, w, pt, ph, pw, C]
        out = out.permute(0, 7, 1, 4, 2, 5, 3, 6)  # [B, C, F, pt, h, ph, w, pw]
        return out.reshape(batch, channels, frames * pt, height * ph, width * pw)


def _used_rows(valid: Tensor, token_rows: Tensor, num_rows: int) -> Tensor:
    """Rows that count in the balance loss.

    Args:
        valid: [B, S] bool valid tokens.
        token_rows: [B, S] long row of each token in [0, A] (A = the zero row).
        num_rows: A, the number of real action rows.

    Returns:
        [B, A+1] bool: rows read by at least one valid token; the zero row never counts.
    """
    counts = torch.zeros(token_rows.shape[0], num_rows + 1, device=token_rows.device)  # [B, A+1]
    counts = counts.scatter_add(1, token_rows, valid.float())
    used = counts > 0
    used[:, num_rows] = False
    return used
