"""``AstraEnv``: one world-model episode as a ``gymnasium.Env`` (a batch-1 shell over the engine)."""

from __future__ import annotations

import copy
import os
from dataclasses import dataclass
from typing import Any

import gymnasium as gym
import numpy as np
import torch

from astra_gym.envs.core import ENV_KWARGS, EnvCore, reject_unknown_kwargs
from astra_gym.envs.frame_bank import FrameBank
from astra_gym.rollout.engine import WorldModelRollout
from astra_gym.rollout.state import RolloutState

__all__ = ["AstraEnv", "EnvSnapshot", "show_human"]

_KWARGS = ENV_KWARGS


def show_human(frame: np.ndarray, title: str, fps: float) -> None:
    """Shows a frame for ``render_mode="human"`` in the shared window of ``astra_gym.envs.render``.

    Without a display it shows nothing and warns once (what to do instead), as Gymnasium's own
    pygame envs do headless, so the env keeps working (and ``check_env`` passes).
    """
    from astra_gym.envs.render import DisplayUnavailableError, show_frame

    try:
        show_frame(frame, title, fps=fps)
    except DisplayUnavailableError as error:  # the same message warns once (Python's default filter)
        gym.logger.warn(f"render_mode='human' shows nothing here: {error}")


@dataclass(frozen=True, eq=False)
class EnvSnapshot:
    """Everything :meth:`AstraEnv.set_state` needs to continue an episode exactly.

    Attributes:
        rollout: Deep copy of the rollout state (history, generator states, VAE stream, counters).
        np_random_state: State of the env's numpy generator (used by the next reset).
        observation: The last observation, uint8 [H, W, 3].
        elapsed_steps: Steps since the last reset.
        terminated: Whether the episode has terminated.
    """

    rollout: RolloutState
    np_random_state: dict
    observation: np.ndarray
    elapsed_steps: int
    terminated: bool


