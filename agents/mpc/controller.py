"""Receding-horizon control of a real simulator with a planner imagining inside the world model.

Each control step (:meth:`MPCController.act`)::

    real frames so far (newest context_frames) + the actions that produced them
        --encode (WorldModelRollout.reset)-->  batch-1 state        re-anchored on reality every step
        --planner.plan (fork + batched step + score)-->  PlanResult
    execute result.action in the real simulator; its new frames join the context

The controller is a :class:`~astra_gym.agents.evaluation.Policy`, so
:func:`~astra_gym.agents.evaluation.evaluate` runs it on a
:func:`~astra_gym.agents.real_env.make_real_env` simulator like any other agent.
"""

from __future__ import annotations

import time
from collections import deque

import numpy as np

from astra_gym.agents.mpc.planner import Planner, PlanResult
from astra_gym.agents.mpc.sampling import SequenceParams
from astra_gym.agents.mpc.world_model import WorldModelDynamics
from astra_gym.utils.seeding import derive_seed

__all__ = ["MPCController"]


class MPCController:
    """MPC as a policy for a real env whose ``info["frames"]`` holds each step's frames.

    Args:
        dynamics: The world model as native-action dynamics.
        planner: A :class:`~astra_gym.agents.mpc.planner.Planner` (CEM, MPPI).
        context_frames: Newest real frames re-encoded as the model's context at every step.
        seed: Seeds the planner's sampling and the world model's noise (one numpy generator).
        warm_start: Start each plan from the previous one shifted by the steps executed since.
        replan_every: Execute this many actions of each plan before planning again (1: plan at
            every step, true receding horizon; K > 1 divides the planning cost by K, open loop
            for K - 1 steps). At most the planner's horizon.

    Attributes:
        last_result: The latest :class:`PlanResult`.
        imagined_steps: Rows x steps imagined since construction (the planning cost).
        plan_seconds: Wall-clock time spent encoding and planning.
    """

    def __init__(
        self,
        dynamics: WorldModelDynamics,
        planner: Planner,
        context_frames: int = 4,
        seed: int = 0,
        warm_start: bool = True,
        replan_every: int = 1,
    ) -> None:
        if context_frames < 1:
            raise ValueError(f"context_frames={context_frames} must be >= 1")
        if not 1 <= replan_every <= planner.horizon:
            raise ValueError(f"replan_every={replan_every} must be in 1..{planner.horizon} (the planner's horizon)")
        self.dynamics = dynamics
        self.planner = planner
        self.context_frames = context_frames
        self.warm_start = warm_start
        self.replan_every = replan_every
        self.rng = np.random.default_rng(seed)
        self.last_result: PlanResult | None = None
        self.imagined_steps = 0
        self.plan_seconds = 0.0
        self._frames: deque[np.ndarray] = deque(maxlen=context_frames)
        self._actions: deque[np.ndarray | None] = deque(maxlen=context_frames)
        self._pending: np.ndarray | None = None
        self._queue: deque[np.ndarray] = deque()
        self._params: SequenceParams | None = None

    def reset(self, obs: np.ndarray, info: dict) -> None:
        """Starts an episode from the reset frame(s) (``info["frames"]``, else ``obs``)."""
        self._frames.clear()
        self._actions.clear()
        self._append(None, info.get("frames", obs[None]))
        self._pending, self._params = None, None
        self._queue.clear()

    def act(self, obs: np.ndarray, info: dict) -> np.ndarray:
        """Records the last step's real frames; returns the plan's next action, re-encoding the
        context and planning first when ``replan_every`` actions of the last plan were executed."""
        if not self._frames:
            raise RuntimeError("call reset(obs, info) at the start of every episode before act()")
        if self._pending is not None:
            self._append(self._pending, info.get("frames", obs[None]))
        if self._queue:
            self._pending = self._queue.popleft()
            return self._pending.copy()
        start = time.perf_counter()
        state = self.dynamics.encode(np.stack(self._frames), list(self._actions), derive_seed(self.rng))
        result = self.planner.plan(self.dynamics, state, self.rng, self._params)
        self.plan_seconds += time.perf_counter() - start
        self.imagined_steps += int(result.diagnostics.get("imagined_steps", 0))
        self.last_result = result
        self._params = self._shifted(result.warm_start) if self.warm_start else None
        self._queue.extend(np.asarray(action).copy() for action in result.plan[1 : self.replan_every])
        self._pending = np.asarray(result.action).copy()
        return self._pending.copy()

    def _shifted(self, params: SequenceParams) -> SequenceParams:
        """``params`` (already shifted by one step) shifted by the other executed steps of the plan."""
        for _ in range(self.replan_every - 1):
            params = self.planner.sampler.shift(params)
        return params

    def _append(self, action: np.ndarray | None, frames: np.ndarray) -> None:
        """Adds the frames one step produced; each was produced by ``action`` (None: unknown)."""
        for frame in np.asarray(frames):
            self._frames.append(frame)
            self._actions.append(action)
