"""The transformer's building layers, in Wan2.1's parameter layout: q/k RMSNorm, float32 LayerNorm, attention."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from astra_gym.world_model.rope import RopeTable, apply_rope

__all__ = ["Attention", "LayerNorm32", "RMSNorm"]


class RMSNorm(nn.Module):
    """RMS normalisation over the last dimension in float32, weight only (Wan's q/k norm).

    Args:
        dim: Normalised width (the full model width for Wan: all heads together).
        eps: Added to the mean square.
    """

    def __init__(self, dim: int, eps: float) -> None:
        super().__init__()
        self.eps = eps
        self.weight = nn.Parameter(torch.ones(dim))

    def forward(self, x: Tensor) -> Tensor:
        """[..., dim] -> [..., dim] in ``x.dtype``."""
        x32 = x.float()
        normed = x32 * torch.rsqrt(x32.pow(2).mean(dim=-1, keepdim=True) + self.eps)
        return (normed * self.weight.float()).to(x.dtype)


class LayerNorm32(nn.LayerNorm):
    """LayerNorm computed in float32 and cast back to the input dtype (parameters may be bf16)."""

    def forward(self, x: Tensor) -> Tensor:
        """[..., dim] -> [..., dim] in ``x.dtype``."""
        weight = None if self.weight is None else self.weight.float()
        bias = None if self.bias is None else self.bias.float()
        with torch.autocast(device_type=x.device.type, enabled=False):
            return F.layer_norm(x.float(), self.normalized_shape, weight, bias, self.eps).to(x.dtype)


class Attention(nn.Module):
    """Multi-head attention with q/k RMSNorm over all heads (Wan's self- and cross-attention).

    Args:
        dim: Model width.
        num_heads: Attention heads.
        eps: RMSNorm epsilon.
    """

    def __init__(self, dim: int, num_heads: int, eps: float) -> None:
        super().__init__()
        self.num_heads = num_heads
        self.q = nn.Linear(dim, dim)
        self.k = nn.Linear(dim, dim)
        self.v = nn.Linear(dim, dim)
        self.o = nn.Linear(dim, dim)
        self.norm_q = RMSNorm(dim, eps)
        self.norm_k = RMSNorm(dim, eps)

    def forward(
        self,
        x: Tensor,
        source: Tensor | None = None,
        rope: RopeTable | None = None,
        attn_mask: Tensor | None = None,
    ) -> Tensor:
        """Attends from ``x`` to ``source`` (self-attention when None).

        Args:
            x: [B, S, dim] queries' hidden states.
            source: [B, L, dim] keys' and values' hidden states; None = ``x``.
            rope: Rotation of queries and keys (self-attention only; needs L = S).
            attn_mask: [B, 1, 1, L] bool, True = key takes part; None = all keys.

        Returns:
            [B, S, dim] attention output after ``o``.
        """
        source = x if source is None else source
        q = self.norm_q(self.q(x)).unflatten(-1, (self.num_heads, -1))  # [B, S, H, D]
        k = self.norm_k(self.k(source)).unflatten(-1, (self.num_heads, -1))  # [B, L, H, D]
        v = self.v(source).unflatten(-1, (self.num_heads, -1))  # [B, L, H, D]
        if rope is not None:
            q, k = apply_rope(q, rope), apply_rope(k, rope)
        out = F.scaled_dot_product_attention(
            q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2), attn_mask=attn_mask
        )  # [B, H, S, D]
        return self.o(out.transpose(1, 2).flatten(2))  # [B, S, dim]

    def project(self, x: Tensor, rope: RopeTable) -> tuple[Tensor, Tensor, Tensor]:
        """Self-attention queries, keys and values of ``x`` (as :meth:`forward` computes them).

        Args:
            x: [B, S, dim] hidden states.
            rope: Rotation of the S tokens.

        Returns:
            q, k, v, each [B, H, S, D]; q and k normed and rotated.
        """
        q = self.norm_q(self.q(x)).unflatten(-1, (self.num_heads, -1))  # [B, S, H, D]
        k = self.norm_k(self.k(x)).unflatten(-1, (self.num_heads, -1))  # [B, S, H, D]
        v = self.v(x).unflatten(-1, (self.num_heads, -1))  # [B, S, H, D]
        q, k = apply_rope(q, rope), apply_rope(k, rope)
        return q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2)  # [B, H, S, D] each

    def attend(self, q: Tensor, k: Tensor, v: Tensor, attn_mask: Tensor | None) -> Tensor:
        """Attention of projected heads, then ``o``.

        Args:
            q: [B, H, S, D] queries.
            k: [B, H, L, D] keys.
            v: [B, H, L, D] values.
            attn_mask: Bool mask broadcastable to [B, H, S, L], True = attend; None = all.

        Returns:
            [B, S, dim] attention output after ``o``.
        """
        out = F.scaled_dot_product_attention(q, k, v, attn_mask=attn_mask)  # [B, H, S, D]
        return self.o(out.transpose(1, 2).flatten(2))  # [B, S, dim]
