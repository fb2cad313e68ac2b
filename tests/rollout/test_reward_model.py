"""RewardModel (astra_gym/world_model/reward_model.py): shapes, prior initialisation, config, errors."""

import pytest
import torch

from astra_gym.world_model.reward_model import RewardModel, RewardModelConfig, get_reward_model_preset


def test_outputs_and_prior_initialisation():
    torch.manual_seed(0)
    model = RewardModel(get_reward_model_preset("debug", action_dim=7, num_frames=2)).eval()
    frames = torch.rand(5, 2, 3, 64, 64) * 2 - 1
    reward, logit = model(frames, torch.randn(5, 7))
    assert reward.shape == logit.shape == (5,) and reward.dtype == logit.dtype == torch.float32
    torch.testing.assert_close(logit, torch.full((5,), -8.0))  # termination starts at its prior
    assert reward.abs().max() < 0.1 and reward.std() > 0  # small, but it reads its inputs


def test_config_round_trip_and_validation():
    config = get_reward_model_preset("small", action_dim=16)
    assert RewardModelConfig.from_dict(config.to_dict()) == config
    with pytest.raises(ValueError, match="unknown RewardModelConfig fields \\['width'\\]"):
        RewardModelConfig.from_dict({"action_dim": 3, "width": 2})
    with pytest.raises(ValueError, match="num_frames=0"):
        RewardModelConfig(action_dim=3, num_frames=0)
    with pytest.raises(ValueError, match="unknown reward model preset 'huge'"):
        get_reward_model_preset("huge", 3)


def test_a_pose_head_leaves_the_reward_unchanged_and_is_asked_for_explicitly():
    torch.manual_seed(0)
    model = RewardModel(get_reward_model_preset("debug", action_dim=7, pose_dim=9)).eval()
    frames, actions = torch.rand(4, 1, 3, 64, 64) * 2 - 1, torch.randn(4, 7)
    reward, logit = model(frames, actions)
    again, logit_again, poses = model(frames, actions, poses=True)
    assert poses.shape == (4, 9) and torch.equal(reward, again) and torch.equal(logit, logit_again)
    assert RewardModelConfig.from_dict(model.config.to_dict()).pose_dim == 9
    with pytest.raises(ValueError, match="pose_dim=-1"):
        RewardModelConfig(action_dim=7, pose_dim=-1)
    with pytest.raises(ValueError, match="pose head"):
        RewardModel(get_reward_model_preset("debug", action_dim=7))(frames, actions, poses=True)


def test_each_pose_reward_is_its_tasks_reward():
    """``POSE_REWARDS`` repeats the task formulas of astra_gym.data.tasks in torch; they must agree."""
    import numpy as np

    from astra_gym.data.tasks import get_task
    from astra_gym.world_model.reward_model import POSE_REWARDS

    rng = np.random.default_rng(0)
    for name, (formula, width) in POSE_REWARDS.items():
        task = get_task("manipulation", name)
        poses = rng.normal(size=(5, width))
        parts = np.split(poses, len(task.pose_keys), axis=1)
        after = [{key: part[i] for key, part in zip(task.pose_keys, parts, strict=True)} for i in range(5)]
        expected = [task.reward(row, row, 0.0) for row in after]
        np.testing.assert_allclose(formula(torch.from_numpy(poses)).numpy(), expected, rtol=1e-12)
    with pytest.raises(ValueError, match="reads 9 pose numbers"):
        RewardModelConfig(action_dim=7, pose_dim=6, pose_reward="reach-push")
    with pytest.raises(ValueError, match="choose one of"):
        RewardModelConfig(action_dim=7, pose_dim=9, pose_reward="tiles")


def test_a_pose_reader_computes_another_formula_of_the_same_poses_with_the_same_weights():
    """``with_pose_reward``: a ``reach-push`` reader reads ``reach-block`` from the poses it predicts."""
    from astra_gym.world_model.reward_model import POSE_REWARDS

    torch.manual_seed(0)
    model = RewardModel(get_reward_model_preset("debug", action_dim=7, pose_dim=9, pose_reward="reach-push")).eval()
    frames, actions = torch.rand(4, 1, 3, 64, 64) * 2 - 1, torch.randn(4, 7)
    with torch.no_grad():
        push, _, poses = model(frames, actions, poses=True)
        reach = model.with_pose_reward("reach-block")(frames, actions)[0]
    torch.testing.assert_close(push, POSE_REWARDS["reach-push"][0](poses))
    torch.testing.assert_close(reach, POSE_REWARDS["reach-block"][0](poses))
    assert not torch.allclose(push, reach) and model.config.pose_reward == "reach-block"
    with pytest.raises(ValueError, match="choose one of"):
        model.with_pose_reward("tiles")
    with pytest.raises(ValueError, match="train one with `train_reward --pose-reward`"):
        RewardModel(get_reward_model_preset("debug", action_dim=7)).with_pose_reward("reach-block")


