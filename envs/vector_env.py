"""``AstraVectorEnv``: N world-model episodes in one batched denoise per step (``gymnasium.vector.VectorEnv``)."""

from __future__ import annotations

import os
from typing import Any

import gymnasium as gym
import numpy as np
import torch
from gymnasium.utils import seeding
from gymnasium.vector import AutoresetMode
from gymnasium.vector.utils import batch_space

from astra_gym.envs.core import ENV_KWARGS, EnvCore, StartBatch, StepBatch, reject_unknown_kwargs
from astra_gym.envs.frame_bank import FrameBank
from astra_gym.rollout.engine import WorldModelRollout
from astra_gym.rollout.state import RolloutState

__all__ = ["AstraVectorEnv"]

_KWARGS = ("num_envs", *ENV_KWARGS, "max_episode_steps", "autoreset_mode")


class AstraVectorEnv(gym.vector.VectorEnv):
    """N imagined episodes stepped together: one batched denoise and decode per step.

    Row i is exactly the single env :class:`~astra_gym.envs.env.AstraEnv` seeded with the i-th
    seed: each row has its own numpy generator (start contexts) and its own torch generator
    (noise), the token layout does not depend on the other rows, and on CPU the model runs with
    batch-invariant kernels (float32 rows match bit for bit; on GPU to a tolerance). Everything in
    ``AstraEnv``'s manual (action and observation spaces, timeline, rewards, starting state,
    reset options, arguments) applies per row; this docstring covers what vectorisation adds.

    ## Spaces

    ``action_space`` / ``observation_space`` are the single spaces batched over ``num_envs``:
    observations uint8 [N, 64, 64, 3]; ``info["frames"]`` uint8 [N, frames_per_step, 64, 64, 3]
    with the mask ``info["_frames"]`` (rows that generated a chunk this call).

    ## Autoreset (``metadata["autoreset_mode"]``)

    * ``NEXT_STEP`` (default, Gymnasium's): a row that terminated or truncated is reset by the
      *next* ``step``, whose action for that row is ignored; that call returns the new episode's
      first observation with reward 0 and terminated = truncated = False.
    * ``SAME_STEP``: the row is reset in the step that ended it; the returned observation is the
      new episode's first; the last one is ``info["final_obs"][i]`` (``info["final_info"]`` holds
      its reward-model info), masked by ``info["_final_obs"]``.
    * ``DISABLED``: ending rows stay ended; stepping them raises until the caller resets them with
      ``reset(options={"reset_mask": mask})``.

    Truncation: a row whose episode reaches ``max_episode_steps`` (set by the registration) is
    truncated. Stepping before the first ``reset`` raises ``gymnasium.error.ResetNeeded``.

    ## Partial resets

    ``reset(seed=None, options={"reset_mask": bool [N]})`` resets only the masked rows (their seeds
    from ``seed``: an int s gives row i the seed s + i, a list gives seeds per row); the others
    keep their episodes and observations. ``options["frames"]`` may be one clip [T, H, W, 3] for
    every reset row or one per reset row [n, T, H, W, 3].

    ## Arguments

    ``num_envs``, ``max_episode_steps`` (None = never truncate), ``autoreset_mode`` (an
    ``AutoresetMode`` or its value string), plus every ``AstraEnv`` kwarg except ``render_mode="human"``
    (use ``gymnasium.wrappers.vector.HumanRendering``).

    ## Version History

    * v0: initial release.
    """

    metadata = {"render_modes": ["rgb_array"], "render_fps": 25, "autoreset_mode": AutoresetMode.NEXT_STEP}

    def __init__(
        self,
        num_envs: int = 1,
        scenario: str = "drive",
        checkpoint: Any = "debug",
        frame_bank: str | os.PathLike | FrameBank = "synthetic",
        num_denoise_steps: int | None = None,
        guidance_scale: float | None = None,
        frames_per_step: int | None = None,
        device: str | torch.device = "auto",
        dtype: str | torch.dtype | None = None,
        batch_invariant: bool | None = None,
        task: str | None = None,
        uncertainty_penalty: float = 0.0,
        rest_baseline: bool = False,
        render_mode: str | None = None,
        render_fps: float = 25.0,
        rollout: WorldModelRollout | None = None,
        max_episode_steps: int | None = None,
        autoreset_mode: AutoresetMode | str = AutoresetMode.NEXT_STEP,
        **unknown: Any,
    ) -> None:
        reject_unknown_kwargs("AstraVectorEnv", unknown, _KWARGS)
        if num_envs < 1:
            raise ValueError(f"num_envs={num_envs} must be >= 1")
        if render_mode not in (None, "rgb_array"):
            raise ValueError(
                f"render_mode={render_mode!r}: the vector env renders 'rgb_array' only; wrap it in "
                "gymnasium.wrappers.vector.HumanRendering to show the frames"
            )
        if max_episode_steps is not None and max_episode_steps < 1:
            raise ValueError(f"max_episode_steps={max_episode_steps} must be >= 1 or None")
        self.core = EnvCore(
            scenario,
            checkpoint,
            frame_bank,
            num_denoise_steps,
            guidance_scale,
            frames_per_step,
            device,
            dtype,
            rollout,
            batch_invariant,
            task,
            uncertainty_penalty,
            rest_baseline,
        )
        self.num_envs = num_envs
        self.max_episode_steps = max_episode_steps
        self.render_mode = render_mode
        self.metadata = {
            **type(self).metadata,
            "render_fps": render_fps,
            "autoreset_mode": AutoresetMode(autoreset_mode),
        }
        self.single_action_space = self.core.action_space
        self.single_observation_space = self.core.observation_space
        self.action_space = batch_space(self.single_action_space, num_envs)
        self.observation_space = batch_space(self.single_observation_space, num_envs)
        self._rngs: list[np.random.Generator | None] = [None] * num_envs
        self._state: RolloutState | None = None
        self._obs = np.zeros((num_envs, *self.single_observation_space.shape), np.uint8)
        self._elapsed = np.zeros(num_envs, np.int64)
        self._needs_reset = np.zeros(num_envs, bool)

    @property
    def autoreset_mode(self) -> AutoresetMode:
        """The autoreset mode this env honours."""
        return self.metadata["autoreset_mode"]

    @property
    def engine(self) -> WorldModelRollout:
        """The rollout engine (shared by every env built from the same checkpoint)."""
        return self.core.engine

    # ------------------------------------------------------------------------------------------
    # Reset
    # ------------------------------------------------------------------------------------------

    def reset(
        self, *, seed: int | list[int | None] | None = None, options: dict[str, Any] | None = None
    ) -> tuple[np.ndarray, dict]:
        """Resets every row, or the rows of ``options["reset_mask"]`` (see the class docstring)."""
        options = dict(options or {})
        mask = self._reset_mask(options.pop("reset_mask", None))
        seeds = self._row_seeds(seed)
        rows = np.flatnonzero(mask)
        rngs = [self._row_rng(i, seeds[i]) for i in rows]
        start = self.core.start(rngs, options)  # validates options before drawing from the generators
        for i, rng in zip(rows, rngs, strict=True):
            self._rngs[i] = rng
        self._start_rows(rows, start)
        return self._obs.copy(), self._reset_info(rows, start)

    def _row_rng(self, row: int, seed: int | None) -> np.random.Generator:
        """A new generator from ``seed``, or the row's current one (from OS entropy if it has none)."""
        if seed is None and self._rngs[row] is not None:
            return self._rngs[row]
        return seeding.np_random(seed)[0]

    def _reset_mask(self, mask: Any) -> np.ndarray:
        if mask is None:
            return np.ones(self.num_envs, bool)
        if not isinstance(mask, np.ndarray) or mask.dtype != np.bool_ or mask.shape != (self.num_envs,):
            raise ValueError(
                f"options['reset_mask'] must be a numpy bool array of shape ({self.num_envs},), got {mask!r}"
            )
        if not mask.any():
            raise ValueError("options['reset_mask'] must select at least one env")
        if self._state is None and not mask.all():
            raise gym.error.ResetNeeded("the first reset must reset every env (no reset_mask)")
        return mask

    def _row_seeds(self, seed: int | list[int | None] | None) -> list[int | None]:
        if seed is None:
            return [None] * self.num_envs
        if isinstance(seed, (int, np.integer)):
            return [int(seed) + i for i in range(self.num_envs)]
        seeds = list(seed)
        if len(seeds) != self.num_envs:
            raise ValueError(f"got {len(seeds)} seeds for num_envs={self.num_envs}; pass one int or one seed per env")
        return seeds

    def _start_rows(self, rows: np.ndarray, start: StartBatch) -> None:
        """Begins new episodes in ``rows``."""
        fresh = self.core.reset_state(start)
        if self._state is None or len(rows) == self.num_envs:
            self._state = fresh
        else:
            self._state = self.engine.put(self._state, torch.as_tensor(rows), fresh)
        self._obs[rows] = start.frames[:, -1]
        self._elapsed[rows] = 0
        self._needs_reset[rows] = False

    def _reset_info(self, rows: np.ndarray, start: StartBatch) -> dict:
        info: dict[str, Any] = {}
        for key, values in (("bank_index", start.bank_index), ("sim_seed", start.sim_seed)):
            info[key] = np.full(self.num_envs, -1, np.int64)
            info[key][rows] = values
            info[f"_{key}"] = np.isin(np.arange(self.num_envs), rows)
        return info

    # ------------------------------------------------------------------------------------------
    # Step
    # ------------------------------------------------------------------------------------------

    def step(self, actions: Any) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray, dict]:
        """Steps every row once, honouring ``metadata["autoreset_mode"]`` (see the class docstring)."""
        if self._state is None:
            raise gym.error.ResetNeeded("call envs.reset() before envs.step()")
        values = self.core.check(actions, batch=self.num_envs)
        mode = self.autoreset_mode
        if mode == AutoresetMode.DISABLED and self._needs_reset.any():
            raise gym.error.ResetNeeded(
                f"envs {np.flatnonzero(self._needs_reset).tolist()} ended their episodes and autoreset_mode is "
                "DISABLED; reset them with envs.reset(options={'reset_mask': mask})"
            )
        resetting = self._needs_reset.copy() if mode == AutoresetMode.NEXT_STEP else np.zeros(self.num_envs, bool)
        stepping = ~resetting
        reward = np.zeros(self.num_envs)
        terminated = np.zeros(self.num_envs, bool)
        truncated = np.zeros(self.num_envs, bool)
        info: dict[str, Any] = {}
        if stepping.any():
            out = self._advance(np.flatnonzero(stepping), values[stepping])
            reward[stepping], terminated[stepping] = out.reward, out.terminated
            truncated[stepping] = self._truncated(np.flatnonzero(stepping))
            info = self._step_info(stepping, out)
        if resetting.any():
            info.update(self._autoreset(np.flatnonzero(resetting)))
        ended = terminated | truncated
        self._needs_reset = ended.copy()
        if mode == AutoresetMode.SAME_STEP and ended.any():
            info.update(self._final_info(ended, info))
            info.update(self._autoreset(np.flatnonzero(ended)))
            self._needs_reset[:] = False
        return self._obs.copy(), reward, terminated, truncated, info

    def _advance(self, rows: np.ndarray, actions: np.ndarray) -> StepBatch:
        """Generates the next chunk of ``rows`` (all rows: no select/put copies)."""
        if len(rows) == self.num_envs:
            self._state, out = self.core.advance(self._state, actions)
        else:
            index = torch.as_tensor(rows)
            sub, out = self.core.advance(self.engine.select(self._state, index), actions)
            self._state = self.engine.put(self._state, index, sub)
        self._obs[rows] = out.frames[:, -1]
        self._elapsed[rows] += 1
        return out

    def _truncated(self, rows: np.ndarray) -> np.ndarray:
        if self.max_episode_steps is None:
            return np.zeros(len(rows), bool)
        return self._elapsed[rows] >= self.max_episode_steps

    def _autoreset(self, rows: np.ndarray) -> dict:
        """New episodes (frame-bank contexts, each row's own generator) for ``rows``; returns their info."""
        start = self.core.start([self._rngs[i] for i in rows], None)
        self._start_rows(rows, start)
        return self._reset_info(rows, start)

    def _step_info(self, stepping: np.ndarray, out: StepBatch) -> dict:
        frames = np.zeros((self.num_envs, *out.frames.shape[1:]), np.uint8)
        frames[stepping] = out.frames
        prob = np.zeros(self.num_envs)
        prob[stepping] = out.termination_prob
        info = {
            "frames": frames,
            "_frames": stepping.copy(),
            "termination_prob": prob,
            "_termination_prob": stepping.copy(),
        }
        if out.spread is not None:
            info["model_spread"] = np.zeros(self.num_envs)
            info["model_spread"][stepping] = out.spread
            info["_model_spread"] = stepping.copy()
        return info

    def _final_info(self, ended: np.ndarray, info: dict) -> dict:
        """SAME_STEP: the ended rows' last observation and info, before they are reset."""
        final_obs = np.full(self.num_envs, None, dtype=object)
        final_info = np.full(self.num_envs, None, dtype=object)
        for i in np.flatnonzero(ended):
            final_obs[i] = self._obs[i].copy()
            final_info[i] = {
                "frames": info["frames"][i].copy(),
                "termination_prob": float(info["termination_prob"][i]),
            }
            if "model_spread" in info:
                final_info[i]["model_spread"] = float(info["model_spread"][i])
        return {
            "final_obs": final_obs,
            "_final_obs": ended.copy(),
            "final_info": final_info,
            "_final_info": ended.copy(),
        }

    # ------------------------------------------------------------------------------------------
    # Rendering
    # ------------------------------------------------------------------------------------------

    def render(self) -> tuple[np.ndarray, ...] | None:
        """``rgb_array``: the last frame of every row (a tuple of uint8 [H, W, 3]); else None."""
        if self.render_mode != "rgb_array" or self._state is None:
            return None
        return tuple(frame.copy() for frame in self._obs)
