"""Caller contexts with their actions: the model sees how the context was driven, as for bank contexts."""

import numpy as np
import torch

from tests.envs.conftest import make_debug


def test_context_actions_reach_the_model_and_match_the_bank_path():
    env = make_debug()
    bank = env.unwrapped.core.bank
    frames, actions = bank.frames[3], np.full((bank.context_length - 1, 3), [0.5, 1.0, 0.0], np.float32)
    step = np.array([0.0, 0.5, 0.0], np.float32)
    outputs = []
    for options in ({"frames": frames}, {"frames": frames, "actions": actions}):
        env.reset(seed=1, options=options)
        outputs.append(env.step(step)[0])
    assert not np.array_equal(outputs[0], outputs[1])  # zero rows (unknown actions) vs the given ones
    start = env.unwrapped.core.start([np.random.default_rng(0)], {"frames": frames, "actions": actions})
    direct = env.unwrapped.core._context_rows(np.array([-1]), frames.shape[0], actions[None].astype(np.float64))
    assert np.array_equal(start.rows, direct) and np.abs(start.rows).sum() > 0


def test_score_frames_equals_the_reward_of_a_step():
    env = make_debug()
    env.reset(seed=0)
    core = env.unwrapped.core
    state = env.unwrapped.get_state().rollout
    rows = np.zeros((1, core.engine.config.chunk_latents, core.engine.action_dim), np.float32)
    state, _ = core.engine.step(state, rows)
    reward, logit = core.engine.score(state, rows)
    again = core.engine.score_frames(state.recent_frames.cpu().numpy(), rows)
    assert torch.equal(reward, again[0]) and torch.equal(logit, again[1])
