"""Tests of the Mixture of Action Experts (astra_gym.world_model.action_encoders)."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from astra_gym.world_model.action_encoders import (
    ActionExperts,
    ModalityProcessor,
    drop_actions,
    encode_actions,
    flag_columns,
    make_action_rows,
    null_action_values,
    null_actions_like,
    route,
)
from astra_gym.world_model.conditioning import ActionInput
from astra_gym.world_model.config import get_preset

LEARNED = get_preset("debug")  # learned routing, E=4, top_k=2, U=8, 4 modalities (widest 17)
HARD = LEARNED.replace(routing="hard", top_k=1, expert_hidden=0)


def processors_for(config) -> dict[str, ModalityProcessor]:
    torch.manual_seed(0)
    return {m.name: ModalityProcessor(m.dim, config.unified_dim) for m in config.modalities}


def random_actions(modality: list[int], rows: int = 5, width: int = 17, seed: int = 0) -> ActionInput:
    generator = torch.Generator().manual_seed(seed)
    values = torch.randn(len(modality), rows, width, generator=generator)
    return ActionInput(values=values, modality=torch.tensor(modality))


# ----------------------------------------------------------------------------- modules


def test_state_dict_keys_follow_the_release():
    assert set(ModalityProcessor(13, 25).state_dict()) == {"projector.0.weight", "projector.0.bias"}
    linear = ActionExperts(25, 48, 3, hidden=0).state_dict()
    assert linear["experts.2.0.weight"].shape == (48, 25) and len(linear) == 6
    mlp = ActionExperts(25, 48, 3, hidden=16).state_dict()
    assert mlp["experts.0.0.weight"].shape == (16, 25) and mlp["experts.0.2.weight"].shape == (48, 16)


@pytest.mark.parametrize("hidden", [0, 16])
def test_experts_skip_zero_columns_without_changing_results(hidden):
    torch.manual_seed(0)
    experts = ActionExperts(8, 12, 4, hidden=hidden)
    unified = torch.randn(6, 8)
    weights = torch.zeros(6, 4)
    weights[:3, 1] = 0.7
    weights[:3, 3] = 0.3
    weights[3:, 3] = 1.0
    full = sum(weights[:, e : e + 1] * experts.experts[e](unified) for e in range(4))
    assert torch.equal(experts(unified, weights), full)
    assert torch.equal(experts(unified, weights, active=(1, 3)), full)
    assert torch.equal(experts(unified, torch.zeros(6, 4)), torch.zeros(6, 12))


def test_experts_reject_bad_weights():
    with pytest.raises(ValueError, match=r"weights must be \[N, E\]"):
        ActionExperts(8, 12, 4)(torch.randn(6, 8), torch.randn(6, 3))


# ----------------------------------------------------------------------------- routing


@pytest.mark.parametrize("top_k", [1, 2])
def test_hard_routing_is_top_k_times_the_modality_expert(top_k):
    config = HARD.replace(top_k=top_k)
    actions = random_actions([0, 3, 1])
    unified = encode_actions(processors_for(config), config, actions)
    result = route(config, None, unified, actions.modality)
    experts = [config.modalities[m].expert for m in actions.modality.tolist()]
    for b, e in enumerate(experts):
        expected = torch.zeros(config.num_experts)
        expected[e] = top_k
        assert torch.equal(result.weights[b], expected.expand(5, -1))
    assert result.balance_loss == 0 and result.active_experts == tuple(sorted(set(experts)))
    block = ActionExperts(config.unified_dim, config.dim, config.num_experts)
    mixed = block(unified.flatten(0, 1), result.weights.flatten(0, 1), result.active_experts).view(3, 5, -1)
    for b, e in enumerate(experts):
        assert torch.allclose(mixed[b], top_k * block.experts[e](unified[b]))


def test_learned_routing_weights_are_a_renormalised_top_k():
    torch.manual_seed(0)
    router = nn.Linear(LEARNED.unified_dim, LEARNED.num_experts)
    unified = torch.randn(2, 7, LEARNED.unified_dim)
    result = route(LEARNED, router, unified, torch.tensor([0, 2]))
    assert torch.allclose(result.weights.sum(-1), torch.ones(2, 7))
    assert (result.weights > 0).sum(-1).eq(LEARNED.top_k).all()
    top = router(unified).topk(LEARNED.top_k, dim=-1).indices
    assert torch.equal(result.weights.gather(-1, top) > 0, torch.ones_like(top, dtype=torch.bool))
    assert torch.allclose(result.expert_load.sum(), torch.tensor(1.0))


def test_balance_loss_is_one_when_uniform_and_larger_when_collapsed():
    unified = torch.randn(3, 6, LEARNED.unified_dim, generator=torch.Generator().manual_seed(1))
    uniform = nn.Linear(LEARNED.unified_dim, LEARNED.num_experts)
    nn.init.zeros_(uniform.weight)
    nn.init.zeros_(uniform.bias)
    assert torch.allclose(
        route(LEARNED, uniform, unified, torch.zeros(3, dtype=torch.long)).balance_loss, torch.tensor(1.0)
    )
    collapsed = nn.Linear(LEARNED.unified_dim, LEARNED.num_experts)
    nn.init.zeros_(collapsed.weight)
    with torch.no_grad():
        collapsed.bias.copy_(torch.tensor([20.0, 10.0, 0.0, 0.0]))
    loss = route(LEARNED, collapsed, unified, torch.zeros(3, dtype=torch.long)).balance_loss
    assert loss > 1.9  # top-2 always {0, 1}: f = (.5, .5, 0, 0), P ≈ (1, 0, 0, 0) -> 4 * 0.5 = 2


def test_gradient_reaches_the_router():
    torch.manual_seed(0)
    router = nn.Linear(LEARNED.unified_dim, LEARNED.num_experts)
    unified = torch.randn(2, 4, LEARNED.unified_dim)
    result = route(LEARNED, router, unified, torch.tensor([0, 1]))
    result.balance_loss.backward()
    assert router.weight.grad is not None and router.weight.grad.abs().sum() > 0
    router.zero_grad()
    block = ActionExperts(LEARNED.unified_dim, LEARNED.dim, LEARNED.num_experts, LEARNED.expert_hidden)
    result = route(LEARNED, router, unified, torch.tensor([0, 1]))
    block(unified.flatten(0, 1), result.weights.flatten(0, 1)).square().sum().backward()
    assert router.weight.grad.abs().sum() > 0


def test_valid_mask_restricts_statistics():
    router = nn.Linear(LEARNED.unified_dim, LEARNED.num_experts)
    unified = torch.randn(1, 4, LEARNED.unified_dim)
    valid = torch.tensor([[True, False, False, False]])
    masked = route(LEARNED, router, unified, torch.tensor([0]), valid)
    alone = route(LEARNED, router, unified[:, :1], torch.tensor([0]))
    assert torch.allclose(masked.balance_loss, alone.balance_loss)
    assert torch.allclose(masked.expert_load, alone.expert_load)


def test_routing_errors_name_the_problem():
    unified = torch.randn(1, 2, LEARNED.unified_dim)
    with pytest.raises(ValueError, match="router=None"):
        route(LEARNED, None, unified, torch.tensor([0]))
    with pytest.raises(ValueError, match="out of range"):
        route(HARD, None, unified, torch.tensor([7]))


# ----------------------------------------------------------------------------- encoding


def test_mixed_modality_batch_equals_each_row_alone():
    processors = processors_for(LEARNED)
    actions = random_actions([0, 3, 1, 0, 2])
    batched = encode_actions(processors, LEARNED, actions)
    for b in range(5):
        alone = ActionInput(actions.values[b : b + 1], actions.modality[b : b + 1])
        assert torch.allclose(batched[b : b + 1], encode_actions(processors, LEARNED, alone), atol=1e-6)


def test_encoding_reads_only_the_modality_columns():
    processors = processors_for(LEARNED)
    actions = random_actions([1, 0])  # vehicle reads 8 columns, camera 13
    noisy = actions.values.clone()
    noisy[0, :, 8:] = 99.0
    noisy[1, :, 13:] = -99.0
    assert torch.equal(
        encode_actions(processors, LEARNED, actions),
        encode_actions(processors, LEARNED, ActionInput(noisy, actions.modality)),
    )
    vehicle = processors["vehicle"](actions.values[0, :, :8])
    assert torch.allclose(encode_actions(processors, LEARNED, actions)[0], vehicle)


def test_encoding_errors_name_the_fix():
    processors = processors_for(LEARNED)
    with pytest.raises(ValueError, match="make_action_rows"):
        encode_actions(processors, LEARNED, random_actions([3], width=13))
    with pytest.raises(ValueError, match="no processor for modality 'robot'"):
        encode_actions({"camera": processors["camera"]}, LEARNED, random_actions([2]))


def test_flag_columns():
    assert flag_columns(LEARNED, torch.tensor([0, 1, 2, 3])).tolist() == [12, 7, 7, 16]


# ----------------------------------------------------------------------------- null action and dropout


def test_null_action_is_all_zeros_including_the_flag():
    values = null_action_values(2, 3, 13)
    assert values.shape == (2, 3, 13) and values.eq(0).all()
    actions = make_action_rows(torch.randn(2, 3, 12), 1.0, 13)
    null = null_actions_like(ActionInput(actions, torch.tensor([0, 0])))
    assert null.values.eq(0).all() and torch.equal(null.modality, torch.tensor([0, 0]))


def test_drop_actions_probabilities_and_determinism():
    actions = random_actions([0, 1, 2, 3, 0, 1, 2, 3])
    kept, dropped = drop_actions(actions, 0.0, torch.Generator().manual_seed(0))
    assert torch.equal(kept.values, actions.values) and not dropped.any()
    nulled, dropped = drop_actions(actions, 1.0, torch.Generator().manual_seed(0))
    assert nulled.values.eq(0).all() and dropped.all()
    a, mask_a = drop_actions(actions, 0.5, torch.Generator().manual_seed(5))
    b, mask_b = drop_actions(actions, 0.5, torch.Generator().manual_seed(5))
    assert torch.equal(a.values, b.values) and torch.equal(mask_a, mask_b)
    assert a.values[mask_a].eq(0).all() and torch.equal(a.values[~mask_a], actions.values[~mask_a])
    with pytest.raises(ValueError, match="p=2"):
        drop_actions(actions, 2, torch.Generator())


def test_make_action_rows():
    values = torch.arange(6.0).view(1, 2, 3)
    rows = make_action_rows(values, torch.tensor([[1.0, 0.0]]), 6)
    assert rows.tolist() == [[[0, 1, 2, 1, 0, 0], [3, 4, 5, 0, 0, 0]]]
    assert make_action_rows(values, 1, 4)[..., 3].eq(1).all()
    with pytest.raises(ValueError, match="width=3"):
        make_action_rows(values, 1.0, 3)
