"""The causal-history path of :class:`~astra_gym.world_model.transformer.AstraTransformer` and its KV cache.

With ``config.history_attention="causal"`` (not the release) history tokens are modulated as clean
(timestep 0) and attend only to history tokens; target tokens attend to everything. The history's
keys and values in every block then depend on the history, the text context and the actions
alone, so :func:`encode_history` computes them once per chunk and :func:`forward_cached` runs only
the target tokens at each denoising step (equal to the uncached forward).

Everything here reuses the model's blocks (:class:`~astra_gym.world_model.transformer.AstraBlock`:
``modulation_terms``, ``attention_input``, ``self_attn.project`` / ``attend``, ``projector``,
``after_attention``) and its embedders; the release's full-attention path is the block's single
``forward``. This module is the transformer's companion: it calls the model's private embedding
helpers, and users go through ``AstraTransformer.forward(..., history_cache=...)`` and
``AstraTransformer.encode_history``.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import torch
from torch import Tensor

from astra_gym.world_model.conditioning import ActionInput, FramePackInputs, key_padding_mask
from astra_gym.world_model.kv_cache import HistoryKVCache
from astra_gym.world_model.rope import RopeTable, rope_table

if TYPE_CHECKING:
    from astra_gym.world_model.transformer import ActionRows, AstraBlock, AstraTransformer

__all__ = ["causal_mask", "encode_history", "forward_cached", "run_blocks"]


def causal_mask(valid: Tensor, num_history: int) -> Tensor:
    """Block mask of ``history_attention="causal"``.

    History queries see the valid history keys, target queries see every valid key; every query
    also sees itself, so an invalid (padding) history token never has an empty row (NaN).

    Args:
        valid: [B, S] bool valid keys, the first ``num_history`` tokens history.
        num_history: History tokens S_h.

    Returns:
        [B, 1, S, S] bool SDPA mask (query, key), True = attend.
    """
    index = torch.arange(valid.shape[1], device=valid.device)  # [S]
    history = index < num_history  # [S]
    allowed = ~(history[:, None] & ~history[None, :])  # [S, S]: no history query -> target key
    mask = (valid[:, None, :] & allowed) | (index[:, None] == index[None, :])  # [B, S, S]
    return mask[:, None]


def require_causal(model: AstraTransformer, what: str) -> None:
    """Raises a ValueError unless ``model`` runs with ``history_attention="causal"``."""
    if model.config.history_attention != "causal":
        raise ValueError(
            f"{what} needs history_attention='causal' (history keys/values independent of the noisy "
            f"target), but this model has history_attention={model.config.history_attention!r}; the full "
            "(release) path has no exact history cache: call forward without history_cache"
        )


def _clean_modulation(model: AstraTransformer, batch: int, device: torch.device) -> Tensor:
    """[B, 6, dim] float32 block modulation of timestep 0 (clean history tokens)."""
    return model._embed_timestep(torch.zeros(batch, device=device), batch)[1]


# ------------------------------------------------------------------------------------------ one block


def _block_causal(
    block: AstraBlock,
    x: Tensor,
    context: Tensor,
    t_mods: tuple[Tensor, Tensor],
    num_history: int,
    rope: RopeTable,
    attn_mask: Tensor,
    actions: ActionRows | None,
) -> Tensor:
    """Reference (uncached) causal-history block over the whole ``[history, target]`` sequence.

    Args:
        block: The block.
        x: [B, S, dim] hidden states, the first ``num_history`` tokens history.
        context: [B, L, dim] embedded text.
        t_mods: ([B, 6, dim] history modulation of timestep 0, [B, 6, dim] target modulation).
        num_history: History tokens S_h at the start of ``x``.
        rope: Rotation table of the S tokens.
        attn_mask: [B, 1, S, S] bool block mask (history queries see only history keys).
        actions: Action rows of all S tokens, or None.

    Returns:
        [B, S, dim] updated hidden states.
    """
    mods = (block.modulation_terms(t_mods[0]), block.modulation_terms(t_mods[1]))
    features = block.added_features(actions)  # [B, S, dim] or None
    parts = (slice(0, num_history), slice(num_history, None))
    h = torch.cat(
        [
            block.attention_input(x[:, p], m, None if features is None else features[:, p])
            for p, m in zip(parts, mods, strict=True)
        ],
        dim=1,
    )  # [B, S, dim]
    attn = block.projector(block.self_attn(h, rope=rope, attn_mask=attn_mask))  # [B, S, dim]
    return torch.cat(
        [block.after_attention(x[:, p], attn[:, p], m, context, actions) for p, m in zip(parts, mods, strict=True)],
        dim=1,
    )


def _block_history(
    block: AstraBlock,
    x: Tensor,
    context: Tensor,
    t_mod: Tensor,
    rope: RopeTable,
    attn_mask: Tensor,
    actions: ActionRows | None,
    need_output: bool = True,
) -> tuple[Tensor | None, Tensor, Tensor]:
    """History-only block: history tokens attending to history tokens.

    Args:
        block: The block.
        x: [B, S_h, dim] history hidden states.
        context: [B, L, dim] embedded text.
        t_mod: [B, 6, dim] modulation of timestep 0.
        rope: Rotation of the S_h tokens.
        attn_mask: [B, 1, S_h, S_h] bool mask.
        actions: Action rows of the history tokens, or None.
        need_output: False skips everything after the key/value projection (last block).

    Returns:
        (updated [B, S_h, dim] or None, keys [B, H, S_h, D], values [B, H, S_h, D]).
    """
    mod = block.modulation_terms(t_mod)
    h = block.attention_input(x, mod, block.added_features(actions))
    q, k, v = block.self_attn.project(h, rope)  # [B, H, S_h, D] each
    if not need_output:
        return None, k, v
    attn = block.projector(block.self_attn.attend(q, k, v, attn_mask))  # [B, S_h, dim]
    return block.after_attention(x, attn, mod, context, actions), k, v


def _block_cached(
    block: AstraBlock,
    x: Tensor,
    context: Tensor,
    t_mod: Tensor,
    rope: RopeTable,
    attn_mask: Tensor | None,
    actions: ActionRows | None,
    history_kv: tuple[Tensor, Tensor],
) -> Tensor:
    """Target-only block attending to cached history keys/values and its own.

    Args:
        block: The block.
        x: [B, S_t, dim] target hidden states.
        context: [B, L, dim] embedded text.
        t_mod: [B, 6, dim] target timestep modulation.
        rope: Rotation of the S_t target tokens.
        attn_mask: [B, 1, 1, S_h + S_t] bool key mask, or None (all keys valid).
        actions: Action rows of the target tokens, or None.
        history_kv: This block's cached (keys, values), each [B, H, S_h, D].

    Returns:
        [B, S_t, dim] updated target hidden states.
    """
    mod = block.modulation_terms(t_mod)
    h = block.attention_input(x, mod, block.added_features(actions))
    q, k, v = block.self_attn.project(h, rope)  # [B, H, S_t, D] each
    k = torch.cat([history_kv[0].to(k.dtype), k], dim=2)  # [B, H, S_h + S_t, D]
    v = torch.cat([history_kv[1].to(v.dtype), v], dim=2)  # [B, H, S_h + S_t, D]
    attn = block.projector(block.self_attn.attend(q, k, v, attn_mask))  # [B, S_t, dim]
    return block.after_attention(x, attn, mod, context, actions)


# ------------------------------------------------------------------------------------------ the model


def run_blocks(
    model: AstraTransformer,
    x: Tensor,
    context: Tensor,
    t_mod: Tensor,
    num_history: int,
    rope: RopeTable,
    valid: Tensor,
    actions: ActionRows | None,
) -> Tensor:
    """Every block over ``[history, target]`` tokens ``x`` [B, S, dim] without a cache: [B, S, dim].

    Args:
        model: The transformer.
        x: [B, S, dim] embedded tokens, the first ``num_history`` history.
        context: [B, L, dim] embedded text.
        t_mod: [B, 6, dim] target timestep modulation.
        num_history: History tokens S_h.
        rope: Rotation table of the S tokens.
        valid: [B, S] bool valid keys.
        actions: Action rows of all S tokens, or None.
    """
    t_mods = (_clean_modulation(model, x.shape[0], x.device), t_mod)
    attn_mask = causal_mask(valid, num_history)
    for block in model.blocks:
        x = model._run_block(_block_causal, block, x, context, t_mods, num_history, rope, attn_mask, actions)
    return x


def encode_history(
    model: AstraTransformer, context: Tensor | None, frame_pack: FramePackInputs, actions: ActionInput | None = None
) -> HistoryKVCache:
    """Computes every block's history keys/values once (see ``AstraTransformer.encode_history``)."""
    require_causal(model, "encode_history")
    batch = frame_pack.target_frame_pos.shape[0]
    device = frame_pack.target_frame_pos.device
    tokens = model._history_tokens(frame_pack, batch, device)
    if tokens.x.shape[1] == 0:
        return _empty_cache(model, batch, device, tokens.x.dtype)
    context = model._embed_context(context, batch, device)  # [B, L, dim]
    t_mod = _clean_modulation(model, batch, device)  # [B, 6, dim]
    rope = rope_table(tokens.positions, model.config.rope_split, model.config.rope_theta)
    attn_mask = causal_mask(tokens.valid, tokens.x.shape[1])  # [B, 1, S_h, S_h]
    action_rows, _ = model._prepare_actions(actions, tokens, batch, device)
    x, keys, values = tokens.x, [], []
    for index, block in enumerate(model.blocks):
        last = index == len(model.blocks) - 1
        x, k, v = _block_history(block, x, context, t_mod, rope, attn_mask, action_rows, need_output=not last)
        keys.append(k)
        values.append(v)
    return HistoryKVCache(tuple(keys), tuple(values), tokens.valid)


