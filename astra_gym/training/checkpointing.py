"""Resumable training state: atomic checkpoint folders, EMA weights and counter-based RNG.

A training checkpoint is one folder, written atomically (temp sibling, fsync, rename)::

    <run>/checkpoints/step_00001000/
        model/              save_pretrained folder (loads with checkpoints.load_pretrained; the raw weights)
        ema.safetensors     EMA shadow of the trainable parameters (if EMA is on)
        trainer_state.pt    optimizer, LR scheduler, global torch RNG states, step, samples seen
        meta.json           step, wall time, the training config (written last)

Every ``step_*`` folder is complete: a crash leaves at most a hidden ``.step_*.tmp-*`` folder,
removed by the next save. :func:`latest_checkpoint` finds the newest one.

Randomness is counter-based: every generator a training step uses is derived from
``(seed, stream, step, rank)`` by :func:`step_generator`. The data order and every noise draw of
step k therefore depend on nothing but the seed and k, so the step number *is* the complete
RNG state and data position, and a resumed run replays exactly the draws of an uninterrupted one.
The global torch RNG states are saved and restored as well, for any third-party code that uses them.
"""

from __future__ import annotations

import json
import logging
import os
import re
import shutil
import time
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from safetensors.torch import load_file, save_file
from torch import Tensor, nn

from astra_gym.utils.atomic import atomic_folder, atomic_write_text
from astra_gym.world_model.checkpoints import save_pretrained

__all__ = [
    "STREAMS",
    "step_generator",
    "ExponentialMovingAverage",
    "write_json_atomic",
    "TrainingState",
    "checkpoint_folder",
    "save_training_checkpoint",
    "load_training_checkpoint",
    "latest_checkpoint",
    "prune_checkpoints",
]

logger = logging.getLogger(__name__)

# Independent random streams of a training step (the ids are part of the derivation).
STREAMS: dict[str, int] = {"data": 0, "noise": 1, "preview": 2, "init": 3, "split": 4}
_STEP_DIR = re.compile(r"^step_(\d{8})$")


def step_generator(seed: int, stream: str, step: int, index: int = 0) -> torch.Generator:
    """A CPU generator derived from ``(seed, stream, step, index)`` only (counter-based RNG).

    Args:
        seed: The run's ``--seed``.
        stream: A name of :data:`STREAMS` (``"data"``: window choice; ``"noise"``: history noise,
            action dropout, timesteps, target noise; ...).
        step: Training step (or any counter) the draws belong to.
        index: A further counter (e.g. the dataset of a preview). Data-parallel ranks share the
            step's generator and keep their rows of the global draws (``steps.draw_share``).

    Returns:
        A freshly seeded ``torch.Generator`` on the CPU.
    """
    if stream not in STREAMS:
        raise ValueError(f"unknown random stream {stream!r}; choose one of {sorted(STREAMS)}")
    words = np.random.SeedSequence([seed, STREAMS[stream], step, index]).generate_state(2, np.uint32)
    generator = torch.Generator()
    generator.manual_seed((int(words[0]) | int(words[1]) << 32) & (2**63 - 1))
    return generator


# ---------------------------------------------------------------------------------------------
# EMA
# ---------------------------------------------------------------------------------------------


class ExponentialMovingAverage:
    """Float32 EMA of a model's trainable parameters, with the usual warm-up of the decay.

    ``decay_k = min(decay, (1 + k) / (10 + k))`` at update k, so early averages are not dominated
    by the random initialisation.

    Args:
        model: The model whose ``requires_grad`` parameters are tracked (by name).
        decay: Asymptotic decay (e.g. 0.999).
    """

    def __init__(self, model: nn.Module, decay: float) -> None:
        if not 0.0 < decay < 1.0:
            raise ValueError(f"EMA decay={decay} must be in (0, 1)")
        self.decay = decay
        self.num_updates = 0
        self.shadow: dict[str, Tensor] = {
            name: p.detach().float().clone() for name, p in model.named_parameters() if p.requires_grad
        }

    @torch.no_grad()
    def update(self, model: nn.Module) -> None:
        """Moves the shadow towards the model's current trainable parameters."""
        decay = min(self.decay, (1 + self.num_updates) / (10 + self.num_updates))
        for name, p in model.named_parameters():
            if name in self.shadow:
                self.shadow[name].lerp_(p.detach().float(), 1.0 - decay)
        self.num_updates += 1

    @torch.no_grad()
    def copy_to(self, model: nn.Module) -> None:
        """Writes the shadow into ``model``'s parameters (e.g. a copy to export)."""
        params = dict(model.named_parameters())
        missing = sorted(set(self.shadow) - set(params))
        if missing:
            raise ValueError(f"the model has no parameters {missing[:5]}... tracked by this EMA; wrong model")
        for name, value in self.shadow.items():
            params[name].copy_(value.to(params[name].dtype))

    def state_dict(self) -> dict[str, Tensor]:
        """Shadow tensors plus ``__num_updates__`` (a 0-d int64 tensor), for safetensors."""
        shadow = {name: value.detach().cpu() for name, value in self.shadow.items()}
        return {**shadow, "__num_updates__": torch.tensor(self.num_updates, dtype=torch.int64)}

    def load_state_dict(self, state: Mapping[str, Tensor]) -> None:
        """Inverse of :meth:`state_dict`; the tracked names must match."""
        state = dict(state)
        self.num_updates = int(state.pop("__num_updates__"))
        if set(state) != set(self.shadow):
            diff = sorted(set(state) ^ set(self.shadow))
            raise ValueError(f"EMA state does not match the trainable parameters (differences: {diff[:5]}...)")
        for name, value in state.items():
            self.shadow[name].copy_(value)


# ---------------------------------------------------------------------------------------------
# Atomic writes
# ---------------------------------------------------------------------------------------------


