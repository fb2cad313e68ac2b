"""The paper's cross-attention adapter ablation (``action_injection="cross_attn"``), as its own module.

Astra adds each token's action feature to the block's self-attention input (the ACT-Adapter path,
:class:`~astra_gym.world_model.transformer.AstraBlock`). The ablation instead lets every token
attend to the features of all action rows after the self-attention residual. A block holds one of
these only when the config asks for the ablation, so the default path has no branch on it.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from astra_gym.world_model.layers import Attention, LayerNorm32

__all__ = ["ActionCrossAttention", "rename_legacy_keys"]

# Attention submodules whose keys moved from ``action_attn.X`` to ``action_attn.attn.X``.
_ATTENTION_PARTS = ("q.", "k.", "v.", "o.", "norm_q.", "norm_k.")


class ActionCrossAttention(nn.Module):
    """Residual cross-attention from the tokens to the action rows' features.

    Starts as the identity (zero output projection), like the ACT-Adapter.

    Args:
        dim: Model width.
        num_heads: Attention heads.
        eps: Norm epsilon.
    """

    def __init__(self, dim: int, num_heads: int, eps: float) -> None:
        super().__init__()
        self.norm = LayerNorm32(dim, eps, elementwise_affine=True)
        self.attn = Attention(dim, num_heads, eps)
        with torch.no_grad():
            nn.init.zeros_(self.attn.o.weight)
            nn.init.zeros_(self.attn.o.bias)

    def forward(self, x: Tensor, rows: Tensor, key_mask: Tensor) -> Tensor:
        """Adds the attention to the action rows.

        Args:
            x: [B, S, dim] hidden states.
            rows: [B, R, dim] this block's feature of every action row.
            key_mask: [B, R] bool, True = the row takes part.

        Returns:
            [B, S, dim] hidden states.
        """
        mask = key_mask[:, None, None, :]  # [B, 1, 1, R]
        return x + self.attn(self.norm(x), rows.to(x.dtype), attn_mask=mask).to(x.dtype)


def rename_legacy_keys(state_dict: dict[str, Tensor], prefix: str, *_: object) -> None:
    """Block load pre-hook: maps the ablation's keys from before it had its own module.

    Those checkpoints stored the norm as the block's ``action_attn_norm.*`` and the attention
    directly as ``action_attn.{q,k,v,o,norm_q,norm_k}.*``; they load unchanged.

    Args:
        state_dict: The block's part of the state dict (renamed in place).
        prefix: The block's key prefix, e.g. ``"blocks.3."``.
    """
    old_norm, new = prefix + "action_attn_norm.", prefix + "action_attn."
    for key in [k for k in state_dict if k.startswith(old_norm)]:
        state_dict[new + "norm." + key[len(old_norm) :]] = state_dict.pop(key)
    for key in [k for k in state_dict if k.startswith(new) and k[len(new) :].startswith(_ATTENTION_PARTS)]:
        state_dict[new + "attn." + key[len(new) :]] = state_dict.pop(key)
