"""Per-layer keys and values of the clean history tokens, reused over a chunk's denoising steps.

With ``history_attention="causal"`` (see :class:`~astra_gym.world_model.config.AstraTransformerConfig`)
history tokens are modulated as clean (timestep 0) and attend only to history tokens, so their
keys and values in every block depend on the history, the text context and the actions alone,
never on the noisy target or the timestep. :meth:`AstraTransformer.encode_history` computes them
once per chunk; ``AstraTransformer.forward(..., history_cache=cache)`` then runs only the target
tokens through the blocks. The released checkpoint was trained with full attention
(``history_attention="full"``), where no such cache is exact.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch
from torch import Tensor

__all__ = ["HistoryKVCache"]


@dataclass(frozen=True, eq=False)
class HistoryKVCache:
    """History keys/values of every block for a batch of B rows.

    Attributes:
        keys: One [B, heads, S_hist, head_dim] tensor per block: the history tokens' self-attention
            keys after q/k RMSNorm and RoPE.
        values: One [B, heads, S_hist, head_dim] tensor per block: their self-attention values.
        valid: [B, S_hist] bool; False = history token masked out as a key (padding).
    """

    keys: tuple[Tensor, ...]
    values: tuple[Tensor, ...]
    valid: Tensor

    def __post_init__(self) -> None:
        if len(self.keys) != len(self.values) or not self.keys:
            raise ValueError(
                f"HistoryKVCache needs one key and one value tensor per block, got {len(self.keys)} keys "
                f"and {len(self.values)} values"
            )
        if self.valid.ndim != 2 or self.valid.dtype != torch.bool:
            raise ValueError(
                f"HistoryKVCache.valid must be [B, S_hist] bool, got {tuple(self.valid.shape)} {self.valid.dtype}"
            )
        batch, tokens = self.valid.shape
        for layer, (k, v) in enumerate(zip(self.keys, self.values, strict=True)):
            if k.ndim != 4 or k.shape != v.shape or (k.shape[0], k.shape[2]) != (batch, tokens):
                raise ValueError(
                    f"HistoryKVCache layer {layer}: keys {tuple(k.shape)} and values {tuple(v.shape)} must both be "
                    f"[B, heads, S_hist, head_dim] with B={batch}, S_hist={tokens} (from valid)"
                )

    @property
    def batch_size(self) -> int:
        """Rows B."""
        return self.valid.shape[0]

    @property
    def num_tokens(self) -> int:
        """History tokens S_hist per row (valid or not)."""
        return self.valid.shape[1]

    @property
    def num_layers(self) -> int:
        """Blocks covered (one key/value pair each)."""
        return len(self.keys)

    def _map(self, fn) -> HistoryKVCache:
        """Applies ``fn`` (acting on the batch dimension 0) to every tensor."""
        return HistoryKVCache(tuple(fn(k) for k in self.keys), tuple(fn(v) for v in self.values), fn(self.valid))

    def select(self, rows: Tensor | Sequence[int] | slice) -> HistoryKVCache:
        """The cache of a subset (or reordering) of the rows.

        Args:
            rows: [B'] long indices, a list of ints or a slice of the batch dimension.

        Returns:
            Cache of batch B'.
        """
        if not isinstance(rows, slice):
            rows = torch.as_tensor(rows, dtype=torch.long, device=self.valid.device)
        return self._map(lambda t: t[rows])

    def repeat_interleave(self, repeats: int) -> HistoryKVCache:
        """Each row repeated ``repeats`` times in place (row i -> rows i*n .. i*n + n - 1), for MPC forks.

        Returns:
            Cache of batch B * repeats.
        """
        if repeats < 1:
            raise ValueError(f"repeats={repeats} must be >= 1")
        return self._map(lambda t: t.repeat_interleave(repeats, dim=0))

    @staticmethod
    def concat(caches: Sequence[HistoryKVCache]) -> HistoryKVCache:
        """Concatenates caches along the batch (e.g. conditional + unconditional AFG branches).

        Args:
            caches: Caches with batches B_1..B_n, the same layers and S_hist.

        Returns:
            Cache of batch B_1 + ... + B_n, rows in the given order.
        """
        if not caches:
            raise ValueError("HistoryKVCache.concat needs at least one cache")
        layers = {c.num_layers for c in caches}
        tokens = {c.num_tokens for c in caches}
        if len(layers) != 1 or len(tokens) != 1:
            raise ValueError(
                f"cannot concatenate history caches with different layers {sorted(layers)} or "
                f"history lengths {sorted(tokens)}; pack the histories with the same layout"
            )
        keys = tuple(torch.cat(ks) for ks in zip(*(c.keys for c in caches), strict=True))
        values = tuple(torch.cat(vs) for vs in zip(*(c.values for c in caches), strict=True))
        return HistoryKVCache(keys, values, torch.cat([c.valid for c in caches]))