def write_json_atomic(path: str | os.PathLike, data: Any) -> None:
    """Writes ``data`` as indented JSON (no NaN), atomically."""
    atomic_write_text(path, json.dumps(data, indent=2, sort_keys=True, allow_nan=False))


# ---------------------------------------------------------------------------------------------
# Training checkpoints
# ---------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class TrainingState:
    """What a checkpoint restores besides module/optimizer contents.

    Attributes:
        step: Optimizer steps completed.
        samples_seen: Training samples consumed (all processes).
        folder: The checkpoint folder it was read from.
        meta: The checkpoint's ``meta.json``.
    """

    step: int
    samples_seen: int
    folder: Path
    meta: dict[str, Any]


def checkpoint_folder(run_dir: str | os.PathLike, step: int) -> Path:
    """``<run_dir>/checkpoints/step_{step:08d}``."""
    return Path(run_dir) / "checkpoints" / f"step_{step:08d}"


def save_training_checkpoint(
    folder: str | os.PathLike,
    *,
    model: nn.Module,
    optimizer: torch.optim.Optimizer,
    scheduler: Any,
    ema: ExponentialMovingAverage | None,
    step: int,
    samples_seen: int,
    config: Mapping[str, Any],
    extra_config: Mapping[str, Any],
) -> Path:
    """Writes a complete, resumable checkpoint folder atomically (layout in the module docstring).

    Args:
        folder: Target folder (replaced as a whole).
        model: The unwrapped model (an :class:`~astra_gym.world_model.transformer.AstraTransformer`).
        optimizer: Its optimizer.
        scheduler: LR scheduler with ``state_dict``.
        ema: EMA of the trainable parameters, or None.
        step: Optimizer steps completed.
        samples_seen: Training samples consumed.
        config: JSON form of the training config (stored in ``meta.json``).
        extra_config: Metadata of the model folder (what an env needs; see ``save_pretrained``).

    Returns:
        The absolute checkpoint folder.
    """
    folder = Path(folder).absolute()
    with atomic_folder(folder) as tmp:
        save_pretrained(model, tmp / "model", dict(extra_config))
        if ema is not None:
            save_file(ema.state_dict(), str(tmp / "ema.safetensors"))
        torch.save(
            {
                "optimizer": optimizer.state_dict(),
                "scheduler": scheduler.state_dict(),
                "torch_rng": torch.get_rng_state(),
                "cuda_rng": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else [],
                "step": step,
                "samples_seen": samples_seen,
            },
            tmp / "trainer_state.pt",
        )
        meta = {"step": step, "samples_seen": samples_seen, "saved_at": time.time(), "config": dict(config)}
        (tmp / "meta.json").write_text(json.dumps(meta, indent=2, sort_keys=True), encoding="utf-8")
    logger.info("saved training checkpoint %s", folder)
    return folder


def load_training_checkpoint(
    folder: str | os.PathLike,
    *,
    model: nn.Module,
    optimizer: torch.optim.Optimizer,
    scheduler: Any,
    ema: ExponentialMovingAverage | None,
) -> TrainingState:
    """Restores model, optimizer, scheduler, EMA and global RNG states in place.

    Args:
        folder: A folder written by :func:`save_training_checkpoint`.
        model: The unwrapped model, built with the same config.
        optimizer: Its optimizer, built over the same parameters.
        scheduler: Its LR scheduler.
        ema: The EMA to restore (must be None exactly when the checkpoint has none).

    Returns:
        The step and sample count to continue from.
    """
    folder = Path(folder)
    if not (folder / "meta.json").is_file():
        raise FileNotFoundError(
            f"{folder} is not a training checkpoint (no meta.json); pass a checkpoints/step_* folder or the run dir"
        )
    model.load_state_dict(load_file(str(folder / "model" / "model.safetensors")), strict=True)
    state = torch.load(folder / "trainer_state.pt", map_location="cpu", weights_only=True)
    optimizer.load_state_dict(state["optimizer"])
    scheduler.load_state_dict(state["scheduler"])
    torch.set_rng_state(state["torch_rng"])
    if state["cuda_rng"] and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda_rng"])
    ema_file = folder / "ema.safetensors"
    if (ema is None) != (not ema_file.is_file()):
        raise ValueError(
            f"{folder}: EMA {'missing' if ema is not None else 'present'} in the checkpoint but "
            f"{'on' if ema is not None else 'off'} in this run; resume with the same --ema-decay setting"
        )
    if ema is not None:
        ema.load_state_dict(load_file(str(ema_file)))
    meta = json.loads((folder / "meta.json").read_text(encoding="utf-8"))
    return TrainingState(int(state["step"]), int(state["samples_seen"]), folder, meta)


def _step_folders(run_dir: Path) -> list[tuple[int, Path]]:
    root = run_dir / "checkpoints"
    if not root.is_dir():
        return []
    found = []
    for path in root.iterdir():
        match = _STEP_DIR.match(path.name)
        if match and (path / "meta.json").is_file():
            found.append((int(match.group(1)), path))
    return sorted(found)


def latest_checkpoint(run_dir: str | os.PathLike) -> Path | None:
    """The newest complete ``step_*`` folder of a run, or None."""
    found = _step_folders(Path(run_dir))
    return found[-1][1] if found else None


def prune_checkpoints(run_dir: str | os.PathLike, keep: int, protect: Iterable[Path] = ()) -> None:
    """Deletes all but the newest ``keep`` step folders (never those in ``protect``)."""
    if keep < 1:
        return
    protected = {Path(p).absolute() for p in protect}
    for _, path in _step_folders(Path(run_dir))[:-keep]:
        if path.absolute() not in protected:
            shutil.rmtree(path, ignore_errors=True)