def _empty_cache(model: AstraTransformer, batch: int, device: torch.device, dtype: torch.dtype) -> HistoryKVCache:
    """Cache of zero history tokens ([B, H, 0, D] per block)."""
    config = model.config
    empty = torch.zeros(batch, config.num_heads, 0, config.head_dim, device=device, dtype=dtype)
    layers = len(model.blocks)
    return HistoryKVCache((empty,) * layers, (empty,) * layers, torch.zeros(batch, 0, dtype=torch.bool, device=device))


def forward_cached(
    model: AstraTransformer,
    latents: Tensor,
    timestep: Tensor,
    context: Tensor | None,
    frame_pack: FramePackInputs,
    actions: ActionInput | None,
    cache: HistoryKVCache,
    return_aux: bool,
) -> Tensor | tuple[Tensor, dict[str, Tensor]]:
    """``AstraTransformer.forward`` with cached history keys/values: only the target tokens run."""
    require_causal(model, "forward(history_cache=...)")
    batch = latents.shape[0]
    if cache.batch_size != batch or cache.num_layers != len(model.blocks):
        raise ValueError(
            f"history_cache has batch {cache.batch_size} and {cache.num_layers} layers, but the latents have "
            f"batch {batch} and the model {len(model.blocks)} blocks; build it with encode_history on the same rows"
        )
    t_emb, t_mod = model._embed_timestep(timestep, batch)  # [B, dim], [B, 6, dim]
    context = model._embed_context(context, batch, latents.device)  # [B, L, dim]
    tokens = model._target_tokens(latents, frame_pack)
    rope = rope_table(tokens.positions, model.config.rope_split, model.config.rope_theta)
    attn_mask = key_padding_mask(torch.cat([cache.valid, tokens.valid], dim=1))  # [B, 1, 1, S_h + S_t]
    action_rows, balance_loss = model._prepare_actions(actions, tokens, batch, latents.device)
    x = tokens.x
    for block, k, v in zip(model.blocks, cache.keys, cache.values, strict=True):
        x = model._run_block(_block_cached, block, x, context, t_mod, rope, attn_mask, action_rows, (k, v))
    velocity = model._decode(x, t_emb, latents.shape)
    return (velocity, {"moe_balance_loss": balance_loss}) if return_aux else velocity
