"""Every kind of bad input gets a clear error and leaves the env exactly as it was (one test each)."""

import gymnasium as gym
import imageio.v3 as iio
import numpy as np
import pytest

from astra_gym.envs.env import AstraEnv
from astra_gym.envs.vector_env import AstraVectorEnv
from astra_gym.rollout.bundle import BundleError, debug_bundle
from tests.envs.conftest import make_debug

GOOD = np.array([0.2, 0.5, 0.0], np.float32)


def _good(env):
    """A valid action: the middle of a Box, or the first button of MultiBinary."""
    space = env.action_space
    if isinstance(space, gym.spaces.Box):
        return ((space.low + space.high) / 2).astype(space.dtype)
    return np.eye(space.n, dtype=space.dtype)[0]


def _pair(env_id="Astra-Debug-v0"):
    """Two identically seeded debug envs: one receives the bad input, the other is the reference."""
    envs = [make_debug(env_id), make_debug(env_id)]
    for env in envs:
        env.reset(seed=4)
        env.step(_good(env))
    return envs


def _assert_unchanged(env, reference):
    """The env continues exactly like the reference that never saw the bad input."""
    obs, reward, *_ = env.step(_good(env))
    want_obs, want_reward, *_ = reference.step(_good(reference))
    assert np.array_equal(obs, want_obs) and reward == want_reward


@pytest.mark.parametrize("action", [np.zeros(2, np.float32), np.zeros((1, 3), np.float32), 0.5])
def test_wrong_action_shape(action):
    env, reference = _pair()
    with pytest.raises(ValueError, match=r"action must have shape \(3,\)"):
        env.unwrapped.step(action)
    _assert_unchanged(env, reference)


@pytest.mark.parametrize("action", [np.array(["a", "b", "c"]), np.array([1 + 1j, 0, 0]), np.array([None] * 3)])
def test_wrong_action_dtype(action):
    env, reference = _pair()
    with pytest.raises(ValueError, match="must be numeric"):
        env.unwrapped.step(action)
    _assert_unchanged(env, reference)


@pytest.mark.parametrize("value", [np.nan, np.inf, -np.inf])
def test_non_finite_action(value):
    env, reference = _pair()
    with pytest.raises(ValueError, match="NaN or inf"):
        env.unwrapped.step(np.array([value, 0.5, 0.0], np.float32))
    _assert_unchanged(env, reference)


def test_out_of_bounds_action_names_the_bound_and_the_fix():
    env, reference = _pair()
    with pytest.raises(ValueError, match=r"component 1 \(gas\) = 1.5 .*> high 1.*ClipAction"):
        env.unwrapped.step(np.array([0.0, 1.5, 0.0], np.float32))
    with pytest.raises(ValueError, match=r"component 0 \(steer\) = -2 .*< low -1"):
        env.unwrapped.step(np.array([-2.0, 0.0, 0.0]))
    _assert_unchanged(env, reference)
    explore, explore_reference = _pair("Astra-Explore-v0")
    with pytest.raises(ValueError, match=r"component 2 \(TURN_LEFT\) = 2 is not a button state"):
        explore.unwrapped.step(np.array([0, 0, 2, 0, 0, 0]))
    _assert_unchanged(explore, explore_reference)
    vector = AstraVectorEnv(2, checkpoint="debug", frame_bank="synthetic", device="cpu")
    vector.reset(seed=0)
    with pytest.raises(ValueError, match=r"env 1: action component 2 \(brake\)"):
        vector.step(np.array([[0.0, 0.0, 0.0], [0.0, 0.0, 3.0]], np.float32))


def test_step_before_reset():
    env = AstraEnv(checkpoint="debug", frame_bank="synthetic", device="cpu")
    with pytest.raises(gym.error.ResetNeeded, match="reset"):
        env.step(GOOD)
    with pytest.raises(gym.error.ResetNeeded, match="reset"):
        env.get_state()
    vector = AstraVectorEnv(2, checkpoint="debug", frame_bank="synthetic", device="cpu")
    with pytest.raises(gym.error.ResetNeeded, match="reset"):
        vector.step(np.tile(GOOD, (2, 1)))
    env.reset(seed=0)
    env.step(GOOD)


def test_step_after_termination(terminating_rollout):
    env = AstraEnv(rollout=terminating_rollout, frame_bank="synthetic")
    env.reset(seed=0)
    assert env.step(GOOD)[2]  # terminated
    with pytest.raises(gym.error.ResetNeeded, match="terminated after 1 steps; call env.reset"):
        env.step(GOOD)
    env.reset(seed=0)
    assert env.step(GOOD)[2]


