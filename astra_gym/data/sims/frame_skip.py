"""Action repeat with a simulator step counter, and deterministic warm-up after reset."""

from __future__ import annotations

from typing import Any

import gymnasium as gym

__all__ = ["FrameSkip"]


class FrameSkip(gym.Wrapper):
    """Repeats each action ``frame_skip`` simulator steps and counts simulator steps.

    Rewards of the repeated steps are summed; the repeat stops early at termination or
    truncation. After ``reset`` the wrapped env is advanced ``warmup_steps`` simulator steps
    with ``warmup_action`` (their rewards are discarded), e.g. to skip CarRacing's zoom-in.

    Attributes:
        sim_steps: Simulator steps since the last reset, warm-up included (readable through
            ``env.get_wrapper_attr("sim_steps")``).
        last_obs: The latest observation (``env.get_wrapper_attr("last_obs")``).
    """

    def __init__(self, env: gym.Env, frame_skip: int = 1, warmup_steps: int = 0, warmup_action: Any = None) -> None:
        if frame_skip < 1:
            raise ValueError(f"frame_skip={frame_skip} must be >= 1")
        if warmup_steps < 0:
            raise ValueError(f"warmup_steps={warmup_steps} must be >= 0")
        if warmup_steps and warmup_action is None:
            raise ValueError("warmup_steps > 0 needs a warmup_action (e.g. the zero action)")
        super().__init__(env)
        self.frame_skip = frame_skip
        self.warmup_steps = warmup_steps
        self.warmup_action = warmup_action
        self.sim_steps = 0
        self.last_obs: Any = None

    def reset(self, *, seed: int | None = None, options: dict | None = None) -> tuple[Any, dict]:
        obs, info = self.env.reset(seed=seed, options=options)
        self.sim_steps = 0
        for _ in range(self.warmup_steps):
            obs, _, terminated, truncated, info = self.env.step(self.warmup_action)
            self.sim_steps += 1
            if terminated or truncated:
                raise RuntimeError(f"the env ended during its {self.warmup_steps} warm-up steps; lower warmup_steps")
        self.last_obs = obs
        return obs, info

    def step(self, action: Any) -> tuple[Any, float, bool, bool, dict]:
        total = 0.0
        for _ in range(self.frame_skip):
            obs, reward, terminated, truncated, info = self.env.step(action)
            self.sim_steps += 1
            total += float(reward)
            if terminated or truncated:
                break
        self.last_obs = obs
        return obs, total, terminated, truncated, info
