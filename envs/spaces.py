"""Action spaces of the scenarios, action validation, and native actions -> model action rows.

Every variant uses its simulator's own action space, so a policy trained inside the world model
runs unchanged on the real simulator:

=============  ==============================================  ======================================
scenario       action space (the simulator's)                  components
=============  ==============================================  ======================================
drive          ``Box([-1, 0, 0], [1, 1, 1], float32)``         steer (-1 = full left), gas, brake
               (CarRacing-v3)
manipulation   ``Box(-1, 1, (4,), float32)`` (FetchPush-v4)    dx, dy, dz, gripper
explore        ``MultiBinary(6)`` (ViZDoom, :data:`EXPLORE_    MOVE_FORWARD, MOVE_BACKWARD, TURN_LEFT,
               BUTTONS`)                                       TURN_RIGHT, MOVE_LEFT, MOVE_RIGHT
=============  ==============================================  ======================================

Out-of-space actions are the caller's error (Gymnasium's contract): :func:`check_actions` raises a
``ValueError`` naming the component, its bound and the fix, instead of clipping silently.
"""

from __future__ import annotations

from typing import Any

import gymnasium as gym
import numpy as np

from astra_gym.data.action_codecs import native_action_rows

__all__ = [
    "EXPLORE_BUTTONS",
    "ACTION_NAMES",
    "REST_SCENARIOS",
    "action_space",
    "check_actions",
    "action_rows",
    "check_rest_scenario",
    "rest_actions",
]

#: Scenarios whose do-nothing command leaves the scene as it is: Fetch's arm stays put (the block
#: stays where it lies), the Doom player stands. A CarRacing car coasts on, so Drive has none.
REST_SCENARIOS = ("manipulation", "explore")

# The ViZDoom buttons of the explore simulator, in action order. Must equal
# astra_gym.data.sims.doom_env.DEFAULT_BUTTONS (not imported here: that module needs vizdoom);
# tests/envs checks that they agree.
EXPLORE_BUTTONS = ("MOVE_FORWARD", "MOVE_BACKWARD", "TURN_LEFT", "TURN_RIGHT", "MOVE_LEFT", "MOVE_RIGHT")

ACTION_NAMES: dict[str, tuple[str, ...]] = {
    "drive": ("steer", "gas", "brake"),
    "manipulation": ("dx", "dy", "dz", "gripper"),
    "explore": EXPLORE_BUTTONS,
}


def action_space(scenario: str) -> gym.Space:
    """The simulator's action space of ``scenario`` (a new object each call)."""
    if scenario == "drive":
        return gym.spaces.Box(np.array([-1.0, 0.0, 0.0], np.float32), np.array([1.0, 1.0, 1.0], np.float32))
    if scenario == "manipulation":
        return gym.spaces.Box(-1.0, 1.0, (4,), np.float32)
    if scenario == "explore":
        return gym.spaces.MultiBinary(len(EXPLORE_BUTTONS))
    raise ValueError(f"unknown scenario {scenario!r}; choose one of {sorted(ACTION_NAMES)}")


_CLIP_HINT = (
    "Gymnasium treats actions outside the action space as the caller's error; clip them with "
    "np.clip(action, env.action_space.low, env.action_space.high) or wrap the env in gymnasium.wrappers.ClipAction"
)