class AstraEnv(gym.Env):
    """An imagined episode of a simulator, generated frame by frame by the Astra world model.

    ## Description

    The world model (a flow-matching video diffusion transformer conditioned on actions, arXiv
    2512.08931) continues a start clip chunk by chunk: each ``step`` denoises the next chunk of
    latents given the FramePack history and the action, decodes it to frames, and a learned
    reward model scores it. This class is a batch-1 shell over
    :class:`~astra_gym.rollout.engine.WorldModelRollout`; :class:`~astra_gym.envs.vector_env.AstraVectorEnv`
    runs N of them in one batched denoise and is what ``gym.make_vec`` returns.

    ## Action Space

    The simulator's own (``envs/spaces.py``): drive ``Box([-1, 0, 0], [1, 1, 1], float32)`` (steer,
    gas, brake), manipulation ``Box(-1, 1, (4,), float32)`` (dx, dy, dz, gripper), explore
    ``MultiBinary(6)`` (ViZDoom buttons). The action is held for the whole chunk. Out-of-space,
    wrongly shaped, non-numeric or non-finite actions raise a ``ValueError`` naming the bound and
    the fix (Gymnasium: they are the caller's error); the env stays usable.

    ## Observation Space

    ``Box(0, 255, (64, 64, 3), uint8)``: the last frame of the new chunk. All frames of the chunk
    (oldest first) are in ``info["frames"]`` (uint8 [frames_per_step, 64, 64, 3]).

    ## Timeline

    With our per-frame VAE and one latent per step (``frames_per_step=1``), a context of T frames:

    | env call | latent index | history packed (FramePack)  | new chunk (denoised) | action row used  | obs       |
    |----------|--------------|-----------------------------|----------------------|------------------|-----------|
    | reset    | 0 .. T-1     | -                           | - (frames encoded)   | context / null   | frame T-1 |
    | step 1   | T            | 0 .. T-1                    | latent T             | action of step 1 | frame T   |
    | step k   | T + k - 1    | start 0 + last 19 (4x/2x/1x)| latent T + k - 1     | action of step k | its frame |

    The start token stays at most 30 latents before the new chunk (``max_start_distance``), so
    arbitrarily long episodes stay within the temporal positions the model was trained on.
    With a Wan-style VAE (temporal factor 4) a step returns 4 frames per latent.

    ## Rewards

    ``reward_model(last frame, action row)`` (:class:`~astra_gym.world_model.reward_model.RewardModel`),
    trained to regress the simulator's reward, or the reward of the ``task`` kwarg (a dense task of
    :mod:`astra_gym.data.tasks`, e.g. Manipulation ``"progress"``) when the bundle holds one for it.
    ``info["termination_prob"]`` is its termination probability. With ``uncertainty_penalty`` λ > 0
    the reward loses λ times the world model's disagreement at the step (two draws of the same step,
    :meth:`~astra_gym.rollout.engine.WorldModelRollout.disagreement`; ``info["model_spread"]``), so
    agents trained inside keep away from states and actions the model has not learned (MOPO's
    penalty); it costs one more sampling pass per step.

    With ``rest_baseline=True`` (Manipulation and Explore, whose do-nothing command leaves the scene
    still) the reward is the step's minus what the same step would have earned with that command
    (the arm kept in place, no button), drawn on the same noise: a difference reward against a
    counterfactual default action. In the real simulator that rest step changes nothing, so the
    two agree; inside, whatever the model imagines whatever the action (the goal marker and the
    block fading and drifting under a still arm, which the potential reads as progress) cancels.
    Standing still earns exactly 0. It costs one more sampling pass, decode and reward read per step.

    ## Starting State

    A context from the variant's frame bank (real simulator frames; ``info["bank_index"]`` and
    ``info["sim_seed"]`` identify it, so the real simulator can be put in the same state), chosen
    with the env's ``np_random``; or the caller's frames: ``reset(options={"frames": uint8 [T, H,
    W, 3]})`` or ``reset(options={"image": path_or_uint8_array})`` (resized to 64x64). With
    ``options["actions"]`` (the T - 1 native actions between the T frames) the model also sees
    how the context was driven, as it does for bank contexts; without it those rows are the null action.

    ## Episode End

    * Termination: the reward model's termination probability exceeds 0.5. Stepping a terminated
      episode raises ``gymnasium.error.ResetNeeded``.
    * Truncation: ``max_episode_steps`` of the registration (``gym.make`` adds ``TimeLimit``).

    ## Arguments

    | kwarg               | default              | meaning                                                          |
    |---------------------|----------------------|------------------------------------------------------------------|
    | ``scenario``        | variant              | ``"drive"``, ``"manipulation"`` or ``"explore"``                 |
    | ``checkpoint``      | variant              | bundled name, bundle folder, ``"debug"``, release dict (core.py) |
    | ``frame_bank``      | variant              | bundled bank name, npz path, ``"synthetic"`` or a ``FrameBank``. |
    |                     |                      | A checkpoint that carries its own contexts (``bundle             |
    |                     |                      | --frame-bank``) uses them in place of a bundled bank name. The   |
    |                     |                      | bank must be recorded with the model's simulator settings        |
    |                     |                      | (e.g. its FetchPush camera), else a ValueError names the fix     |
    | ``num_denoise_steps`` | the checkpoint's   | Euler steps per chunk                                            |
    | ``guidance_scale``  | the checkpoint's     | action-free guidance scale (1 = off)                             |
    | ``frames_per_step`` | the checkpoint's     | latents generated per step (chunk size)                          |
    | ``device``          | ``"auto"``           | ``"cpu"``, ``"cuda[:N]"`` or ``"auto"``                          |
    | ``dtype``           | ``None`` (auto)      | compute dtype: float32 on CPU, bf16 on capable GPUs              |
    | ``batch_invariant`` | ``None`` (True)      | CPU: a batch of N rows equals N batch-1 envs bit for bit; False  |
    |                     |                      | is faster (about 1.5x at 16 envs) with rows that differ in the   |
    |                     |                      | last bits from batch-1 ones (still deterministic for a given N)  |
    | ``task``            | ``None``             | agent task whose reward model scores the steps (e.g.             |
    |                     |                      | ``"progress"``; ``astra_gym.data.tasks``); None = the simulator's |
    |                     |                      | own reward. The bundle must hold a reward model for it           |
    | ``uncertainty_penalty`` | ``0.0`` (off)    | λ: the reward loses λ x the model's disagreement (see Rewards)   |
    | ``rest_baseline``   | ``False``            | the reward is the step's minus the do-nothing command's on the   |
    |                     |                      | same noise (Manipulation, Explore; see Rewards)                  |
    | ``render_mode``     | ``None``             | ``"rgb_array"`` (the last frame) or ``"human"``                  |
    | ``render_fps``      | variant              | playback rate of the frames                                      |
    | ``rollout``         | ``None``             | a ``WorldModelRollout`` to share (replaces the model kwargs)     |

    Any other keyword raises a ``TypeError`` listing these.

    ## State snapshots

    ``snapshot = env.get_state()`` deep-copies the rollout state (FramePack history, generator
    states, VAE stream), the numpy generator and the episode counters; ``env.set_state(snapshot)``
    restores it, so the same actions reproduce the same continuation (MPC branching).

    ## Version History

    * v0: initial release.
    """

    metadata = {"render_modes": ["rgb_array", "human"], "render_fps": 25}

    def __init__(
        self,
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
        **unknown: Any,
    ) -> None:
        reject_unknown_kwargs("AstraEnv", unknown, _KWARGS)
        if render_mode not in (None, *self.metadata["render_modes"]):
            raise ValueError(f"render_mode={render_mode!r} must be None or one of {self.metadata['render_modes']}")
        core_args = (
            scenario,
            checkpoint,
            frame_bank,
            num_denoise_steps,
            guidance_scale,
            frames_per_step,
            device,
            dtype,
        )
        self.core = EnvCore(*core_args, rollout, batch_invariant, task, uncertainty_penalty, rest_baseline)
        # Pickled by reference (see __getstate__) unless built around a caller's engine.
        extra = (task, uncertainty_penalty, rest_baseline)
        self._core_args = (*core_args, None, batch_invariant, *extra) if rollout is None else None
        self.metadata = {**type(self).metadata, "render_fps": render_fps}
        self.render_mode = render_mode
        self.action_space = self.core.action_space
        self.observation_space = self.core.observation_space
        self._state: RolloutState | None = None
        self._obs: np.ndarray | None = None
        self._elapsed = 0
        self._terminated = False

    @property
    def engine(self) -> WorldModelRollout:
        """The rollout engine (shared by every env built from the same checkpoint)."""
        return self.core.engine

    def reset(self, *, seed: int | None = None, options: dict[str, Any] | None = None) -> tuple[np.ndarray, dict]:
        """Starts an episode from a frame-bank context or ``options["frames"]`` / ``options["image"]``.

        Returns:
            (last context frame, info with ``frames`` (the context), ``bank_index``, ``sim_seed``).
        """
        super().reset(seed=seed)
        start = self.core.start([self.np_random], options)
        self._state = self.core.reset_state(start)
        self._obs = start.frames[0, -1].copy()
        self._elapsed, self._terminated = 0, False
        info = {
            "frames": start.frames[0].copy(),
            "bank_index": int(start.bank_index[0]),
            "sim_seed": int(start.sim_seed[0]),
        }
        self._render_human()
        return self._obs.copy(), info

    def step(self, action: Any) -> tuple[np.ndarray, float, bool, bool, dict]:
        """Generates the next chunk for ``action`` (see the class docstring)."""
        if self._state is None:
            raise gym.error.ResetNeeded("call env.reset() before env.step()")
        if self._terminated:
            raise gym.error.ResetNeeded(
                f"the episode terminated after {self._elapsed} steps; call env.reset() before stepping again"
            )
        actions = self.core.check(action, batch=None)
        self._state, out = self.core.advance(self._state, actions)
        self._obs = out.frames[0, -1].copy()
        self._elapsed += 1
        self._terminated = bool(out.terminated[0])
        info = {"frames": out.frames[0], "termination_prob": float(out.termination_prob[0])}
        if out.spread is not None:
            info["model_spread"] = float(out.spread[0])
        self._render_human()
        return self._obs.copy(), float(out.reward[0]), self._terminated, False, info

    def render(self) -> np.ndarray | None:
        """``rgb_array``: the last frame (uint8 [H, W, 3]); ``human``: shows it; None before reset."""
        if self._obs is None:
            return None
        if self.render_mode == "human":
            self._render_human()
            return None
        return self._obs.copy()

    def _render_human(self) -> None:
        if self.render_mode == "human":
            title = self.spec.id if self.spec is not None else "AstraEnv"
            show_human(self._obs, title, self.metadata["render_fps"])

    def close(self) -> None:
        """Closes the human-render window (if this env opened one); safe to call twice."""
        if self.render_mode == "human":
            from astra_gym.envs.render import close_window

            close_window()

    def __getstate__(self) -> dict[str, Any]:
        """Pickles the constructor arguments instead of the weights (a few KB instead of ~60 MB).

        The unpickled env loads its model again (from the bundle, or this process's model cache)
        and continues the same episode: its rollout state, generator and counters travel.
        """
        state = self.__dict__.copy()
        if self._core_args is not None:
            state["core"] = None
        return state

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__dict__.update(state)
        if self.core is None:
            self.core = EnvCore(*self._core_args)

    def get_state(self) -> EnvSnapshot:
        """A deep copy of everything needed to continue this episode (see the class docstring)."""
        if self._state is None:
            raise gym.error.ResetNeeded("call env.reset() before env.get_state()")
        return EnvSnapshot(
            rollout=self._state.clone(),
            np_random_state=copy.deepcopy(self.np_random.bit_generator.state),
            observation=self._obs.copy(),
            elapsed_steps=self._elapsed,
            terminated=self._terminated,
        )

    def set_state(self, snapshot: EnvSnapshot) -> None:
        """Restores a snapshot taken by :meth:`get_state` (of this env or one with the same model)."""
        if not isinstance(snapshot, EnvSnapshot) or snapshot.rollout.batch_size != 1:
            raise ValueError("set_state expects a snapshot returned by AstraEnv.get_state()")
        self._state = snapshot.rollout.clone()
        self.np_random.bit_generator.state = copy.deepcopy(snapshot.np_random_state)
        self._obs = snapshot.observation.copy()
        self._elapsed, self._terminated = snapshot.elapsed_steps, snapshot.terminated
