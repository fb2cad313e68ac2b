"""Agent tasks computed from recorded poses: lookup, the dense FetchPush task, relabelling."""

import numpy as np
import pytest

from astra_gym.data.synthetic import manipulation_episode
from astra_gym.data.tasks import TASKS, get_task, relabel


def test_the_default_task_is_the_simulators_own():
    for scenario in TASKS:
        assert get_task(scenario).native and get_task(scenario) is TASKS[scenario][0]
    assert get_task("manipulation", "reach-push").name == "reach-push"
    choices = r"choose one of \['push', 'reach-push', 'progress', 'reach-block', 'reach'\]"
    with pytest.raises(ValueError, match=choices):
        get_task("manipulation", "stack")
    with pytest.raises(ValueError, match="no tasks for scenario"):
        get_task("flying")


def test_reach_push_rewards_getting_the_gripper_to_the_block_and_the_block_to_the_goal():
    task = get_task("manipulation", "reach-push")
    goal = np.array([1.4, 0.8, 0.42])
    far = {"ee_pos": np.array([1.2, 0.6, 0.6]), "object_pos": np.array([1.3, 0.7, 0.42]), "goal_pos": goal}
    near = {**far, "ee_pos": np.array([1.3, 0.7, 0.45])}
    done = {"ee_pos": goal + [0.0, 0.0, 0.03], "object_pos": goal, "goal_pos": goal}
    rewards = [task(far, after, -1.0) for after in (far, near, done)]
    assert rewards[0] < rewards[1] < rewards[2] <= 0.0
    assert rewards[2] == pytest.approx(-0.03)
    assert rewards[1] == pytest.approx(-(0.03 + np.linalg.norm(far["object_pos"] - goal)))


def test_manipulation_progress_is_the_reach_push_distance_closed_and_sums_to_it():
    task, distance = get_task("manipulation", "progress"), get_task("manipulation", "reach-push")
    episode = manipulation_episode(8, seed=1)
    rows = [{k: v[t] for k, v in episode.poses.items()} for t in range(len(episode.rewards) + 1)]
    rewards = relabel(episode.poses, episode.rewards, task)
    closed = distance(rows[-1], rows[-1], 0.0) - distance(rows[0], rows[0], 0.0)  # -distance at the end - at start
    assert rewards.sum() == pytest.approx(10.0 * closed)  # telescopes: the return is the distance closed
    assert task(rows[0], rows[0], -1.0) == 0.0  # standing still scores nothing, whatever the simulator says
    toward = {**rows[0], "ee_pos": (rows[0]["ee_pos"] + rows[0]["object_pos"]) / 2}
    assert task(rows[0], toward, -1.0) > 0.0 > task(toward, rows[0], -1.0)


def test_manipulation_reach_is_the_gripper_block_distance_closed_whatever_the_goal():
    task, distance = get_task("manipulation", "reach"), get_task("manipulation", "reach-block")
    assert task.potential == "reach-block" and task.potential_scale == 10.0
    episode = manipulation_episode(8, seed=2)
    rows = [{k: v[t] for k, v in episode.poses.items()} for t in range(len(episode.rewards) + 1)]
    rewards = relabel(episode.poses, episode.rewards, task)
    gap = [np.linalg.norm(row["ee_pos"] - row["object_pos"]) for row in (rows[0], rows[-1])]
    assert rewards.sum() == pytest.approx(10.0 * (gap[0] - gap[1]))  # the return is the distance closed
    assert distance(rows[0], rows[-1], -1.0) == pytest.approx(-gap[1])
    toward = {**rows[0], "ee_pos": (rows[0]["ee_pos"] + rows[0]["object_pos"]) / 2}
    moved_goal = {**toward, "goal_pos": toward["goal_pos"] + 0.2}
    assert task(rows[0], toward, -1.0) == task(rows[0], moved_goal, -1.0) > 0.0  # the goal is not read


def test_relabel_recomputes_a_recorded_episode():
    episode = manipulation_episode(6, seed=0)
    native = relabel(episode.poses, episode.rewards, get_task("manipulation"))
    np.testing.assert_array_equal(native, episode.rewards)
    task = get_task("manipulation", "reach-push")
    dense = relabel(episode.poses, episode.rewards, task)
    expected = [
        task({k: v[t] for k, v in episode.poses.items()}, {k: v[t + 1] for k, v in episode.poses.items()}, 0.0)
        for t in range(len(episode.rewards))
    ]
    np.testing.assert_allclose(dense, expected)
    assert dense.shape == episode.rewards.shape and np.all(np.diff(dense) != 0)  # the gripper moves each step
    with pytest.raises(ValueError, match="needs the poses"):
        relabel({"ee_pos": episode.poses["ee_pos"]}, episode.rewards, task)


def test_explore_progress_follows_the_walking_distance_through_the_maze():
    pytest.importorskip("vizdoom")
    from astra_gym.data.sims.doom_distance import distance_field

    field = distance_field("my_way_home", "GreenArmor")
    vest = np.array(field.target)
    assert field(vest) == 0.0
    # The spawn at (575, -172) is 499 units from the vest as the crow flies, but the walls make the walk longer.
    spawn = np.array([575.0, -172.0])
    assert field(spawn) > 1.5 * np.linalg.norm(spawn - vest)
    task = get_task("explore", "progress")
    toward = {"camera_pos": np.array([1000.0, -340.0, 0.0])}
    away = {"camera_pos": np.array([1043.0, 60.0, 0.0])}
    assert task(away, toward, 0.0) == pytest.approx((field(away["camera_pos"]) - field(toward["camera_pos"])) / 100)
    assert task(away, toward, 0.0) > 0 > task(toward, away, 0.0)
    assert task(toward, toward, 1.0) == 1.0  # the vest's +1 is kept
