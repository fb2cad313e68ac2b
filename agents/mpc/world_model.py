"""The world model as MPC dynamics: :class:`WorldModelDynamics` speaks native actions over the engine.

:class:`~astra_gym.rollout.engine.WorldModelRollout` takes model action rows ([B, F, d] command
features); planners sample native actions (the env's action space). This module converts, exactly
like the envs do (:func:`astra_gym.envs.spaces.action_rows`, the action held for the whole chunk),
and builds the context rows of real frames for :meth:`WorldModelRollout.reset`.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, Literal

import numpy as np
import torch

from astra_gym.data.action_codecs import align_to_latents
from astra_gym.envs.core import load_world_model
from astra_gym.envs.spaces import action_rows
from astra_gym.rollout.engine import WorldModelRollout
from astra_gym.rollout.state import RolloutState
from astra_gym.utils.device import resolve_device, resolve_dtype

__all__ = ["WorldModelDynamics", "load_engine"]


def load_engine(
    checkpoint: Any,
    scenario: str,
    device: str | torch.device = "auto",
    dtype: str | torch.dtype | None = None,
    **overrides: Any,
) -> WorldModelRollout:
    """The rollout engine of ``checkpoint`` for ``scenario`` (model cached per process, like the envs).

    Args:
        checkpoint: As the envs' ``checkpoint`` kwarg (``"debug"``, a bundle name or folder, ...).
        scenario: ``"drive"``, ``"manipulation"`` or ``"explore"``.
        device, dtype: Where and in which compute dtype to run.
        **overrides: Rollout settings (``num_denoise_steps``, ``guidance_scale``, ``chunk_latents``).
    """
    bundle = load_world_model(checkpoint, scenario, device, dtype)
    where = bundle.rollout.device
    compute = resolve_dtype(dtype, resolve_device(where))
    overrides = {k: v for k, v in overrides.items() if v is not None}
    return bundle.engine(**overrides, device=where, dtype=compute)


class WorldModelDynamics:
    """:class:`~astra_gym.agents.mpc.planner.Dynamics` over a :class:`WorldModelRollout`.

    Args:
        engine: The rollout engine (with a reward model).
        scenario: Fixes how native actions become model rows.
        noise: How forked candidates draw their denoising noise: ``"shared"`` (common random
            numbers: candidates differ only by their actions, the better comparison) or
            ``"independent"`` (see :meth:`WorldModelRollout.fork`).
    """

    def __init__(
        self, engine: WorldModelRollout, scenario: str, noise: Literal["shared", "independent"] = "shared"
    ) -> None:
        if engine.reward_model is None:
            raise ValueError(
                "MPC scores candidates with the reward model, but this engine has none; load a bundle with a "
                "reward model (the bundled variants and checkpoint='debug' have one)"
            )
        self.engine = engine
        self.scenario = scenario
        self.noise = noise

    def rows(self, actions: np.ndarray) -> np.ndarray:
        """Native actions [B, *shape] -> held model rows [B, F, d] (F = chunk latents)."""
        rows = action_rows(self.scenario, np.asarray(actions, np.float64), self.engine.action_dim)
        return np.repeat(rows[:, None], self.engine.config.chunk_latents, axis=1)

    def fork(self, state: RolloutState, n: int) -> RolloutState:
        """n copies of every row (``noise`` as configured)."""
        return self.engine.fork(state, n, noise=self.noise)

    def step(self, state: RolloutState, actions: np.ndarray) -> RolloutState:
        """One chunk of every row under native ``actions`` (the frames stay in the state)."""
        return self.engine.step(state, self.rows(actions))[0]

    def score(self, state: RolloutState, actions: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """(reward [B], termination logit [B]) as float64 numpy."""
        reward, logit = self.engine.score(state, self.rows(actions))
        return reward.double().cpu().numpy(), logit.double().cpu().numpy()

    def encode(self, frames: np.ndarray, actions: Sequence[np.ndarray | None], seed: int) -> RolloutState:
        """A batch-1 state from real frames (the newest context the VAE can encode whole).

        Args:
            frames: uint8 [T, H, W, 3] real frames, oldest first.
            actions: T entries: the native action that produced each frame (None where unknown,
                e.g. the reset frame; unknown actions become zero rows, as in the envs).
            seed: Seeds the state's noise generator.
        """
        tf = self.engine.temporal_factor
        usable = 1 + (len(frames) - 1) // tf * tf  # whole latents: 1 + k * tf frames
        frames, actions = frames[len(frames) - usable :], list(actions)[len(actions) - usable :]
        rows = np.zeros((usable - 1, self.engine.action_dim), np.float32)
        for k, action in enumerate(actions[1:]):
            if action is not None:
                rows[k] = action_rows(self.scenario, np.asarray(action, np.float64)[None], self.engine.action_dim)[0]
        context_rows = align_to_latents(rows, tf, "exact", "mean")  # [L, d], row 0 null
        return self.engine.reset(frames[None], [seed], context_actions=context_rows[None])
