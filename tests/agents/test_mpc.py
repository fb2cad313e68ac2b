"""CEM and MPPI find known optima through the Planner API; the world-model dynamics imagine in one batch."""

from __future__ import annotations

import gymnasium as gym
import numpy as np
import pytest

from astra_gym.agents.mpc.cem import CEMConfig, CEMPlanner
from astra_gym.agents.mpc.controller import MPCController
from astra_gym.agents.mpc.mppi import MPPIConfig, MPPIPlanner
from astra_gym.agents.mpc.planner import imagine_returns
from astra_gym.agents.mpc.sampling import ActionPrior, make_sampler
from astra_gym.agents.mpc.world_model import WorldModelDynamics, behaviour_prior
from astra_gym.envs.spaces import action_rows, action_space
from astra_gym.rollout.bundle import debug_bundle

# ------------------------------------------------------------------------------------------------
# Toy dynamics with a known optimum
# ------------------------------------------------------------------------------------------------

DT, TARGET, COST, HORIZON = 0.5, 1.0, 0.2, 5


class PointMass:
    """1-D double integrator, state [B, 2] = (position, velocity); reward -(x - target)^2 - cost a^2."""

    def __init__(self) -> None:
        self.step_batches: list[int] = []

    def fork(self, state: np.ndarray, n: int) -> np.ndarray:
        return np.repeat(state, n, axis=0)

    def step(self, state: np.ndarray, actions: np.ndarray) -> np.ndarray:
        self.step_batches.append(len(state))
        accel = np.asarray(actions, np.float64)[:, 0]
        velocity = state[:, 1] + DT * accel
        return np.stack([state[:, 0] + DT * velocity, velocity], axis=1)

    def score(self, state: np.ndarray, actions: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        accel = np.asarray(actions, np.float64)[:, 0]
        return -((state[:, 0] - TARGET) ** 2) - COST * accel**2, np.full(len(state), -np.inf)


def optimal_plan(position: float, velocity: float) -> tuple[np.ndarray, float]:
    """Least-squares optimum of the quadratic return (positions are linear in the actions)."""
    steps = np.arange(1, HORIZON + 1)
    # x_t = gain @ actions + free (position after step t)
    gain = np.array([[DT * DT * (t - k + 1) if k <= t else 0.0 for k in steps] for t in steps])
    free = position + steps * DT * velocity
    plan = np.linalg.solve(gain.T @ gain + COST * np.eye(HORIZON), gain.T @ (TARGET - free))
    value = -np.sum((gain @ plan + free - TARGET) ** 2) - COST * np.sum(plan**2)
    return plan, value


SPACE = gym.spaces.Box(-2.0, 2.0, (1,), np.float32)  # wide enough that the optimum is inside
ITERATIONS = 15
PLANNERS = {
    "cem": lambda: CEMPlanner(SPACE, CEMConfig(HORIZON, 300, 30, ITERATIONS, discount=1.0, min_std=0.001)),
    "mppi": lambda: MPPIPlanner(
        SPACE, MPPIConfig(HORIZON, 300, ITERATIONS, temperature=0.005, noise_std=0.1, discount=1.0)
    ),
}


@pytest.mark.parametrize("name", sorted(PLANNERS))
@pytest.mark.parametrize("seed", [0, 1])
def test_planner_finds_point_mass_optimum(name, seed):
    state = np.array([[0.0, 0.0]])
    plan, value = optimal_plan(0.0, 0.0)
    dynamics = PointMass()
    result = PLANNERS[name]().plan(dynamics, state, np.random.default_rng(seed))
    achieved = imagine_returns(PointMass(), state, result.plan[None], discount=1.0)[0]
    assert achieved == pytest.approx(value, abs=0.01)  # optimum -1.005; the zero plan scores -5.0
    assert result.action == pytest.approx(plan[0], abs=0.1)  # optimum 1.28
    assert SPACE.contains(result.action)
    # One batched rollout per iteration: H steps of all candidates, never one candidate at a time.
    candidates = PLANNERS[name]().config.num_candidates
    assert set(dynamics.step_batches) == {candidates} and len(dynamics.step_batches) == ITERATIONS * HORIZON


class ButtonPattern:
    """Stateless: reward = number of buttons matching a per-step target pattern (MultiBinary(4))."""

    PATTERN = np.array([[1, 0, 1, 0], [0, 1, 1, 0], [1, 1, 0, 0]], np.int8)

    def fork(self, state, n):
        return np.repeat(state, n, axis=0)

    def step(self, state, actions):
        return state + 1  # step counter per row

    def score(self, state, actions):
        target = self.PATTERN[state[:, 0] - 1]
        return (np.asarray(actions) == target).sum(axis=1).astype(float), np.full(len(state), -np.inf)


@pytest.mark.parametrize(
    "planner",
    [
        CEMPlanner(gym.spaces.MultiBinary(4), CEMConfig(horizon=3, num_candidates=64, num_elites=8, iterations=5)),
        MPPIPlanner(
            gym.spaces.MultiBinary(4), MPPIConfig(horizon=3, num_candidates=64, iterations=5, temperature=0.3)
        ),
    ],
    ids=["cem", "mppi"],
)
def test_planner_finds_button_pattern(planner):
    result = planner.plan(ButtonPattern(), np.zeros((1, 1), np.int64), np.random.default_rng(0))
    assert np.array_equal(result.plan, ButtonPattern.PATTERN)
    assert result.action.dtype == np.int8 and gym.spaces.MultiBinary(4).contains(result.action)


def test_soft_termination_discounts_later_rewards():
    class Ending:
        def fork(self, state, n):
            return np.repeat(state, n, axis=0)

        def step(self, state, actions):
            return state

        def score(self, state, actions):
            return np.ones(len(state)), np.zeros(len(state))  # reward 1, termination probability 1/2

    returns = imagine_returns(Ending(), np.zeros((1, 1)), np.zeros((2, 3, 1)), discount=0.5)
    assert returns == pytest.approx([1 + 0.5 * 0.5 + 0.25 * 0.25] * 2)


def test_terminal_value_is_added_at_the_horizon_discounted_and_survival_weighted():
    class Valued:
        def fork(self, state, n):
            return np.repeat(state, n, axis=0)

        def step(self, state, actions):
            return state + np.asarray(actions, np.float64)  # position

        def score(self, state, actions):
            return np.ones(len(state)), np.zeros(len(state))  # reward 1, termination probability 1/2

        def terminal_value(self, state):
            return 10.0 * state[:, 0]

    actions = np.array([[[1.0], [1.0]], [[0.0], [2.0]], [[0.0], [0.0]]])  # end at 2, 2 and 0
    returns = imagine_returns(Valued(), np.zeros((1, 1)), actions, discount=0.5)
    rewards = 1 + 0.5 * 0.5  # two steps, the second after surviving with probability 1/2
    assert returns == pytest.approx([rewards + 0.25 * 0.25 * 20, rewards + 0.25 * 0.25 * 20, rewards])


@pytest.mark.parametrize("scenario", ["drive", "manipulation", "explore"])
def test_samples_respect_the_action_space(scenario):
    space = action_space(scenario)
    sampler = make_sampler(space, init_std=3.0)  # wide: many draws fall outside before clipping
    samples = sampler.sample(sampler.initial(5), 200, np.random.default_rng(0))
    assert samples.shape == (200, 5, *space.shape) and samples.dtype == space.dtype
    assert all(space.contains(a) for a in samples.reshape(-1, *space.shape))
    if scenario == "explore":
        assert set(np.unique(samples).tolist()) == {0, 1}
    else:
        assert np.any(samples == space.low) and np.any(samples == space.high)  # clipped, not rejected
        assert len(np.unique(samples)) > 100


@pytest.mark.parametrize("scenario", ["drive", "manipulation", "explore"])
def test_behaviour_prior_recovers_the_native_action_statistics(scenario):
    # Rows of known native actions: the prior must map their row statistics back to native units.
    space, width = action_space(scenario), 16
    rng = np.random.default_rng(0)
    if scenario == "explore":
        native = (rng.random((4000, *space.shape)) < np.linspace(0.1, 0.9, space.shape[0])).astype(np.int8)
    else:
        centre = np.linspace(-0.4, 0.4, space.shape[0]) * (space.high - space.low) / 2 + (space.high + space.low) / 2
        native = np.clip(rng.normal(centre, 0.1, (4000, *space.shape)), space.low, space.high).astype(space.dtype)
    rows = action_rows(scenario, native, width)
    prior = behaviour_prior(scenario, (rows.mean(axis=0), rows.std(axis=0)), width)
    assert prior.loc == pytest.approx(native.mean(axis=0), abs=1e-4)
    assert prior.scale == pytest.approx(native.std(axis=0), abs=1e-4)


def test_prior_sets_where_the_search_starts():
    space = action_space("drive")  # steer [-1, 1], gas [0, 1], brake [0, 1]
    prior = ActionPrior(np.array([0.0, 0.4, 1.5]), np.array([0.7, 0.4, 0.0]))
    initial = make_sampler(space, min_std=0.05, prior=prior).initial(3)
    assert initial.loc == pytest.approx(np.tile([0.0, 0.4, 1.0], (3, 1)))  # clipped to the box
    assert initial.scale == pytest.approx(np.tile([0.7, 0.4, 0.025], (3, 1)))  # floored at min_std
    # The box's centre (no prior) presses gas and brake by half each: the car would not move.
    assert make_sampler(space).initial(1).loc[0] == pytest.approx([0.0, 0.5, 0.5])
    buttons = make_sampler(action_space("explore"), prior=ActionPrior(np.array([1.0, 0, 0.5, 0, 0, 0]), np.zeros(6)))
    probs = 1 / (1 + np.exp(-buttons.initial(1).loc[0]))
    assert probs == pytest.approx([0.95, 0.05, 0.5, 0.05, 0.05, 0.05])  # kept in [min_prob, 1 - min_prob]
    with pytest.raises(ValueError, match="action shape"):
        make_sampler(space, prior=ActionPrior(np.zeros(2), np.zeros(2)))


def test_prior_steers_a_one_iteration_planner_and_the_receding_horizon():
    # A reward that only rewards pressing gas without brake; from the box centre one CEM iteration
    # of few candidates keeps braking, from a no-brake prior it does not.
    class Pedals:
        def fork(self, state, n):
            return np.repeat(state, n, axis=0)

        def step(self, state, actions):
            return state

        def score(self, state, actions):
            actions = np.asarray(actions, np.float64)
            return actions[:, 1] - 2 * actions[:, 2], np.full(len(state), -np.inf)

    space, config = action_space("drive"), CEMConfig(horizon=4, num_candidates=8, num_elites=2, iterations=1)
    prior = ActionPrior(np.array([0.0, 0.4, 0.05]), np.array([0.7, 0.4, 0.2]))
    state, rng = np.zeros((1, 1)), np.random.default_rng(0)
    centre = CEMPlanner(space, config).plan(Pedals(), state, rng)
    informed = CEMPlanner(space, config, prior).plan(Pedals(), state, np.random.default_rng(0))
    assert informed.plan[:, 2].mean() < 0.1 < centre.plan[:, 2].mean()
    assert informed.warm_start.loc[-1] == pytest.approx(np.clip(prior.loc, space.low, space.high))
    mppi = MPPIPlanner(space, MPPIConfig(horizon=4, num_candidates=8, noise_std=0.3), prior)
    result = mppi.plan(Pedals(), state, np.random.default_rng(0))
    assert result.params.scale == pytest.approx(np.tile(0.3 * (space.high - space.low) / 2, (4, 1)))
    assert result.warm_start.loc[-1] == pytest.approx(prior.loc)


# ------------------------------------------------------------------------------------------------
# The world model as dynamics
# ------------------------------------------------------------------------------------------------


def test_world_model_candidates_share_noise(debug_engine):
    """With shared noise, identical candidates imagine identical returns; different actions differ."""
    dynamics = WorldModelDynamics(debug_engine, "drive", noise="shared")
    frames = np.random.default_rng(0).integers(0, 256, (4, 64, 64, 3), dtype=np.uint8)
    state = dynamics.encode(frames, [None, *[np.array([0.0, 1.0, 0.0])] * 3], seed=0)
    plan = np.array([[[0.5, 1.0, 0.0]] * 2, [[0.5, 1.0, 0.0]] * 2, [[-1.0, 0.0, 1.0]] * 2], np.float32)
    returns = imagine_returns(dynamics, state, plan)
    assert returns[0] == returns[1] and returns[0] != returns[2]


def test_world_model_rest_baseline_scores_a_still_arm_zero_and_matches_the_env():
    engine = debug_bundle("manipulation").engine(num_denoise_steps=1)
    based = WorldModelDynamics(engine, "manipulation", rest_baseline=True)
    plain = WorldModelDynamics(engine, "manipulation")
    frames = np.random.default_rng(3).integers(0, 256, (4, 64, 64, 3), dtype=np.uint8)
    state = based.encode(frames, [None] * 4, seed=0)
    plan = np.array([[[0.0, 0.0, 0.0, 1.0]] * 2, [[0.8, -0.5, 0.1, 1.0]] * 2], np.float32)
    assert imagine_returns(based, state, plan)[0] == 0.0 and imagine_returns(plain, state, plan)[0] != 0.0
    children = based.step(based.fork(state, 2), plan[:, 0])
    rest = plan[:, 0] * np.array([0, 0, 0, 1], np.float32)
    expected = plain.score(children, plan[:, 0])[0] - plain.score(plain.step(based.fork(state, 2), rest), rest)[0]
    np.testing.assert_allclose(based.score(children, plan[:, 0])[0], expected, rtol=0, atol=1e-6)
    with pytest.raises(RuntimeError, match="the state that the last step"):
        based.score(based.fork(state, 2), plan[:, 0])
    with pytest.raises(ValueError, match="'drive' has no do-nothing command"):
        WorldModelDynamics(engine, "drive", rest_baseline=True)


def test_world_model_value_reads_the_newest_imagined_frame(debug_engine):
    seen = []

    def brightness(frames: np.ndarray) -> np.ndarray:
        seen.append(frames)
        return frames.mean(axis=(1, 2, 3))

    valued = WorldModelDynamics(debug_engine, "drive", value=brightness)
    plain = WorldModelDynamics(debug_engine, "drive")
    frames = np.random.default_rng(1).integers(0, 256, (4, 64, 64, 3), dtype=np.uint8)
    state = valued.encode(frames, [None] * 4, seed=0)
    plan = np.array([[[0.5, 1.0, 0.0]] * 2, [[-1.0, 0.0, 1.0]] * 2], np.float32)
    with_value, without = imagine_returns(valued, state, plan, 0.9), imagine_returns(plain, state, plan, 0.9)
    (last,) = seen
    assert last.shape == (2, 64, 64, 3) and last.dtype == np.uint8
    children = valued.fork(state, 2)
    for t in range(2):
        children = valued.step(children, plan[:, t])
    np.testing.assert_array_equal(last, children.recent_frames[:, -1].numpy())  # the horizon's frame
    survival = np.ones(2)  # the debug reward model's termination logits, as imagine_returns weighs them
    children = plain.fork(state, 2)
    for t in range(2):
        children = plain.step(children, plan[:, t])
        survival *= 1 - 1 / (1 + np.exp(-plain.score(children, plan[:, t])[1]))
    np.testing.assert_allclose(with_value - without, survival * 0.81 * last.mean(axis=(1, 2, 3)), rtol=1e-5)


def test_controller_reencodes_real_frames(debug_engine):
    planner = CEMPlanner(action_space("drive"), CEMConfig(horizon=2, num_candidates=4, num_elites=2, iterations=1))
    controller = MPCController(WorldModelDynamics(debug_engine, "drive"), planner, context_frames=3, seed=0)
    frame = np.zeros((64, 64, 3), np.uint8)
    controller.reset(frame, {"frames": frame[None]})
    for step in range(4):
        action = controller.act(frame, {"frames": np.full((1, 64, 64, 3), step, np.uint8)})
        assert action_space("drive").contains(action)
    assert len(controller._frames) == 3 and controller._actions[0] is not None  # the reset frame left the window
    assert controller.imagined_steps == 4 * 4 * 2


def test_controller_replans_every_k_steps_and_executes_the_plan(debug_engine):
    planner = CEMPlanner(action_space("drive"), CEMConfig(horizon=3, num_candidates=4, num_elites=2, iterations=1))
    controller = MPCController(WorldModelDynamics(debug_engine, "drive"), planner, seed=0, replan_every=3)
    frame = np.zeros((64, 64, 3), np.uint8)
    controller.reset(frame, {"frames": frame[None]})
    actions, plans = [], []
    for step in range(6):
        actions.append(controller.act(frame, {"frames": np.full((1, 64, 64, 3), step, np.uint8)}))
        if step % 3 == 0:
            plans.append(controller.last_result.plan)
    assert controller.imagined_steps == 2 * 4 * 3  # planned twice in 6 steps
    np.testing.assert_array_equal(np.stack(actions), np.concatenate(plans))  # each plan executed in full
    assert len(controller._actions) == 4 and controller._actions[-1] is not None
    with pytest.raises(ValueError, match="replan_every=4 must be in 1..3"):
        MPCController(WorldModelDynamics(debug_engine, "drive"), planner, replan_every=4)
