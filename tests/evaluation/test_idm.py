"""The inverse-dynamics model: labels per scenario, accuracy on a visible-motion task, files."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from astra_gym.evaluation import idm as idm_lib
from tests.evaluation.synthetic import BUTTONS, square_episode

SMALL = {"frames_before": 0, "channels": (8, 16), "hidden": 32}


@pytest.fixture(scope="module")
def trained():
    """An IDM trained on 16 square episodes (about 3 s on one CPU thread)."""
    config = idm_lib.make_idm_config("explore", BUTTONS, **SMALL)
    settings = idm_lib.IDMTrainConfig(steps=400, batch_size=32, lr=3e-3)
    episodes = [square_episode(seed) for seed in range(16)]
    model, losses = idm_lib.train_idm(episodes, config, settings, generator=torch.Generator().manual_seed(0))
    return model, losses


def test_idm_recovers_visible_actions_and_shuffled_actions_score_near_chance(trained):
    model, losses = trained
    assert np.mean(losses[-10:]) < 0.2 * np.mean(losses[:10])
    test = square_episode(1000, steps=60)
    true = idm_lib.accuracy(model, test.frames, test.actions)
    assert true["exact_match"] > 0.9 and true["mean_accuracy"] > 0.97
    shuffled = idm_lib.accuracy(model, test.frames, test.actions[np.random.default_rng(0).permutation(60)])
    assert shuffled["exact_match"] < 0.4  # one of six keys: chance is about 1/6
    assert shuffled["mean_accuracy"] < true["mean_accuracy"] - 0.2
    assert shuffled["count"] == true["count"] == 60


def test_idm_accuracy_reads_episode_button_order(trained):
    model, _ = trained
    test = square_episode(1001)
    order = [3, 1, 0, 5, 2, 4]
    reordered = idm_lib.accuracy(
        model, test.frames, test.actions[:, order], episode_buttons=[BUTTONS[i] for i in order]
    )
    assert reordered == idm_lib.accuracy(model, test.frames, test.actions)


def test_save_and_load_round_trip(trained, tmp_path):
    model, _ = trained
    path = idm_lib.save_idm(model, tmp_path / "idm.safetensors", {"note": "test"})
    loaded, facts = idm_lib.load_idm(path)
    assert facts == {"note": "test"} and loaded.config == model.config
    windows = idm_lib.transition_windows(square_episode(5).frames, np.arange(10), 0)
    assert np.array_equal(idm_lib.predict(loaded, windows), idm_lib.predict(model, windows))
    assert not list(tmp_path.glob(".*tmp"))
    with pytest.raises(FileNotFoundError, match="no IDM file"):
        idm_lib.load_idm(tmp_path / "missing.safetensors")


def test_load_rejects_other_safetensors(tmp_path):
    from safetensors.torch import save_file

    save_file({"x": torch.zeros(1)}, str(tmp_path / "other.safetensors"))
    with pytest.raises(ValueError, match="not an IDM file"):
        idm_lib.load_idm(tmp_path / "other.safetensors")


def test_labels_per_scenario():
    drive = np.array([[-1.0, 0.5, 0.0], [0.2, 0.0, 0.05], [0.9, 0.3, 0.8]], np.float32)
    config = idm_lib.make_idm_config("drive")
    np.testing.assert_array_equal(idm_lib.action_labels(config, drive), [[0, 1, 0], [1, 0, 0], [2, 1, 1]])
    fetch = np.array([[-1.0, 0.0, 0.5, -1.0], [0.2, -0.4, 1.0, 1.0]], np.float32)
    config = idm_lib.make_idm_config("manipulation")  # FetchPush: no gripper head
    np.testing.assert_array_equal(idm_lib.action_labels(config, fetch), [[0, 1, 2], [1, 0, 2]])
    config = idm_lib.make_idm_config("manipulation", gripper=True)
    np.testing.assert_array_equal(idm_lib.action_labels(config, fetch), [[0, 1, 2, 0], [1, 0, 2, 1]])
    with pytest.raises(ValueError, match="3 columns"):
        idm_lib.action_labels(idm_lib.make_idm_config("drive"), fetch)


def test_explore_labels_are_net_axes_plus_other_buttons():
    config = idm_lib.make_idm_config("explore", ("TURN_LEFT", "ATTACK", "TURN_RIGHT", "MOVE_FORWARD"))
    assert [h.name for h in config.heads] == ["turn", "ATTACK", "MOVE_FORWARD"]
    episode_buttons = ("MOVE_FORWARD", "TURN_RIGHT", "ATTACK", "TURN_LEFT", "USE")
    keys = np.array([[1, 0, 0, 1, 0], [0, 1, 1, 0, 1], [0, 1, 0, 1, 0]], np.int8)
    # turn: left / right / both held = none; then ATTACK; then MOVE_FORWARD (a lone button of its pair).
    labels = idm_lib.action_labels(config, keys, episode_buttons)
    np.testing.assert_array_equal(labels, [[0, 0, 1], [2, 1, 0], [1, 0, 0]])
    with pytest.raises(ValueError, match="no buttons"):
        idm_lib.action_labels(idm_lib.make_idm_config("explore", ("JUMP",)), keys, episode_buttons)


def test_score_predictions_hand_case():
    heads = idm_lib.scenario_heads("drive")
    assert [h.name for h in heads] == ["steer", "gas", "brake"]
    labels = np.array([[0, 1, 0], [1, 1, 0], [1, 0, 0], [2, 1, 1]])
    predicted = np.array([[0, 1, 0], [1, 1, 1], [0, 0, 0], [2, 1, 1]])
    scores = idm_lib.score_predictions(predicted, labels, heads)
    assert scores["count"] == 4
    assert scores["per_head"]["steer"]["accuracy"] == 0.75
    assert scores["per_head"]["steer"]["balanced_accuracy"] == pytest.approx((1 + 0.5 + 1) / 3)
    assert scores["per_head"]["brake"]["majority_baseline"] == 0.75
    assert scores["mean_accuracy"] == pytest.approx((0.75 + 1 + 0.75) / 3)
    assert scores["exact_match"] == 0.5
    assert idm_lib.score_predictions(predicted[:0], labels[:0], heads)["mean_accuracy"] is None


def test_windows_are_checked():
    video = square_episode(0, steps=5).frames
    np.testing.assert_array_equal(idm_lib.transition_windows(video, np.array([1, 4]), 1)[1], video[3:6])
    with pytest.raises(ValueError, match=r"\[1, 4\]"):
        idm_lib.transition_windows(video, np.array([0]), 1)
