"""Optional text conditioning: a zero context for the small presets, or Wan's UMT5 encoder.

Both encoders map a list of prompts to the transformer's ``context`` [B, L, text_dim].

* :class:`NullTextEncoder` returns one all-zero token per prompt (what the small presets use).
* :class:`UMT5TextEncoder` follows Wan's prompter (astra-release.md §8.2): clean whitespace,
  tokenize to 512 tokens with padding and truncation, run the UMT5 encoder with the attention mask,
  and set every position at or past the real length to 0. Note the release trained on *unpadded*
  context but samples with this zero-padded one (bug 8).
"""

from __future__ import annotations

import html
import re
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

__all__ = ["clean_prompt", "NullTextEncoder", "UMT5TextEncoder"]


def clean_prompt(text: str) -> str:
    """Unescapes HTML entities (twice, as Wan does) and collapses runs of whitespace to one space."""
    text = html.unescape(html.unescape(text))
    return re.sub(r"\s+", " ", text).strip()


def _as_list(prompts: str | Sequence[str]) -> list[str]:
    return [prompts] if isinstance(prompts, str) else list(prompts)


class NullTextEncoder(nn.Module):
    """Text encoder of the text-free presets: one zero token per prompt.

    Args:
        text_dim: Width of the context (the transformer's ``text_dim``).
        device: Device of the returned context.
        dtype: dtype of the returned context.
    """

    def __init__(self, text_dim: int, device: torch.device | str = "cpu", dtype: torch.dtype = torch.float32) -> None:
        super().__init__()
        if text_dim < 1:
            raise ValueError(f"text_dim={text_dim} must be >= 1")
        self.text_dim = text_dim
        self.device = torch.device(device)
        self.dtype = dtype

    def encode(self, prompts: str | Sequence[str]) -> Tensor:
        """Returns a [B, 1, text_dim] zero context, B = number of prompts (contents are ignored)."""
        return torch.zeros(len(_as_list(prompts)), 1, self.text_dim, device=self.device, dtype=self.dtype)


def _transformers():
    """The transformers package, or an ImportError naming the extra to install."""
    try:
        import transformers
    except ImportError as err:
        raise ImportError("UMT5TextEncoder needs transformers; install it with `pip install astra-gym[wan]`") from err
    return transformers


def _check_wan_folder(folder: Path) -> None:
    """Raises a FileNotFoundError naming what is missing from a diffusers-format Wan folder."""
    missing = [str(p) for p in (folder / "text_encoder" / "config.json", folder / "tokenizer") if not p.exists()]
    if missing:
        raise FileNotFoundError(
            f"not a diffusers-format Wan2.1 folder: missing {missing}; pass the local folder that holds the "
            "text_encoder/ and tokenizer/ subfolders (e.g. Wan2.1-T2V-1.3B-Diffusers, downloaded beforehand)"
        )


class UMT5TextEncoder(nn.Module):
    """Wan2.1's UMT5 text encoder with its prompter's padding rule.

    Args:
        encoder: A transformers ``UMT5EncoderModel`` (frozen; kept in eval mode).
        tokenizer: Its tokenizer.
        max_length: Tokens per prompt after padding / truncation (Wan: 512).
    """

    def __init__(self, encoder: nn.Module, tokenizer: Any, max_length: int = 512) -> None:
        super().__init__()
        self.encoder = encoder.eval().requires_grad_(False)
        self.tokenizer = tokenizer
        self.max_length = max_length
        self.text_dim = int(encoder.config.d_model)

    @classmethod
    def from_pretrained(
        cls,
        folder: str | Path,
        device: torch.device | str = "cpu",
        dtype: torch.dtype = torch.float32,
        max_length: int = 512,
    ) -> UMT5TextEncoder:
        """Loads ``folder/text_encoder`` and ``folder/tokenizer`` from disk only (no network).

        Args:
            folder: Local diffusers-format Wan2.1 folder.
            device: Device of the encoder weights and of the returned context.
            dtype: Weight dtype (the release uses bf16).
            max_length: Tokens per prompt (Wan: 512).
        """
        folder = Path(folder)
        _check_wan_folder(folder)
        transformers = _transformers()
        encoder = transformers.UMT5EncoderModel.from_pretrained(
            folder / "text_encoder", dtype=dtype, local_files_only=True
        )
        tokenizer = transformers.AutoTokenizer.from_pretrained(folder / "tokenizer", local_files_only=True)
        return cls(encoder.to(device), tokenizer, max_length)

    @torch.no_grad()
    def encode(self, prompts: str | Sequence[str]) -> Tensor:
        """Encodes prompts like Wan's prompter.

        Args:
            prompts: One prompt or a list of B prompts.

        Returns:
            [B, max_length, text_dim] context in the encoder's dtype and device; every position at or
            past a prompt's token count (end token included) is exactly 0.
        """
        device = next(self.encoder.parameters()).device
        tokens = self.tokenizer(
            [clean_prompt(p) for p in _as_list(prompts)],
            padding="max_length",
            max_length=self.max_length,
            truncation=True,
            add_special_tokens=True,
            return_attention_mask=True,
            return_tensors="pt",
        )
        ids, mask = tokens["input_ids"].to(device), tokens["attention_mask"].to(device)  # [B, L] each
        hidden = self.encoder(input_ids=ids, attention_mask=mask).last_hidden_state  # [B, L, text_dim]
        lengths = mask.sum(dim=1, keepdim=True)  # [B, 1]
        keep = torch.arange(ids.shape[1], device=device).unsqueeze(0) < lengths  # [B, L]
        return torch.where(keep.unsqueeze(-1), hidden, torch.zeros((), dtype=hidden.dtype, device=device))
