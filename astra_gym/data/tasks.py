"""Agent tasks: what an agent is rewarded for, computed from the simulator's ground-truth poses.

A scenario's simulator comes with its own reward (CarRacing's tiles, FetchPush's sparse -1/0,
my_way_home's vest). Some of those are too sparse for an agent to learn from within this
project's budgets, so a scenario can also offer dense tasks on the same simulator, with the same
frames and actions. A task reads only the poses every recording stores
(:attr:`~astra_gym.data.sims.base.Simulator.pose_keys`), so the same function

* rewards an agent in the real simulator (:class:`~astra_gym.agents.real_env.RealSimEnv`, ``task=``),
* and relabels recorded episodes for a reward model (:func:`relabel`).

==============  ==============  ===============================================================
scenario        task            reward per step (episode end)
==============  ==============  ===============================================================
drive           ``tiles``       the simulator's (+1000/N per new track tile, -0.1 per frame)
manipulation    ``push``        the simulator's FetchPush: -1 until the block is within 5 cm of
                                the goal, then 0 (no end before the time limit)
manipulation    ``reach-push``  ``-(|gripper - block| + |block - goal|)`` in metres: reach the
                                block, then push it to the goal (dense; FetchPush's ``dense``
                                reward is the second term alone)
manipulation    ``progress``    how much the step shortened ``reach-push``'s distance, per 10 cm
                                (potential-based shaping of it: an episode's return is the
                                distance closed, so standing still scores 0, not a penalty that
                                moving away can only add to); inside a world model, a bundle
                                without a ``progress`` reward model reads it as the change of
                                its ``reach-push`` model's prediction
manipulation    ``reach-block`` ``-|gripper - block|`` in metres: reach the block (the first term of
                                ``reach-push``)
manipulation    ``reach``       how much the step shortened the gripper-block distance, per 10 cm
                                (``progress``'s first stage: potential-based shaping of
                                ``reach-block``); inside a world model, a bundle without a model
                                of either reads it through its ``reach-push`` pose reader
explore         ``my_way_home`` the simulator's: +1 at the vest (ends), -0.0001 per tic
explore         ``progress``    the simulator's plus the walking distance to the vest gained in the
                                step, per 100 map units (a step forward is ~10 units); walls count
                                (:mod:`~astra_gym.data.sims.doom_distance`), so it is potential-
                                based shaping that leads through the maze
==============  ==============  ===============================================================

The first task of each scenario is the simulator's own and the default.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from functools import partial

import numpy as np

__all__ = ["TASKS", "Task", "get_task", "relabel"]

Poses = Mapping[str, np.ndarray]


@dataclass(frozen=True)
class Task:
    """One task: a name, its description, and the reward function (None = the simulator's own).

    Attributes:
        name: Task name, unique within its scenario.
        description: One line for tables and ``--help``.
        reward: ``(poses before, poses after, simulator reward) -> reward``, or None for the
            simulator's reward unchanged.
        pose_keys: The poses ``reward`` reads (a pose reader of the task predicts them, concatenated in
            this order; ``reach-block`` lists the goal it does not read, so that the ``reach-push``
            reader's nine numbers serve it).
        potential: For potential-based shaping of another task of the scenario: that task, whose
            per-step reward is a function of the state after the step (the potential phi). This
            task's reward is then ``potential_scale * (phi(after) - phi(before))``, and inside a
            world model it is read as the change of the potential's reward model
            (:class:`~astra_gym.world_model.potential_reward.PotentialReward`).
        potential_scale: The factor above.
    """

    name: str
    description: str
    reward: Callable[[Poses, Poses, float], float] | None = None
    pose_keys: tuple[str, ...] = ()
    potential: str | None = None
    potential_scale: float = 1.0

    @property
    def native(self) -> bool:
        """Whether this is the simulator's own reward."""
        return self.reward is None

    def __call__(self, before: Poses, after: Poses, sim_reward: float) -> float:
        """The task's reward for one step from ``before`` to ``after``."""
        return float(sim_reward) if self.reward is None else float(self.reward(before, after, sim_reward))


_PROGRESS_SCALE = 10.0  # Manipulation progress is counted per 10 cm


def _reach_block(before: Poses, after: Poses, sim_reward: float) -> float:
    return -float(np.linalg.norm(after["ee_pos"] - after["object_pos"]))


def _reach_push(before: Poses, after: Poses, sim_reward: float) -> float:
    push = np.linalg.norm(after["object_pos"] - after["goal_pos"])
    return _reach_block(before, after, sim_reward) - float(push)


def _closed(
    potential: Callable[[Poses, Poses, float], float], before: Poses, after: Poses, sim_reward: float
) -> float:
    """How much the step raised ``potential`` (a negative distance), per 10 cm."""
    return _PROGRESS_SCALE * (potential(after, after, sim_reward) - potential(before, before, sim_reward))


def _progress(before: Poses, after: Poses, sim_reward: float) -> float:
    from astra_gym.data.sims.doom_distance import distance_field

    field = distance_field("my_way_home", "GreenArmor")
    gained = field(before["camera_pos"][:2]) - field(after["camera_pos"][:2])
    return float(sim_reward) + gained / 100.0


TASKS: dict[str, tuple[Task, ...]] = {
    "drive": (Task("tiles", "CarRacing's own: +1000/N per new track tile, -0.1 per frame"),),
    "manipulation": (
        Task("push", "FetchPush's own: -1 per step until the block is within 5 cm of the goal"),
        Task(
            "reach-push",
            "dense: -(|gripper - block| + |block - goal|) per step, metres",
            _reach_push,
            ("ee_pos", "object_pos", "goal_pos"),
        ),
        Task(
            "progress",
            "dense: the reach-push distance closed in the step, per 10 cm",
            partial(_closed, _reach_push),
            ("ee_pos", "object_pos", "goal_pos"),
            potential="reach-push",
            potential_scale=_PROGRESS_SCALE,
        ),
        Task(
            "reach-block",
            "dense: -|gripper - block| per step, metres",
            _reach_block,
            ("ee_pos", "object_pos", "goal_pos"),
        ),
        Task(
            "reach",
            "dense: the gripper-block distance closed in the step, per 10 cm",
            partial(_closed, _reach_block),
            ("ee_pos", "object_pos", "goal_pos"),
            potential="reach-block",
            potential_scale=_PROGRESS_SCALE,
        ),
    ),
    "explore": (
        Task("my_way_home", "ViZDoom's own: +1 at the vest (ends the episode), -0.0001 per tic"),
        Task(
            "progress",
            "dense: + walking distance to the vest gained per step / 100 map units",
            _progress,
            ("camera_pos",),
        ),
    ),
}


def get_task(scenario: str, name: str | None = None) -> Task:
    """The task ``name`` of ``scenario`` (None: its default, the simulator's own reward).

    Raises:
        ValueError: Unknown scenario or task; the message lists the choices.
    """
    if scenario not in TASKS:
        raise ValueError(f"no tasks for scenario {scenario!r}; scenarios: {sorted(TASKS)}")
    tasks = TASKS[scenario]
    if name is None:
        return tasks[0]
    for task in tasks:
        if task.name == name:
            return task
    raise ValueError(f"{scenario} has no task {name!r}; choose one of {[t.name for t in tasks]}")


def relabel(poses: Poses, sim_rewards: np.ndarray, task: Task) -> np.ndarray:
    """Rewards [T] of a recorded episode under ``task``, from its poses [T + 1, ...] per key.

    Args:
        poses: The episode's pose arrays, one row per frame (T + 1 frames).
        sim_rewards: [T] the simulator's rewards (returned unchanged for its own task).
        task: The task.

    Returns:
        float64 [T] rewards of steps 0..T-1.
    """
    sim_rewards = np.asarray(sim_rewards, np.float64)
    if task.native:
        return sim_rewards
    missing = [key for key in task.pose_keys if key not in poses]
    if missing:
        raise ValueError(f"task {task.name!r} needs the poses {missing}, which this episode did not record")
    steps = len(sim_rewards)
    rows = [{key: np.asarray(value)[t] for key, value in poses.items()} for t in range(steps + 1)]
    return np.array([task(rows[t], rows[t + 1], sim_rewards[t]) for t in range(steps)], np.float64)
