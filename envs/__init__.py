"""Gymnasium environments backed by the Astra world model (installed as ``astra_gym.envs``).

Importing this package registers every variant of :data:`variants.VARIANTS` with string entry
points, so it stays light (no torch import); the env classes load on first use::

    import gymnasium as gym
    import astra_gym  # registers the ids

    env = gym.make("Astra-Debug-v0")                    # AstraEnv, batch 1
    envs = gym.make_vec("Astra-Debug-v0", num_envs=8)   # AstraVectorEnv: one batched denoise per step

See ``envs/README.md`` for the variant table.
"""

from __future__ import annotations

from typing import Any

import gymnasium as gym

from astra_gym.envs.variants import ENTRY_POINT, VARIANTS, VECTOR_ENTRY_POINT

__all__ = ["AstraEnv", "AstraVectorEnv", "register_variants", "VARIANTS"]


def register_variants() -> None:
    """Registers every variant not registered yet (idempotent; safe on re-import)."""
    for spec in VARIANTS.values():
        if spec.id in gym.registry:
            continue
        gym.register(
            id=spec.id,
            entry_point=ENTRY_POINT,
            vector_entry_point=VECTOR_ENTRY_POINT,
            max_episode_steps=spec.max_episode_steps,
            kwargs=spec.kwargs,
        )


register_variants()


def __getattr__(name: str) -> Any:
    """Lazy access to the env classes (importing them imports torch)."""
    if name == "AstraEnv":
        from astra_gym.envs.env import AstraEnv

        return AstraEnv
    if name == "AstraVectorEnv":
        from astra_gym.envs.vector_env import AstraVectorEnv

        return AstraVectorEnv
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