def check_actions(scenario: str, space: gym.Space, actions: Any, batch: int | None = None) -> np.ndarray:
    """Validates one action (``batch=None``) or a batch of actions against ``space``.

    Args:
        scenario: Names the components in error messages.
        space: The single-env action space.
        actions: Array-like action(s).
        batch: Expected leading size of a batch, or None for one action.

    Returns:
        float64 [batch or 1, *space.shape] copy of the actions.

    Raises:
        ValueError: Wrong shape, non-numeric dtype, NaN/inf, or a value outside the space (naming
            the env row, the component, the value and its bound).
    """
    array = np.asarray(actions)
    expected = space.shape if batch is None else (batch, *space.shape)
    where = "action" if batch is None else "actions"
    if array.dtype.kind not in "biuf":
        raise ValueError(f"{where} must be numeric (float, int or bool), got dtype {array.dtype}")
    if array.shape != expected:
        raise ValueError(f"{where} must have shape {expected} for {space}, got {array.shape}")
    values = array.astype(np.float64).reshape(-1, *space.shape)  # [n, ...]
    if not np.isfinite(values).all():
        raise ValueError(f"{where} contain NaN or inf: {array.tolist()}")
    if isinstance(space, gym.spaces.Box):
        _check_box(scenario, space, values, batch is not None)
    elif isinstance(space, gym.spaces.MultiBinary):
        _check_binary(scenario, values, batch is not None)
    return values


def _component(scenario: str, index: int) -> str:
    names = ACTION_NAMES.get(scenario, ())
    return f"component {index} ({names[index]})" if index < len(names) else f"component {index}"


def _check_box(scenario: str, space: gym.spaces.Box, values: np.ndarray, batched: bool) -> None:
    low, high = space.low.astype(np.float64), space.high.astype(np.float64)
    outside = np.argwhere((values < low) | (values > high))
    if len(outside) == 0:
        return
    row, index = int(outside[0][0]), int(outside[0][1])
    value = values[row, index]
    bound = f"< low {low[index]:g}" if value < low[index] else f"> high {high[index]:g}"
    env = f"env {row}: " if batched else ""
    raise ValueError(
        f"{env}action {_component(scenario, index)} = {value:g} is outside the action space {space} ({bound}). "
        + _CLIP_HINT
    )


def _check_binary(scenario: str, values: np.ndarray, batched: bool) -> None:
    outside = np.argwhere((values != 0) & (values != 1))
    if len(outside) == 0:
        return
    row, index = int(outside[0][0]), int(outside[0][1])
    env = f"env {row}: " if batched else ""
    raise ValueError(
        f"{env}action {_component(scenario, index)} = {values[row, index]:g} is not a button state; "
        "MultiBinary actions take 0 (released) or 1 (pressed) per button"
    )


def action_rows(scenario: str, actions: np.ndarray, width: int) -> np.ndarray:
    """Validated native actions [n, ...] -> the model's command rows [n, width] (float32).

    The scenario's command feature (:func:`~astra_gym.data.action_codecs.native_action_rows`),
    zero-padded to the model's action width (e.g. robot commands into the release's 12-D slot).
    """
    buttons = EXPLORE_BUTTONS if scenario == "explore" else None
    rows = native_action_rows(scenario, actions, buttons)  # [n, d]
    if rows.shape[1] > width:
        raise ValueError(f"{scenario} action rows have {rows.shape[1]} columns but the model takes {width}")
    return np.pad(rows, ((0, 0), (0, width - rows.shape[1])))


def check_rest_scenario(scenario: str) -> None:
    """Raises a ValueError naming the fix unless ``scenario`` has a do-nothing command (:data:`REST_SCENARIOS`)."""
    if scenario not in REST_SCENARIOS:
        raise ValueError(
            f"rest_baseline: {scenario!r} has no do-nothing command that leaves the scene still (only "
            f"{', '.join(REST_SCENARIOS)} have one; a coasting car moves on), so there is no rest branch to "
            "subtract: it has none, use rest_baseline=False"
        )


def rest_actions(scenario: str, actions: np.ndarray) -> np.ndarray:
    """The do-nothing counterparts of validated native actions [n, ...] (same shape and dtype).

    Manipulation keeps each action's gripper command (FetchPush ignores it; the model's row then
    differs from the agent's only in the motion) and zeroes dx, dy, dz; Explore presses no button.
    """
    check_rest_scenario(scenario)
    rest = np.zeros_like(actions)
    if scenario == "manipulation":
        rest[:, 3:] = actions[:, 3:]
    return rest
