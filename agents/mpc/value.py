"""A learned value at the planning horizon: the critic of an agent trained inside the world model.

Imagined rewards over a short horizon cannot see what comes after it. In CarRacing, 12 imagined
steps do not show that a car leaving the road at speed will be lost on the grass and drive out of
the playfield (-100); a critic trained on long imagined episodes does. With a value ``V``,
:func:`~astra_gym.agents.mpc.planner.imagine_returns` scores a candidate as (TD-MPC, Hansen et al.
2022; MuZero's bootstrapped search)::

    sum_t  gamma^t alive_t r_t  +  gamma^H alive_H V(frame_H)

:class:`SB3Value` reads ``V`` from a Stable-Baselines3 actor-critic (the ``train_sb3`` output) on
the same 64x64 frames the agent saw while training.
"""

from __future__ import annotations

import os

import numpy as np
import torch

__all__ = ["SB3Value"]


class SB3Value:
    """The value head of a saved SB3 actor-critic (PPO, A2C) as ``frames -> V``.

    Args:
        path: A ``train_sb3`` model zip (e.g. ``runs/sb3/<run>/final_model.zip``).
        device: Where the critic runs.
    """

    def __init__(self, path: str | os.PathLike, device: str | torch.device = "cpu") -> None:
        from stable_baselines3 import A2C, PPO

        errors = []
        for algo in (PPO, A2C):
            try:
                self.model = algo.load(str(path), device=device)
                break
            except (ValueError, KeyError, TypeError) as err:  # the zip holds the other algorithm
                errors.append(f"{algo.__name__}: {err}")
        else:
            raise ValueError(f"{path} is not a PPO or A2C model saved by train_sb3 ({'; '.join(errors)})")
        self.gamma = float(self.model.gamma)

    @torch.no_grad()
    def __call__(self, frames: np.ndarray) -> np.ndarray:
        """float64 [B] values of uint8 [B, H, W, 3] frames."""
        from stable_baselines3.common.preprocessing import maybe_transpose

        policy = self.model.policy
        obs, _ = policy.obs_to_tensor(maybe_transpose(np.asarray(frames), policy.observation_space))
        return policy.predict_values(obs).flatten().double().cpu().numpy()
