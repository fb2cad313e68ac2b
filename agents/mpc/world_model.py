"""The world model as MPC dynamics: :class:`WorldModelDynamics` speaks native actions over the engine.

:class:`~astra_gym.rollout.engine.WorldModelRollout` takes model action rows ([B, F, d] command
features); planners sample native actions (the env's action space). This module converts, exactly
like the envs do (:func:`astra_gym.envs.spaces.action_rows`, the action held for the whole chunk),
and builds the context rows of real frames for :meth:`WorldModelRollout.reset`.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any, Literal

import numpy as np
import torch

from astra_gym.agents.mpc.sampling import ActionPrior
from astra_gym.data.action_codecs import align_to_latents
from astra_gym.envs.core import held_rows, load_world_model, rest_reward
from astra_gym.envs.spaces import action_rows, action_space, check_rest_scenario
from astra_gym.rollout.engine import WorldModelRollout
from astra_gym.rollout.state import RolloutState
from astra_gym.utils.device import resolve_device, resolve_dtype

__all__ = ["WorldModelDynamics", "behaviour_prior", "data_prior", "load_engine"]


def load_engine(
    checkpoint: Any,
    scenario: str,
    device: str | torch.device = "auto",
    dtype: str | torch.dtype | None = None,
    task: str | None = None,
    **overrides: Any,
) -> WorldModelRollout:
    """The planning engine of ``checkpoint`` for ``scenario`` (model cached per process, like the envs).

    Planners compare candidates within one batch, so it runs the fast CPU kernels
    (``batch_invariant=False``: about 1.6x the imagined steps/s of the bit-exact ones at 12-16 rows)
    unless ``overrides`` say otherwise.

    Args:
        checkpoint: As the envs' ``checkpoint`` kwarg (``"debug"``, a bundle name or folder, ...).
        scenario: ``"drive"``, ``"manipulation"`` or ``"explore"``.
        device, dtype: Where and in which compute dtype to run.
        task: The agent task whose reward model scores the candidates (the envs' ``task`` kwarg).
        **overrides: Rollout settings (``num_denoise_steps``, ``guidance_scale``, ``chunk_latents``, ...).
    """
    bundle = load_world_model(checkpoint, scenario, device, dtype, task)
    where = bundle.rollout.device
    compute = resolve_dtype(dtype, resolve_device(where))
    overrides = {"batch_invariant": False} | {k: v for k, v in overrides.items() if v is not None}
    return bundle.engine(**overrides, device=where, dtype=compute)


def data_prior(
    checkpoint: Any, scenario: str, device: str | torch.device = "auto", dtype: str | torch.dtype | None = None
) -> ActionPrior | None:
    """:func:`behaviour_prior` of ``checkpoint``'s training data; None where its bundle records no
    action statistics (e.g. ``"debug"``)."""
    stats = load_world_model(checkpoint, scenario, device, dtype).action_stats
    return None if stats is None else behaviour_prior(scenario, stats, len(stats[0]))


def behaviour_prior(scenario: str, stats: tuple[Sequence[float], Sequence[float]], width: int) -> ActionPrior:
    """The actions of a world model's training data as a planner's starting distribution.

    A planner that starts at the centre of the action space searches where the model may never have
    seen data (CarRacing: half gas and half brake at once, so the car never moves). This maps the
    per-column mean and std of the training data's action rows (``WorldModelBundle.action_stats``)
    back to native components, each found by probing which row column it moves (and by how much).

    Args:
        scenario: Fixes the action space and how native actions become rows.
        stats: (mean [width], std [width]) of the training data's action rows.
        width: The model's action width.

    Returns:
        Native means and stds (Box), or press frequencies as ``loc`` (MultiBinary buttons).

    Raises:
        ValueError: A native component moves no or several row columns (no per-component prior).
    """
    space = action_space(scenario)
    mean, std = (np.asarray(values, np.float64) for values in stats)
    zero = np.zeros((1, *space.shape), np.float64)
    base = action_rows(scenario, zero, width)[0]
    loc, scale = np.zeros(space.shape), np.zeros(space.shape)
    for index in np.ndindex(*space.shape):
        unit = zero.copy()
        unit[(0, *index)] = 1.0
        gain = action_rows(scenario, unit, width)[0] - base
        (columns,) = np.nonzero(np.abs(gain) > 1e-9)
        if len(columns) != 1:
            raise ValueError(
                f"{scenario} action component {index} moves row columns {columns.tolist()}: behaviour_prior needs "
                "exactly one column per component; plan from the space's centre instead (prior=None)"
            )
        column = columns[0]
        loc[index] = (mean[column] - base[column]) / gain[column]
        scale[index] = std[column] / abs(gain[column])
    return ActionPrior(loc, scale)


class WorldModelDynamics:
    """:class:`~astra_gym.agents.mpc.planner.Dynamics` over a :class:`WorldModelRollout`.

    Args:
        engine: The rollout engine (with a reward model).
        scenario: Fixes how native actions become model rows.
        noise: How forked candidates draw their denoising noise: ``"shared"`` (common random
            numbers: candidates differ only by their actions, the better comparison) or
            ``"independent"`` (see :meth:`WorldModelRollout.fork`).
        value: ``frames uint8 [B, H, W, 3] -> values [B]`` of the newest imagined frame, added at the
            planning horizon (e.g. :class:`~astra_gym.agents.mpc.value.SB3Value`); None: no value.
        rest_baseline: Score each step minus what the do-nothing command would have earned from the
            same state on the same noise (the envs' ``rest_baseline``; Manipulation and Explore). Each
            :meth:`step` then also imagines that rest step, and :meth:`score` must be given the state
            the last :meth:`step` returned.
    """

    def __init__(
        self,
        engine: WorldModelRollout,
        scenario: str,
        noise: Literal["shared", "independent"] = "shared",
        value: Callable[[np.ndarray], np.ndarray] | None = None,
        rest_baseline: bool = False,
    ) -> None:
        if rest_baseline:
            check_rest_scenario(scenario)
        if engine.reward_model is None:
            raise ValueError(
                "MPC scores candidates with the reward model, but this engine has none; load a bundle with a "
                "reward model (the bundled variants and checkpoint='debug' have one)"
            )
        self.engine = engine
        self.scenario = scenario
        self.noise = noise
        self.value = value
        self.rest_baseline = rest_baseline
        self._rest: tuple[RolloutState, torch.Tensor] | None = None  # (stepped state, rest reward [B])

    def rows(self, actions: np.ndarray) -> np.ndarray:
        """Native actions [B, *shape] -> held model rows [B, F, d] (F = chunk latents)."""
        return held_rows(self.engine, self.scenario, np.asarray(actions, np.float64))

    def fork(self, state: RolloutState, n: int) -> RolloutState:
        """n copies of every row (``noise`` as configured)."""
        return self.engine.fork(state, n, noise=self.noise)

    def step(self, state: RolloutState, actions: np.ndarray) -> RolloutState:
        """One chunk of every row under native ``actions`` (the frames stay in the state)."""
        stepped = self.engine.step(state, self.rows(actions))[0]
        if self.rest_baseline:
            self._rest = stepped, rest_reward(self.engine, self.scenario, state, np.asarray(actions, np.float64))
        return stepped

    def score(self, state: RolloutState, actions: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """(reward [B], termination logit [B]) as float64 numpy."""
        reward, logit = self.engine.score(state, self.rows(actions))
        if self.rest_baseline:
            if self._rest is None or self._rest[0] is not state:
                raise RuntimeError("with rest_baseline, score() takes the state that the last step() returned")
            reward = reward - self._rest[1]
        return reward.double().cpu().numpy(), logit.double().cpu().numpy()

    def terminal_value(self, state: RolloutState) -> np.ndarray:
        """float64 [B] ``value`` of each row's newest frame (zeros without a value)."""
        if self.value is None:
            return np.zeros(state.recent_frames.shape[0])
        return np.asarray(self.value(state.recent_frames[:, -1].cpu().numpy()), np.float64)

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
        context_rows = align_to_latents(rows, tf, "mean")  # [L, d], row 0 null
        return self.engine.reset(frames[None], [seed], context_actions=context_rows[None])