def test_an_anchored_model_reads_the_start_frame_and_refuses_to_go_without_it():
    """``anchor=True`` stacks the episode's start frame on the input channels; a potential of it reads the
    same start frame on both sides of the step."""
    from astra_gym.world_model.potential_reward import PotentialReward

    torch.manual_seed(0)
    config = get_reward_model_preset("debug", action_dim=7, pose_dim=9, pose_reward="reach-push", anchor=True)
    assert RewardModelConfig.from_dict(config.to_dict()) == config
    model = RewardModel(config).eval()
    assert model.frame_encoder[0].in_channels == 6  # the newest frame and the start frame
    frames, start, other = (torch.rand(3, 1, 3, 64, 64) * 2 - 1 for _ in range(3))
    actions = torch.randn(3, 7)
    with torch.no_grad():
        reward, _, poses = model(frames, actions, poses=True, anchor=start)
        moved = model(frames, actions, poses=True, anchor=other)[2]
    assert poses.shape == (3, 9) and not torch.allclose(poses, moved)  # the anchor is read
    with pytest.raises(ValueError, match=r"reads the episode's start frame .* pass anchor="):
        model(frames, actions)
    with pytest.raises(ValueError, match=r"anchor must be \[B, 1, 3, H, W\]"):
        model(frames, actions, anchor=torch.cat([start, start], dim=1))
    plain = RewardModel(get_reward_model_preset("debug", action_dim=7)).eval()
    with torch.no_grad():  # a model without an anchor ignores one
        torch.testing.assert_close(plain(frames, actions, anchor=start)[0], plain(frames, actions)[0])
    potential = PotentialReward(model, 10.0).eval()
    with torch.no_grad():
        got = potential(torch.cat([other, frames], dim=1), actions, anchor=start)[0]
        after, before = (model(f, torch.zeros_like(actions), anchor=start)[0] for f in (frames, other))
    torch.testing.assert_close(got, 10.0 * (after - before))


def test_wrong_input_shapes_are_named():
    model = RewardModel(get_reward_model_preset("debug", action_dim=7))
    with pytest.raises(ValueError, match=r"frames must be \[B, 1, 3, H, W\]"):
        model(torch.zeros(2, 3, 64, 64), torch.zeros(2, 7))
    with pytest.raises(ValueError, match=r"actions must be \[B, 7\]"):
        model(torch.zeros(2, 1, 3, 64, 64), torch.zeros(2, 6))


def test_a_potential_reward_is_the_scaled_change_of_its_model():
    from astra_gym.world_model.potential_reward import PotentialReward

    torch.manual_seed(0)
    phi = RewardModel(get_reward_model_preset("debug", action_dim=7, num_frames=1)).eval()
    with torch.no_grad():
        phi.head[-1].bias[1].fill_(1.5)  # a termination logit that differs from the prior
    reward = PotentialReward(phi, 10.0).eval()
    assert reward.config.num_frames == 2 and phi.config.num_frames == 1
    frames, actions = torch.rand(4, 2, 3, 64, 64) * 2 - 1, torch.randn(4, 7)
    still = torch.zeros_like(actions)  # the potential is read with a zero row: a function of the frames alone
    with torch.no_grad():
        got, logit = reward(frames, actions)
        after, after_logit = phi(frames[:, 1:], still)
        before, _ = phi(frames[:, :1], still)
        assert not torch.allclose(phi(frames[:, 1:], actions)[0], after)  # the model itself reads its row
    torch.testing.assert_close(got, 10.0 * (after - before))
    torch.testing.assert_close(logit, after_logit)  # the newest frame's termination
    assert got.abs().max() > 0
    # Telescoping: an episode's return is scale * (phi(last) - phi(first)), whatever the actions between.
    video = torch.rand(1, 6, 3, 64, 64) * 2 - 1
    with torch.no_grad():
        steps = [reward(video[:, t : t + 2], actions[t % 4 : t % 4 + 1])[0] for t in range(5)]
        ends = [phi(video[:, t : t + 1], still[:1])[0] for t in (0, 5)]
    torch.testing.assert_close(sum(steps), 10.0 * (ends[1] - ends[0]))
    with pytest.raises(ValueError, match=r"actions must be \[B, 7\] rows for B=4"):
        reward(frames, actions[:2])
    with pytest.raises(ValueError, match=r"frames must be \[B, 2, 3, H, W\] \(the potential's frames plus"):
        reward(frames[:, :1], actions)


def test_spatial_soft_argmax_finds_each_channels_peak():
    from astra_gym.world_model.reward_model import spatial_soft_argmax

    maps = torch.zeros(1, 2, 5, 9)
    maps[0, 0, 0, 8] = 50.0  # top right
    maps[0, 1, 2, 4] = 50.0  # centre
    torch.testing.assert_close(spatial_soft_argmax(maps), torch.tensor([[1.0, -1.0, 0.0, 0.0]]), atol=1e-4, rtol=0)
    torch.testing.assert_close(spatial_soft_argmax(torch.zeros(1, 1, 4, 4)), torch.zeros(1, 2))  # flat: the centre


def test_the_keypoints_preset_reads_where_an_object_is():
    """Mean pooling hardly tells a small object's place; the keypoints' soft-argmax does, and it round-trips."""
    from astra_gym.world_model.reward_model import spatial_soft_argmax

    torch.manual_seed(0)
    config = get_reward_model_preset("keypoints", action_dim=7, num_frames=2)
    assert config.keypoints and RewardModelConfig.from_dict(config.to_dict()) == config
    saved_before = get_reward_model_preset("small", action_dim=7).to_dict()
    del saved_before["keypoints"]
    assert not RewardModelConfig.from_dict(saved_before).keypoints  # configs saved before the field load as before
    model = RewardModel(config).eval()
    frames = -torch.ones(2, 2, 3, 64, 64)
    frames[0, :, :, 8:12, 8:12] = 1.0  # the same 4x4 object, top left ...
    frames[1, :, :, 48:52, 48:52] = 1.0  # ... and bottom right
    maps = model.frame_encoder(frames.flatten(1, 2))
    mean, points = maps.mean(dim=(2, 3)), spatial_soft_argmax(maps)
    assert (points[0] - points[1]).abs().max() > 10 * (mean[0] - mean[1]).abs().max()
    reward, _ = model(frames, torch.zeros(2, 7))
    assert reward.shape == (2,) and reward[0] != reward[1]
