"""Ground-truth simulators, one module per scenario, built by name.

=============  ===========================  ===========================
scenario       simulator                    module
=============  ===========================  ===========================
drive          Gymnasium CarRacing-v3       :mod:`.drive`
manipulation   gymnasium-robotics FetchPush :mod:`.manipulation`
explore        ViZDoom my_way_home          :mod:`.explore` (+ :mod:`.doom_env`)
=============  ===========================  ===========================

Scenario modules are imported on demand, so a missing simulator only fails when it is used, with
an error that says how to install it.
"""

from __future__ import annotations

import dataclasses
import importlib
import json

from astra_gym.data.sims.base import GymConfig, GymSimulator, Simulator, resize_frame

__all__ = [
    "SCENARIOS",
    "Simulator",
    "GymConfig",
    "GymSimulator",
    "make_simulator",
    "resolve_sim_config",
    "resize_frame",
]

#: scenario -> (module, simulator class, config class)
SCENARIOS = {
    "drive": ("astra_gym.data.sims.drive", "DriveSimulator", "DriveConfig"),
    "manipulation": ("astra_gym.data.sims.manipulation", "ManipulationSimulator", "ManipulationConfig"),
    "explore": ("astra_gym.data.sims.explore", "ExploreSimulator", "ExploreConfig"),
}

_INSTALL_HINT = "install the simulators with `pip install -e '.[sims]'` (FetchPush also needs libegl1 libegl-mesa0)"


def make_simulator(scenario: str, **config: object) -> Simulator:
    """Builds the simulator of ``scenario`` with config overrides (e.g. ``size=None``, ``frame_skip=4``).

    Raises:
        ValueError: Unknown scenario or config field.
        ImportError: The simulator package is not installed.
    """
    module, config_cls = _scenario_module(scenario, config)
    return getattr(module, SCENARIOS[scenario][1])(config_cls(**config))


def resolve_sim_config(scenario: str, **config: object) -> dict:
    """The JSON-able config fields that ``config`` sets to other than ``scenario``'s defaults, resolved
    (a camera preset name becomes its fields), e.g. what a model bundle records of its training data.

    Raises:
        ValueError, ImportError: As :func:`make_simulator`.
    """
    _, config_cls = _scenario_module(scenario, config)
    resolved = json.loads(json.dumps(dataclasses.asdict(config_cls(**config))))
    default = json.loads(json.dumps(dataclasses.asdict(config_cls())))
    return {key: value for key, value in resolved.items() if value != default[key]}


def _scenario_module(scenario: str, config: dict) -> tuple[object, type]:
    """(imported scenario module, its config class), after checking the scenario and the config fields."""
    if scenario not in SCENARIOS:
        raise ValueError(f"unknown scenario {scenario!r}; choose one of {sorted(SCENARIOS)}")
    module_name, _, config_name = SCENARIOS[scenario]
    try:
        module = importlib.import_module(module_name)
    except ImportError as err:
        raise ImportError(f"the {scenario!r} simulator is not importable ({err}); {_INSTALL_HINT}") from err
    config_cls = getattr(module, config_name)
    fields = {f.name for f in dataclasses.fields(config_cls)}
    unknown = sorted(set(config) - fields)
    if unknown:
        raise ValueError(f"{config_name} has no field(s) {unknown}; valid fields: {sorted(fields)}")
    return module, config_cls
