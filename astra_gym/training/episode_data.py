"""Recorded episodes for the VAE and reward trainers: loading folders and held-out splits.

Episodes are split per folder, by episode (never by frame, so held-out frames come from unseen
episodes): a shuffled ``holdout_fraction`` of each folder's episodes (at least one when the folder
holds two or more) is held out. The shuffle comes from an explicit generator, so the split
depends only on the seed and the folder contents.
"""

from __future__ import annotations

import logging
import math
import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import torch

from astra_gym.data.episodes import Episode, episode_paths, load_episode

__all__ = ["EpisodeSplit", "load_split"]

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class EpisodeSplit:
    """Episodes of several folders, split into training and held-out sets.

    Attributes:
        train: Per folder, its training episodes.
        holdout: Per folder, its held-out episodes (possibly empty).
        folders: The folders, in the given order.
    """

    train: tuple[tuple[Episode, ...], ...]
    holdout: tuple[tuple[Episode, ...], ...]
    folders: tuple[Path, ...]


def load_split(
    folders: Sequence[str | os.PathLike], holdout_fraction: float, generator: torch.Generator
) -> EpisodeSplit:
    """Loads every episode of ``folders`` and splits each folder by episode.

    Args:
        folders: Episode folders (``python -m astra_gym.data.generate`` output), e.g. one per scenario.
        holdout_fraction: Share of each folder's episodes held out, in [0, 1).
        generator: Source of the per-folder shuffles.

    Returns:
        The split.
    """
    if not folders:
        raise ValueError("no episode folders given; pass --episodes DIR (repeat for several scenarios)")
    if not 0.0 <= holdout_fraction < 1.0:
        raise ValueError(f"holdout_fraction={holdout_fraction} must be in [0, 1)")
    train, holdout = [], []
    for folder in folders:
        paths = episode_paths(folder)
        if not paths:
            raise FileNotFoundError(
                f"no episode_*.hdf5 files in {folder}; record some with python -m astra_gym.data.generate"
            )
        order = torch.randperm(len(paths), generator=generator).tolist()
        count = math.ceil(holdout_fraction * len(paths)) if holdout_fraction > 0 and len(paths) > 1 else 0
        held = set(order[:count])
        episodes = [load_episode(p) for p in paths]
        train.append(tuple(ep for i, ep in enumerate(episodes) if i not in held))
        holdout.append(tuple(ep for i, ep in enumerate(episodes) if i in held))
        logger.info("%s: %d training and %d held-out episodes", folder, len(train[-1]), len(holdout[-1]))
    return EpisodeSplit(tuple(train), tuple(holdout), tuple(Path(f) for f in folders))
