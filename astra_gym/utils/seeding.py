"""Random-number policy: every random draw in the library takes a ``torch.Generator``.

Seeds flow from ``env.reset(seed)`` (or a script's ``--seed``) into a numpy ``Generator`` and from
there into one ``torch.Generator`` per batch row, so row i's randomness does not depend on how many
other rows are in the batch.
"""

from __future__ import annotations

import numpy as np
import torch

__all__ = ["torch_generator", "row_generators", "derive_seed"]

_SEED_BITS = 63


def derive_seed(rng: np.random.Generator) -> int:
    """Draws a fresh 63-bit seed from a numpy generator."""
    return int(rng.integers(0, 2**_SEED_BITS))


def torch_generator(seed: int, device: torch.device | str = "cpu") -> torch.Generator:
    """Returns a ``torch.Generator`` on ``device`` seeded with ``seed``."""
    if not 0 <= seed < 2**64:
        raise ValueError(f"seed={seed} must be in [0, 2**64)")
    generator = torch.Generator(device=device)
    generator.manual_seed(seed)
    return generator


def row_generators(seeds: list[int], device: torch.device | str = "cpu") -> list[torch.Generator]:
    """One generator per batch row, seeded independently."""
    return [torch_generator(seed, device) for seed in seeds]
