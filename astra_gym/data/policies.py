"""Behaviour policies that generate the recorded actions.

Every policy sees the live env (scripted ones read privileged simulator state: CarRacing's
track, Fetch's observation dict, ViZDoom's depth buffer and position) and draws all its
randomness from the ``numpy.random.Generator`` given to :meth:`Policy.reset`, so an episode's
actions are a function of (sim seed, policy seed).

* :class:`RandomHold` - random actions held for a random number of steps (held actions make
  visible motion; every switch is an abrupt change). Scenario samplers put mass on the extremes
  of each action component so the whole space is covered.
* :class:`PurePursuitDriver` (drive), :class:`FetchPusher` (manipulation),
  :class:`CorridorWalker` (explore) - scripted experts that reach the interesting states.
  Fetch's random policy is wrapped in :class:`WorkspaceGuard` so the hand stays in view.
* :class:`Mixture` - switches between policies per episode or per segment (epsilon-random
  segments inside expert driving), and records which one acted when (``trace``).

:func:`make_policy` builds ``random`` / ``expert`` / ``mix`` / ``probe`` for a scenario. ``probe`` is
``mix`` whose random segments hold the corners of the action box (full lock or straight, full gas,
coast or full brake) for 8-24 steps, from rest and at speed: the sustained extreme actions whose
consequences a world model must carry (steering at rest does not move the car, braking at speed
stops it), which short held random actions rarely show.

``rest`` (a share of the ``mix`` / ``probe`` segments, :class:`Rest`) holds the scenario's do-nothing
command: the Fetch arm commanded to stay where it is, the car coasting, no Doom button. Neither the
experts nor the random policies ever hold still, so without it a world model never sees what
doing nothing does, and an agent inside it can earn from whatever it imagines then.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import gymnasium as gym
import numpy as np

__all__ = [
    "Policy",
    "RandomHold",
    "PurePursuitDriver",
    "FetchPusher",
    "WorkspaceGuard",
    "CorridorWalker",
    "Mixture",
    "Rest",
    "car_sampler",
    "fetch_sampler",
    "button_sampler",
    "car_corner_sampler",
    "fetch_corner_sampler",
    "fetch_rest_sampler",
    "make_policy",
    "check_shares",
    "POLICY_NAMES",
]

ActionSampler = Callable[[np.random.Generator], np.ndarray]
POLICY_NAMES = ("random", "expert", "mix", "probe")


class Policy(ABC):
    """Maps the live env to the next action; stateful within an episode.

    Attributes:
        name: Stored in ``attrs["policy"]``.
    """

    name = "policy"

    def reset(self, env: gym.Env, rng: np.random.Generator) -> None:
        """Starts an episode; called after the env reset, before the first :meth:`act`."""
        self.rng = rng

    @abstractmethod
    def act(self, obs: Any, env: gym.Env) -> np.ndarray:
        """The action for the current state (in the env's own action space)."""

    def trace(self) -> list[list]:
        """Segments ``[start_step, component_name]`` of the last episode (mixtures only)."""
        return []


# ----------------------------------------------------------------------------- random


def car_sampler(rng: np.random.Generator) -> np.ndarray:
    """CarRacing action: full-lock or partial steering of both signs; gas, coast, brake or both."""
    kind = rng.choice(3, p=[0.45, 0.45, 0.1])
    steer = (rng.choice([-1.0, 1.0]), rng.uniform(-1.0, 1.0), 0.0)[kind]
    pedal = rng.choice(4, p=[0.55, 0.2, 0.15, 0.1])  # gas, coast, brake, gas+brake
    gas = rng.uniform(0.3, 1.0) if pedal in (0, 3) else 0.0
    brake = rng.uniform(0.2, 1.0) if pedal in (2, 3) else 0.0
    return np.array([steer, gas, brake], np.float32)


def car_corner_sampler(rng: np.random.Generator) -> np.ndarray:
    """CarRacing action at a corner of its box: steer -1, 0 or +1; full gas, coast or full brake."""
    steer = rng.choice([-1.0, 0.0, 1.0])
    pedal = rng.choice(3)  # gas, coast, brake
    return np.array([steer, float(pedal == 0), float(pedal == 2)], np.float32)


def fetch_sampler(rng: np.random.Generator) -> np.ndarray:
    """Fetch action: each of dx, dy, dz uniform, full +-1 or 0; gripper fully open or closed (or between)."""
    xyz = rng.uniform(-1.0, 1.0, 3)
    snap = rng.random(3)
    xyz = np.where(snap < 0.3, np.sign(xyz), np.where(snap < 0.45, 0.0, xyz))
    gripper = rng.choice([-1.0, 1.0]) if rng.random() < 0.8 else rng.uniform(-1.0, 1.0)
    return np.array([*xyz, gripper], np.float32)


def fetch_corner_sampler(rng: np.random.Generator) -> np.ndarray:
    """Fetch action at a corner of its box: each of dx, dy, dz -1, 0 or +1; gripper open or closed."""
    return np.array([*rng.choice([-1.0, 0.0, 1.0], 3), rng.choice([-1.0, 1.0])], np.float32)


def fetch_rest_sampler(rng: np.random.Generator) -> np.ndarray:
    """Fetch command to stay put: dx = dy = dz = 0; the gripper as :func:`fetch_sampler` draws it.

    The gripper stays non-zero almost surely, so the row is not the all-zero null action of action dropout.
    """
    return np.array([0.0, 0.0, 0.0, *fetch_sampler(rng)[3:]], np.float32)


def button_sampler(button_names: Sequence[str]) -> ActionSampler:
    """Independent button presses (forward more often); every combination has non-zero probability."""
    probs = np.array([0.55 if b == "MOVE_FORWARD" else 0.25 for b in button_names])

    def sample(rng: np.random.Generator) -> np.ndarray:
        return (rng.random(len(probs)) < probs).astype(np.int8)

    return sample


class RandomHold(Policy):
    """Random actions from ``sampler``, each held for ``hold`` = (min, max) steps (uniform)."""

    name = "random"

    def __init__(self, sampler: ActionSampler, hold: tuple[int, int] = (3, 15)) -> None:
        if not 1 <= hold[0] <= hold[1]:
            raise ValueError(f"hold={hold} must be (min, max) with 1 <= min <= max")
        self.sampler = sampler
        self.hold = hold

    def reset(self, env: gym.Env, rng: np.random.Generator) -> None:
        super().reset(env, rng)
        self._left = 0
        self._action = None

    def act(self, obs: Any, env: gym.Env) -> np.ndarray:
        if self._left <= 0:
            self._action = self.sampler(self.rng)
            self._left = int(self.rng.integers(self.hold[0], self.hold[1] + 1))
        self._left -= 1
        return np.array(self._action)


class Rest(Policy):
    """Holds a do-nothing command from ``sampler``, drawn once per episode (at :meth:`reset`)."""

    name = "rest"

    def __init__(self, sampler: ActionSampler) -> None:
        self.sampler = sampler

    def reset(self, env: gym.Env, rng: np.random.Generator) -> None:
        super().reset(env, rng)
        self._action = self.sampler(self.rng)

    def act(self, obs: Any, env: gym.Env) -> np.ndarray:
        return np.array(self._action)


# ----------------------------------------------------------------------------- drive


class PurePursuitDriver(Policy):
    """Follows CarRacing's track centre line by pure pursuit with a speed controller.

    Per episode it draws a target speed and a look-ahead (so the data has slow and fast,
    smooth and tight driving) and adds steering noise; in curves it slows down.

    Args:
        speed: (min, max) target speed in Box2D units/s.
        lookahead: (min, max) look-ahead in track points (about 3.5 units each).
        steer_noise: Std of Gaussian noise added to the steering command.
    """

    name = "pure_pursuit"

    def __init__(
        self, speed: tuple[float, float] = (25.0, 55.0), lookahead: tuple[int, int] = (3, 6), steer_noise: float = 0.1
    ) -> None:
        self.speed = speed
        self.lookahead = lookahead
        self.steer_noise = steer_noise

    def reset(self, env: gym.Env, rng: np.random.Generator) -> None:
        super().reset(env, rng)
        self._points = np.array([(x, y) for _, _, x, y in env.unwrapped.track], np.float64)
        self._target_speed = float(rng.uniform(*self.speed))
        self._ahead = int(rng.integers(self.lookahead[0], self.lookahead[1] + 1))
        self._index = None

    def act(self, obs: Any, env: gym.Env) -> np.ndarray:
        hull = env.unwrapped.car.hull
        pos = np.array(hull.position, np.float64)
        self._index = self._nearest(pos)
        n = len(self._points)
        target = self._points[(self._index + self._ahead) % n]
        heading = np.array([-np.sin(hull.angle), np.cos(hull.angle)])
        error = _signed_angle(heading, target - pos)  # > 0: target is to the left
        steer = np.clip(-2.0 * error + self.rng.normal(0.0, self.steer_noise), -1.0, 1.0)
        far = self._points[(self._index + 4 * self._ahead) % n]
        bend = abs(_signed_angle(target - pos, far - target))
        speed_goal = self._target_speed * (1.0 - 0.5 * min(bend / 0.8, 1.0))
        speed = float(np.linalg.norm(hull.linearVelocity))
        gas = float(np.clip(0.1 * (speed_goal - speed), 0.0, 1.0))
        brake = float(np.clip(0.05 * (speed - speed_goal - 5.0), 0.0, 0.8))
        return np.array([steer, gas, brake], np.float32)

    def _nearest(self, pos: np.ndarray) -> int:
        """Closest track point, searched near the last one first (the track passes close to itself)."""
        n = len(self._points)
        if self._index is not None:
            window = (self._index + np.arange(-10, 30)) % n
            dist = np.linalg.norm(self._points[window] - pos, axis=1)
            if dist.min() < 15.0:
                return int(window[np.argmin(dist)])
        return int(np.argmin(np.linalg.norm(self._points - pos, axis=1)))


def _signed_angle(a: np.ndarray, b: np.ndarray) -> float:
    """Angle from 2-D vector ``a`` to ``b`` in (-pi, pi], counter-clockwise positive."""
    return float(np.arctan2(a[0] * b[1] - a[1] * b[0], a[0] * b[0] + a[1] * b[1]))


# ----------------------------------------------------------------------------- manipulation


class FetchPusher(Policy):
    """Pushes the Fetch block to the goal: go behind it (above), descend, push along the line.

    Reads grip, object and goal positions from the observation dict. The gripper command
    alternates between open and closed in random segments (FetchPush ignores it; its fingers
    are not actuated). After success it lifts off and roams above the table.

    Args:
        gain: Proportional gain from position error (m) to action (1 = 5 cm target shift).
        noise: Std of Gaussian noise on dx, dy, dz.
    """

    name = "pusher"
    _BEHIND = 0.07  # m behind the block centre to start a push
    _CLEAR = 0.06  # m above the block centre when moving around it
    _DONE = 0.03  # m block-goal distance at which the push counts as done

    def __init__(self, gain: float = 12.0, noise: float = 0.1) -> None:
        self.gain = gain
        self.noise = noise

    def reset(self, env: gym.Env, rng: np.random.Generator) -> None:
        super().reset(env, rng)
        self._grip_cmd = float(rng.choice([-1.0, 1.0]))
        self._grip_left = int(rng.integers(5, 30))
        self._roam: np.ndarray | None = None
        self._roam_left = 0

    def act(self, obs: Any, env: gym.Env) -> np.ndarray:
        grip, block, goal = obs["observation"][:3], obs["observation"][3:6], obs["desired_goal"]
        target = self._target(grip, block, goal)
        xyz = np.clip(self.gain * (target - grip) + self.rng.normal(0.0, self.noise, 3), -1.0, 1.0)
        return np.array([*xyz, self._gripper()], np.float32)

    def _target(self, grip: np.ndarray, block: np.ndarray, goal: np.ndarray) -> np.ndarray:
        to_goal = goal[:2] - block[:2]
        dist = float(np.linalg.norm(to_goal))
        safe = block[2] + self._CLEAR
        if dist < self._DONE:  # done: rise clear of the block, then roam above the table
            if grip[2] < safe - 0.02:
                return np.array([*grip[:2], safe])
            return self._roam_target(block, safe)
        u = to_goal / dist
        rel = grip[:2] - block[:2]
        along, across = float(rel @ u), float(u[0] * rel[1] - u[1] * rel[0])
        low = block[2] - 0.01
        if along < -0.02 and abs(across) < 0.015 and grip[2] < block[2] + 0.02:  # aligned and low: push
            return np.array([*(block[:2] + u * min(dist, 0.05)), low])
        behind = block[:2] - u * self._BEHIND
        if np.linalg.norm(grip[:2] - behind) < 0.015:  # above the start point: descend
            return np.array([*behind, low])
        if grip[2] < safe - 0.02:  # too low to move around the block: rise first
            return np.array([*grip[:2], safe])
        return np.array([*behind, safe])

    def _roam_target(self, block: np.ndarray, safe: float) -> np.ndarray:
        """A random point above the table, redrawn every 10-30 steps."""
        self._roam_left -= 1
        if self._roam is None or self._roam_left <= 0:
            offset = self.rng.uniform([-0.15, -0.15, 0.0], [0.15, 0.15, 0.08])
            self._roam = np.clip(np.array([*block[:2], safe]) + offset, [1.15, 0.5, 0.0], [1.55, 1.0, 0.6])
            self._roam_left = int(self.rng.integers(10, 31))
        return self._roam

    def _gripper(self) -> float:
        self._grip_left -= 1
        if self._grip_left <= 0:
            self._grip_cmd = -self._grip_cmd
            self._grip_left = int(self.rng.integers(5, 30))
        return self._grip_cmd


class WorkspaceGuard(Policy):
    """Keeps a Fetch policy's gripper above the table: motion components leading out of the box are reversed.

    Random actions held for many steps would otherwise fly the hand out of the camera's view.

    Args:
        policy: The wrapped policy (its name is kept).
        low: Lower corner of the box (m, world frame) for the ``robot0:grip`` site.
        high: Upper corner.
    """

    def __init__(
        self,
        policy: Policy,
        low: Sequence[float] = (1.15, 0.5, 0.0),
        high: Sequence[float] = (1.55, 1.0, 0.6),
    ) -> None:
        self.policy = policy
        self.name = policy.name
        self.low = np.asarray(low, np.float64)
        self.high = np.asarray(high, np.float64)

    def reset(self, env: gym.Env, rng: np.random.Generator) -> None:
        super().reset(env, rng)
        self.policy.reset(env, rng)

    def act(self, obs: Any, env: gym.Env) -> np.ndarray:
        action = np.array(self.policy.act(obs, env))
        grip = obs["observation"][:3]
        outward = ((grip < self.low) & (action[:3] < 0)) | ((grip > self.high) & (action[:3] > 0))
        action[:3] = np.where(outward, -action[:3], action[:3])
        return action


# ----------------------------------------------------------------------------- explore


class CorridorWalker(Policy):
    """Walks through ViZDoom corridors towards open space, turning away from walls and dead ends.

    Reads the depth buffer (``env.unwrapped.depth``, larger = farther): it heads for the most
    open direction (a randomly chosen deep column, re-chosen every few steps), walking forward
    while the centre of the view is open and turning on the spot when it is not; if it stops
    making progress it backs off and turns around. Random strafes make the paths diverse.

    Args:
        button_names: Action components, in order (must include MOVE_FORWARD, TURN_LEFT, TURN_RIGHT).
        near: Depth value below which the centre of the view counts as blocked.
    """

    name = "corridor_walker"

    def __init__(self, button_names: Sequence[str], near: float = 4.0) -> None:
        needed = {"MOVE_FORWARD", "TURN_LEFT", "TURN_RIGHT"}
        if not needed <= set(button_names):
            raise ValueError(f"CorridorWalker needs buttons {sorted(needed)}, got {list(button_names)}")
        self.buttons = {b: i for i, b in enumerate(button_names)}
        self.near = near

    def reset(self, env: gym.Env, rng: np.random.Generator) -> None:
        super().reset(env, rng)
        self._plan: list[tuple[str, ...]] = []
        self._positions: list[np.ndarray] = []
        self._heading_left = 0
        self._heading = 0.5  # target direction as a fraction of the screen width

    def act(self, obs: Any, env: gym.Env) -> np.ndarray:
        doom = env.unwrapped
        position = np.array([doom.game_variable("POSITION_X"), doom.game_variable("POSITION_Y")])
        self._positions = [*self._positions[-7:], position]
        if not self._plan:
            self._plan = self._next_plan(doom.depth)
        return self._press(self._plan.pop(0))

    def _next_plan(self, depth: np.ndarray | None) -> list[tuple[str, ...]]:
        """Button sets to hold for the next step(s)."""
        rng = self.rng
        if len(self._positions) == 8 and np.linalg.norm(self._positions[-1] - self._positions[0]) < 8.0:
            self._positions = []  # stuck: back off and turn around
            turn = str(rng.choice(["TURN_LEFT", "TURN_RIGHT"]))
            return [("MOVE_BACKWARD",)] * int(rng.integers(1, 3)) + [(turn,)] * int(rng.integers(6, 13))
        if rng.random() < 0.04:
            return [(str(rng.choice(["MOVE_LEFT", "MOVE_RIGHT"])), "MOVE_FORWARD")] * int(rng.integers(1, 4))
        if depth is None:
            return [("MOVE_FORWARD",)]
        profile = np.median(depth[depth.shape[0] // 3 : 2 * depth.shape[0] // 3], axis=0)
        self._choose_heading(profile)
        width = len(profile)
        centre = float(np.median(profile[2 * width // 5 : 3 * width // 5]))
        offset = self._heading - 0.5
        turn = () if abs(offset) < 0.1 else ("TURN_LEFT",) if offset < 0 else ("TURN_RIGHT",)
        if centre < self.near:
            return [turn or ("TURN_LEFT",)]
        return [(*turn, "MOVE_FORWARD")]

    def _choose_heading(self, profile: np.ndarray) -> None:
        """Every few steps, aims at a random column among the deepest ones."""
        self._heading_left -= 1
        if self._heading_left > 0:
            return
        deep = np.flatnonzero(profile >= 0.8 * profile.max())
        self._heading = (float(self.rng.choice(deep)) + 0.5) / len(profile)
        self._heading_left = int(self.rng.integers(2, 6))

    def _press(self, names: tuple[str, ...]) -> np.ndarray:
        action = np.zeros(len(self.buttons), np.int8)
        for name in names:
            if name in self.buttons:
                action[self.buttons[name]] = 1
        return action


# ----------------------------------------------------------------------------- mixtures


class Mixture(Policy):
    """Switches between component policies per episode or per segment.

    Args:
        components: name -> policy.
        weights: Probability of each component (normalised).
        per: "episode" (one component for the whole episode) or "segment" (a new draw every
            ``segment`` = (min, max) steps).
        segment: Segment length range in steps (per-segment mode).
    """

    def __init__(
        self,
        components: Mapping[str, Policy],
        weights: Sequence[float],
        per: str = "segment",
        segment: tuple[int, int] = (10, 40),
    ) -> None:
        if per not in ("episode", "segment"):
            raise ValueError(f"per={per!r} must be 'episode' or 'segment'")
        if len(weights) != len(components) or min(weights) < 0 or sum(weights) <= 0:
            raise ValueError(f"need one non-negative weight per component {list(components)}, got {weights}")
        self.components = dict(components)
        self.weights = np.asarray(weights, np.float64) / np.sum(weights)
        self.per = per
        self.segment = segment
        items = zip(self.components.items(), self.weights, strict=True)
        parts = ",".join(f"{k}={p.name}:{w:.2f}" for (k, p), w in items)
        self.name = f"mix[{per}]({parts})"

    def reset(self, env: gym.Env, rng: np.random.Generator) -> None:
        super().reset(env, rng)
        for policy, child in zip(self.components.values(), rng.spawn(len(self.components)), strict=True):
            policy.reset(env, child)
        self._step = 0
        self._left = 0
        self._trace: list[list] = []
        self._active = ""

    def act(self, obs: Any, env: gym.Env) -> np.ndarray:
        if self._left <= 0 and (self.per == "segment" or not self._trace):
            self._switch()
        self._left -= 1
        self._step += 1
        return self.components[self._active].act(obs, env)

    def trace(self) -> list[list]:
        return [list(t) for t in self._trace]

    def _switch(self) -> None:
        name = str(self.rng.choice(list(self.components), p=self.weights))
        self._left = int(self.rng.integers(self.segment[0], self.segment[1] + 1))
        if name != self._active:
            self._trace.append([self._step, name])
        self._active = name


# ----------------------------------------------------------------------------- factory


def make_policy(
    name: str, scenario: str, button_names: Sequence[str] = (), epsilon: float = 0.25, rest: float = 0.0
) -> Policy:
    """Builds a named behaviour policy for a scenario.

    Args:
        name: "random" (held random actions), "expert" (the scenario's scripted policy), "mix"
            (expert segments with epsilon-random segments in between) or "probe" (as "mix", the
            random segments holding corners of the action box for 8-24 steps).
        scenario: "drive" | "manipulation" | "explore".
        button_names: ViZDoom buttons, in action order (explore only).
        epsilon: Probability of a random segment in "mix" and "probe".
        rest: Probability of a :class:`Rest` segment (the do-nothing command) in "mix" and "probe";
            the expert gets ``1 - epsilon - rest``.
    """
    if name not in POLICY_NAMES:
        raise ValueError(f"unknown policy {name!r}; choose one of {POLICY_NAMES}")
    check_shares(name, epsilon, rest)
    random, expert = _scenario_policies(scenario, button_names, corners=name == "probe")
    if name == "random":
        return random
    if name == "expert":
        return expert
    if rest == 0:
        return Mixture({"expert": expert, "random": random}, [1.0 - epsilon, epsilon], per="segment")
    parts = {"expert": expert, "random": random, "rest": Rest(_rest_sampler(scenario, button_names))}
    return Mixture(parts, [1.0 - epsilon - rest, epsilon, rest], per="segment")


def check_shares(name: str, epsilon: float, rest: float) -> None:
    """Raises ValueError unless ``epsilon`` and ``rest`` are valid segment shares for policy ``name``."""
    if not (0.0 <= epsilon and 0.0 <= rest and epsilon + rest <= 1.0):
        raise ValueError(f"epsilon={epsilon} and rest={rest} must be >= 0 with epsilon + rest <= 1")
    if rest > 0 and name not in ("mix", "probe"):
        raise ValueError(f"rest={rest} applies to the mix and probe policies, not to {name!r}; use rest=0")


def _rest_sampler(scenario: str, button_names: Sequence[str]) -> ActionSampler:
    """The scenario's do-nothing command: Fetch stays put, the car coasts, no Doom button is pressed."""
    if scenario == "manipulation":
        return fetch_rest_sampler
    width = {"drive": 3, "explore": len(button_names)}[scenario]
    return lambda rng: np.zeros(width, np.float32)


def _scenario_policies(scenario: str, button_names: Sequence[str], corners: bool = False) -> tuple[Policy, Policy]:
    """(random, expert) policies of a scenario; ``corners``: the random one holds box corners for 8-24 steps."""
    probe = (8, 24)
    if scenario == "drive":
        random = RandomHold(car_corner_sampler, probe) if corners else RandomHold(car_sampler, (4, 20))
        return random, PurePursuitDriver()
    if scenario == "manipulation":
        random = RandomHold(fetch_corner_sampler, probe) if corners else RandomHold(fetch_sampler, (3, 15))
        return WorkspaceGuard(random), FetchPusher()
    if scenario == "explore":
        if not button_names:
            raise ValueError("the explore policies need the ViZDoom button_names")
        hold = probe if corners else (2, 10)  # buttons are binary: every sampled action is a corner
        return RandomHold(button_sampler(button_names), hold), CorridorWalker(button_names)
    raise ValueError(f"unknown scenario {scenario!r}; choose drive, manipulation or explore")
