"""The registered variants: one frozen :class:`VariantSpec` per Gymnasium id (data, not code paths).

Variants differ only by constructor kwargs. This module imports nothing heavy, so registering
them (``import astra_gym``) never imports torch. The user-facing table, with version history,
is ``envs/README.md``.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

__all__ = [
    "VariantSpec",
    "VARIANTS",
    "ENTRY_POINT",
    "VECTOR_ENTRY_POINT",
    "BUNDLED_MODEL",
    "DRIVE_MODEL",
    "MANIPULATION_MODEL",
    "variant",
]

ENTRY_POINT = "astra_gym.envs.env:AstraEnv"
# The multi-scenario model bundle of the real variants (astra_gym/assets/models/<name>/).
BUNDLED_MODEL = "small-v0"
# Drive's own model: the 4x "detail" VAE keeps the ego car and the dashboard (see its MODEL_CARD).
DRIVE_MODEL = "drive-v5"
# Manipulation's own model: front camera, a reader that predicts the poses (the first model under which MPC
# beats standing still in the real FetchPush; see its MODEL_CARD).
MANIPULATION_MODEL = "manip-v5"
VECTOR_ENTRY_POINT = "astra_gym.envs.vector_env:AstraVectorEnv"


@dataclass(frozen=True)
class VariantSpec:
    """One registered id and the kwargs it passes to ``AstraEnv`` / ``AstraVectorEnv``.

    Attributes:
        id: Gymnasium id (``Name-vN``; bump N whenever dynamics, reward, obs or actions change).
        scenario: ``"drive"``, ``"manipulation"`` or ``"explore"``: fixes the action space, the
            action rows and the reward model's inputs.
        checkpoint: Default world model: a bundle name under ``astra_gym/assets/models/`` or ``"debug"``.
        frame_bank: Default start contexts: a bundled bank name or ``"synthetic"``.
        max_episode_steps: Truncation length (the simulator's own episode length in env steps).
        render_fps: Playback rate of the frames (the simulator's recorded fps).
        extra_kwargs: Further constructor kwargs.
    """

    id: str
    scenario: str
    checkpoint: str
    frame_bank: str
    max_episode_steps: int
    render_fps: float
    extra_kwargs: dict[str, Any] = field(default_factory=dict)

    @property
    def kwargs(self) -> dict[str, Any]:
        """Constructor kwargs registered with the id."""
        base = {"scenario": self.scenario, "checkpoint": self.checkpoint, "frame_bank": self.frame_bank}
        return {**base, "render_fps": self.render_fps, **self.extra_kwargs}


VARIANTS: dict[str, VariantSpec] = {
    spec.id: spec
    for spec in (
        # CarRacing-v3: 1000 physics steps at frame skip 2. bf16 compute where the device has it in
        # hardware ("fast"; float32 elsewhere: emulated bf16 is 15x slower per env frame on an AVX2-only
        # CPU) and the fast CPU kernels: on an AVX512-BF16 CPU 2.2x the env frames/s of float32 at 16
        # envs with the same action following, PSNR and car presence (benchmarks/RESULTS.md);
        # dtype="float32", batch_invariant=True is the exact path.
        VariantSpec(
            "Astra-Drive-v0",
            "drive",
            DRIVE_MODEL,
            "drive",
            max_episode_steps=500,
            render_fps=25.0,
            extra_kwargs={"dtype": "fast", "batch_invariant": False},
        ),
        # FetchPush-v4: 50 steps.
        VariantSpec("Astra-Manipulation-v0", "manipulation", MANIPULATION_MODEL, "manipulation", 50, 25.0),
        # ViZDoom my_way_home: 2100 tics at frame skip 4.
        VariantSpec("Astra-Explore-v0", "explore", BUNDLED_MODEL, "explore", 525, 8.75),
        # Tests and docs: tiny random model, synthetic start frames, driving actions.
        VariantSpec("Astra-Debug-v0", "drive", "debug", "synthetic", 200, 25.0, {"device": "cpu"}),
    )
}


def variant(env_id: str) -> VariantSpec:
    """The spec of a registered id; raises a ValueError listing the ids if unknown."""
    try:
        return VARIANTS[env_id]
    except KeyError:
        raise ValueError(f"unknown astra-gym variant {env_id!r}; registered: {sorted(VARIANTS)}") from None


def _models_root() -> Path:
    """``astra_gym/assets/models/`` inside the installed package."""
    import astra_gym

    return Path(astra_gym.__file__).resolve().parent / "assets" / "models"


def bundled_model_path(name: str) -> Path:
    """``astra_gym/assets/models/<name>/`` inside the installed package."""
    return _models_root() / name


def bundle_folder(name_or_path: str | os.PathLike) -> Path:
    """A model folder: ``name_or_path`` itself when it exists, else the bundled model of that name."""
    path = Path(name_or_path)
    return path if path.exists() else bundled_model_path(str(name_or_path))


def installed_bundles() -> list[str]:
    """Names of the bundled models installed in ``astra_gym/assets/models`` (folders with a bundle.json)."""
    return sorted(p.parent.name for p in _models_root().glob("*/bundle.json"))
