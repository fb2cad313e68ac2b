"""``AstraSB3VecEnv``: a Stable-Baselines3 ``VecEnv`` over a native batched Gymnasium vector env.

SB3 does not accept ``gymnasium.vector.VectorEnv``; it has its own ``VecEnv`` contract (reset
returns observations only, ``step_wait`` returns ``(obs, rewards, dones, infos)`` with a *list* of
info dicts, and finished envs are reset in the same step, their last observation kept in
``infos[i]["terminal_observation"]`` and ``truncated and not terminated`` in
``infos[i]["TimeLimit.truncated"]``). This adapter translates, without stepping rows one by one::

    import gymnasium as gym
    from stable_baselines3 import PPO
    from astra_gym.agents.sb3_vec_env import AstraSB3VecEnv

    envs = AstraSB3VecEnv.make("Astra-Debug-v0", num_envs=8, max_episode_steps=50)
    model = PPO("CnnPolicy", envs, n_steps=128, batch_size=256).learn(10_000)

It needs the vector env's ``SAME_STEP`` autoreset (``info["final_obs"]`` / ``info["final_info"]``),
which is exactly SB3's same-step convention; :meth:`AstraSB3VecEnv.make` asks for it. Row i then
matches ``DummyVecEnv`` over single envs seeded ``seed + i`` step for step (``tests/agents``).
Observations stay uint8 HWC, so SB3's CNN policies recognise them as images and wrap the env in
``VecTransposeImage`` themselves.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import gymnasium as gym
import numpy as np
from gymnasium.vector import AutoresetMode
from stable_baselines3.common.vec_env import VecEnv
from stable_baselines3.common.vec_env.base_vec_env import VecEnvIndices, VecEnvObs, VecEnvStepReturn

__all__ = ["AstraSB3VecEnv"]

_FINAL_KEYS = ("final_obs", "_final_obs", "final_info", "_final_info")


def _item(value: Any) -> Any:
    """numpy scalars -> Python scalars (what a single env puts in its info); arrays unchanged."""
    return value.item() if isinstance(value, np.generic) else value


def _row_info(info: dict[str, Any], row: int, skip: Sequence[str] = ()) -> dict[str, Any]:
    """Row ``row`` of a Gymnasium vector info dict (keys whose ``_key`` mask selects the row)."""
    out = {}
    for key, values in info.items():
        if key.startswith("_") or key in _FINAL_KEYS or key in skip:
            continue
        mask = info.get(f"_{key}")
        if mask is not None and not mask[row]:
            continue
        out[key] = _item(values[row])
    return out


def _options_equal(first: dict, other: dict) -> bool:
    """Whether two reset-option dicts hold the same keys and (array) values."""
    if first.keys() != other.keys():
        return False
    return all(np.array_equal(np.asarray(first[k]), np.asarray(other[k])) for k in first)


class AstraSB3VecEnv(VecEnv):
    """SB3 ``VecEnv`` view of a Gymnasium vector env with ``SAME_STEP`` autoreset.

    Args:
        venv: The vector env, usually :class:`~astra_gym.envs.vector_env.AstraVectorEnv` from
            ``gym.make_vec(id, num_envs=N, autoreset_mode="SameStep")``. Any Gymnasium vector env
            with ``metadata["autoreset_mode"] == SAME_STEP`` and ``_key`` info masks works
            (``SyncVectorEnv`` included; there, reset-info keys that the final step's info also
            has, such as ``frames``, are left out of ``reset_infos``).

    Attributes:
        venv: The wrapped vector env (stepped once per ``step_wait``).

    Notes:
        * ``seed(s)`` (SB3 semantics) gives row i the seed ``s + i`` at the next ``reset``.
        * ``set_options`` must give every row the same options (they are passed to one batched
          reset); ``options={"frames": ...}`` starts every row from your frames.
        * ``get_attr`` / ``set_attr`` / ``env_method`` act on the one vector env that all rows
          share: ``get_attr(name)`` returns its attribute once per requested row, ``env_method``
          calls the method once and returns its result once per requested row.
        * Rewards are float32 and dones ``terminated | truncated``, as in ``DummyVecEnv``.
    """

    def __init__(self, venv: gym.vector.VectorEnv) -> None:
        mode = venv.metadata.get("autoreset_mode")
        if mode != AutoresetMode.SAME_STEP:
            raise ValueError(
                f"AstraSB3VecEnv needs a vector env with SAME_STEP autoreset (SB3's convention), got {mode!r}; "
                "build it with gym.make_vec(env_id, num_envs=N, autoreset_mode='SameStep') or use "
                "AstraSB3VecEnv.make(env_id, num_envs=N)"
            )
        self.venv = venv
        super().__init__(venv.num_envs, venv.single_observation_space, venv.single_action_space)
        self.metadata = {**venv.metadata, **self.metadata}
        self._actions: np.ndarray | None = None

    @classmethod
    def make(cls, env_id: str, num_envs: int, **kwargs: Any) -> AstraSB3VecEnv:
        """``gym.make_vec(env_id, num_envs, autoreset_mode=SAME_STEP, **kwargs)`` wrapped for SB3.

        Args:
            env_id: A registered id (``import astra_gym`` registers the Astra ids).
            num_envs: Rows N.
            **kwargs: Env constructor kwargs (``checkpoint``, ``max_episode_steps``, ``device``, ...).
        """
        venv = gym.make_vec(env_id, num_envs=num_envs, autoreset_mode=AutoresetMode.SAME_STEP, **kwargs)
        return cls(venv)

    # ---- reset / step ---------------------------------------------------------------------------

    def reset(self) -> VecEnvObs:
        """Resets every row (seeds from :meth:`seed`, options from :meth:`set_options`, used once)."""
        seeds = None if all(s is None for s in self._seeds) else list(self._seeds)
        obs, info = self.venv.reset(seed=seeds, options=self._shared_options())
        self.reset_infos = [_row_info(info, i) for i in range(self.num_envs)]
        self._reset_seeds()
        self._reset_options()
        return obs

    def _shared_options(self) -> dict | None:
        first = self._options[0]
        if not all(_options_equal(first, other) for other in self._options[1:]):
            raise ValueError(
                "AstraSB3VecEnv resets all rows in one batched call, so every row needs the same reset options; "
                "pass one dict to set_options(...) (or reset rows separately on the vector env with "
                "options={'reset_mask': mask})"
            )
        return dict(first) or None

    def step_async(self, actions: np.ndarray) -> None:
        """Stores the actions of the next :meth:`step_wait` (one batched step; nothing runs yet)."""
        self._actions = np.asarray(actions)

    def step_wait(self) -> VecEnvStepReturn:
        """Steps every row once; finished rows are reset in the same call (SB3 convention)."""
        if self._actions is None:
            raise RuntimeError("step_wait() called without step_async(actions); use step(actions)")
        obs, reward, terminated, truncated, info = self.venv.step(self._actions)
        self._actions = None
        dones = terminated | truncated
        infos = [self._step_info(info, i, bool(terminated[i]), bool(truncated[i])) for i in range(self.num_envs)]
        return obs, reward.astype(np.float32), dones, infos

    def _step_info(self, info: dict, row: int, terminated: bool, truncated: bool) -> dict:
        """Row info in SB3's format; for a finished row also refreshes ``reset_infos[row]``."""
        if not (terminated or truncated):
            row_info = _row_info(info, row)
        else:
            final = info["final_info"]  # AstraVectorEnv: object array of dicts; SyncVectorEnv: dict of arrays
            row_info = _row_info(final, row) if isinstance(final, dict) else dict(final[row])
            row_info["terminal_observation"] = info["final_obs"][row]
            self.reset_infos[row] = _row_info(info, row, skip=tuple(row_info))
        row_info["TimeLimit.truncated"] = truncated and not terminated
        return row_info

    # ---- SB3 plumbing ---------------------------------------------------------------------------

    def close(self) -> None:
        """Closes the vector env."""
        self.venv.close()

    def get_images(self) -> Sequence[np.ndarray | None]:
        """The last frame of every row (``render_mode="rgb_array"``), else Nones."""
        if self.render_mode != "rgb_array":
            return [None] * self.num_envs
        return list(self.venv.render())

    def get_attr(self, attr_name: str, indices: VecEnvIndices = None) -> list[Any]:
        """The vector env's attribute, once per requested row (rows share one env)."""
        value = getattr(self.venv, attr_name)
        return [value for _ in self._get_indices(indices)]

    def set_attr(self, attr_name: str, value: Any, indices: VecEnvIndices = None) -> None:
        """Sets an attribute of the shared vector env (affects every row)."""
        setattr(self.venv, attr_name, value)

    def env_method(self, method_name: str, *method_args, indices: VecEnvIndices = None, **method_kwargs) -> list[Any]:
        """Calls a method of the shared vector env once; its result is repeated per requested row."""
        result = getattr(self.venv, method_name)(*method_args, **method_kwargs)
        return [result for _ in self._get_indices(indices)]

    def env_is_wrapped(self, wrapper_class: type[gym.Wrapper], indices: VecEnvIndices = None) -> list[bool]:
        """False for every row: the rows are not single envs behind ``gymnasium.Wrapper`` stacks."""
        return [False for _ in self._get_indices(indices)]