def test_unknown_variant_kwargs():
    with pytest.raises(TypeError, match=r"'guidence_scale' \(did you mean 'guidance_scale'\?\); valid: "):
        make_debug(guidence_scale=2.0)
    with pytest.raises(TypeError, match="'colour'"):
        gym.make_vec("Astra-Debug-v0", num_envs=2, colour="red")
    make_debug(guidance_scale=2.0).reset(seed=0)


def test_unreadable_images_and_bad_reset_frames(tmp_path):
    env, reference = _pair()
    broken = tmp_path / "broken.png"
    broken.write_bytes(b"not a png")
    for image, match in ((tmp_path / "missing.png", "could not read image"), (broken, "could not read image"),
                         (np.zeros((8, 8, 3), np.float32), "uint8")):  # fmt: skip
        with pytest.raises(ValueError, match=match):
            env.reset(options={"image": image})
    with pytest.raises(ValueError, match=r"uint8 \[T, H, W, 3\]"):
        env.reset(options={"frames": np.zeros((2, 64, 64), np.uint8)})
    with pytest.raises(ValueError, match="unknown reset option"):
        env.reset(options={"frame": np.zeros((1, 64, 64, 3), np.uint8)})
    _assert_unchanged(env, reference)
    good = tmp_path / "start.png"
    iio.imwrite(good, np.full((96, 128, 3), 200, np.uint8))
    obs, info = env.reset(seed=0, options={"image": good})
    assert obs.shape == (64, 64, 3) and (obs == 200).all() and info["bank_index"] == -1


def test_missing_and_mismatched_checkpoints(tmp_path):
    installed = r"Installed: 'drive-v5', 'manip-v5', 'small-v0'"
    with pytest.raises(BundleError, match=rf"no-such-model.*{installed}.*checkpoint='debug'"):
        gym.make("Astra-Drive-v0", checkpoint="no-such-model")
    with pytest.raises(BundleError, match=r"Did you mean 'drive-v5'\?"):
        gym.make("Astra-Drive-v0", checkpoint="drive")
    with pytest.raises(BundleError, match="training.bundle"):
        gym.make("Astra-Drive-v0", checkpoint=tmp_path)
    with pytest.raises(ValueError, match="exactly the keys"):
        gym.make("Astra-Drive-v0", checkpoint={"astra_release": "x.ckpt"})
    with pytest.raises(ValueError, match="'explore' cannot start 'drive' episodes"):
        gym.make("Astra-Drive-v0", checkpoint="debug", frame_bank="explore")
    make_debug("Astra-Drive-v0").reset(seed=0)  # the registry and the model cache are unharmed


def test_bad_reset_mask_and_seeds():
    vector = AstraVectorEnv(2, checkpoint="debug", frame_bank="synthetic", device="cpu")
    with pytest.raises(gym.error.ResetNeeded, match="first reset must reset every env"):
        vector.reset(options={"reset_mask": np.array([True, False])})
    obs, _ = vector.reset(seed=0)
    for mask, match in ((np.array([1, 0]), "bool array"), (np.array([False, False]), "at least one")):
        with pytest.raises(ValueError, match=match):
            vector.reset(options={"reset_mask": mask})
    with pytest.raises(ValueError, match="3 seeds for num_envs=2"):
        vector.reset(seed=[1, 2, 3])
    assert np.array_equal(vector.step(np.tile(GOOD, (2, 1)))[0].shape, (2, 64, 64, 3))


def test_a_shared_rollout_of_another_scenario_is_refused():
    explore = debug_bundle("explore").engine()
    with pytest.raises(
        ValueError, match="conditions on 'keyboard' actions but 'manipulation' actions are 'robot' rows"
    ):
        AstraEnv(scenario="manipulation", rollout=explore, frame_bank="synthetic")


def test_reset_actions_must_match_the_frames():
    env, reference = _pair()
    frames = np.zeros((2, 64, 64, 3), np.uint8)  # the debug bank's contexts hold 2 frames: 1 action between
    with pytest.raises(ValueError, match="pass both"):
        env.reset(options={"actions": np.zeros((1, 3), np.float32)})
    with pytest.raises(ValueError, match=r"the 1 actions between the 2 context frames"):
        env.reset(options={"frames": frames, "actions": np.zeros((3, 3), np.float32)})
    with pytest.raises(ValueError, match="outside"):
        env.reset(options={"frames": frames, "actions": np.full((1, 3), 5.0, np.float32)})
    _assert_unchanged(env, reference)
