"""Registration is data: string entry points, light imports, simulator action spaces."""

import subprocess
import sys

import gymnasium as gym
import numpy as np
import pytest

from astra_gym.envs.spaces import EXPLORE_BUTTONS, action_space
from astra_gym.envs.variants import ENTRY_POINT, VARIANTS, VECTOR_ENTRY_POINT


@pytest.mark.parametrize("env_id", sorted(VARIANTS))
def test_every_variant_is_registered_with_string_entry_points(env_id):
    spec = gym.spec(env_id)
    assert spec.entry_point == ENTRY_POINT and spec.vector_entry_point == VECTOR_ENTRY_POINT
    assert isinstance(spec.entry_point, str) and isinstance(spec.vector_entry_point, str)
    assert spec.max_episode_steps == VARIANTS[env_id].max_episode_steps
    assert spec.kwargs["scenario"] == VARIANTS[env_id].scenario


def test_importing_astra_gym_registers_the_ids_without_importing_torch():
    code = "import sys, astra_gym, gymnasium as gym; print('torch' in sys.modules, 'Astra-Debug-v0' in gym.registry)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout.split()
    assert out == ["False", "True"]


def test_reimporting_the_envs_package_does_not_re_register():
    import importlib
    import warnings

    import astra_gym.envs

    with warnings.catch_warnings():
        warnings.simplefilter("error")  # gymnasium warns when an id is registered twice
        importlib.reload(astra_gym.envs)


@pytest.mark.sims
def test_action_spaces_are_the_simulators():
    car = gym.make("CarRacing-v3")
    assert action_space("drive") == car.action_space
    robotics = pytest.importorskip("gymnasium_robotics")
    gym.register_envs(robotics)
    assert action_space("manipulation") == gym.make("FetchPush-v4").action_space
    doom_env = pytest.importorskip("astra_gym.data.sims.doom_env")
    assert EXPLORE_BUTTONS == doom_env.DEFAULT_BUTTONS
    assert action_space("explore") == gym.spaces.MultiBinary(len(doom_env.DEFAULT_BUTTONS))
    assert np.array_equal(action_space("drive").low, [-1, 0, 0])
