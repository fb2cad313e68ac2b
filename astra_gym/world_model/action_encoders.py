"""Mixture of Action Experts (MoAE): modality projectors, router and per-block experts.

Raw per-latent action rows (one modality per batch row, each with its past/current flag) go
through their modality's :class:`ModalityProcessor` into a shared U-dimensional space. A router
(:func:`route`) assigns each unified row to experts; every transformer block owns an
:class:`ActionExperts` that maps the unified rows to the hidden width, mixed by the routing weights.

Two routing modes (``config.routing``):

* ``"hard"``: the release. Each modality always goes to its fixed expert; the release sums
  ``top_k`` copies of that expert with weight 1, so the weight is ``top_k`` on the one expert.
* ``"learned"``: the paper. ``router(unified)`` logits, top-k softmax renormalised over the chosen
  experts, plus a Switch/GShard load-balancing loss.

The null action (action dropout in training, the unconditional branch of action-free guidance)
is defined once here: :func:`null_action_values` / :func:`null_actions_like`.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from astra_gym.world_model.conditioning import ActionInput
from astra_gym.world_model.config import AstraTransformerConfig

__all__ = [
    "ModalityProcessor",
    "ActionExperts",
    "RoutingResult",
    "route",
    "encode_actions",
    "flag_columns",
    "null_action_values",
    "null_actions_like",
    "drop_actions",
    "make_action_rows",
]


class ModalityProcessor(nn.Module):
    """Projects one modality's raw action rows into the unified action space.

    Args:
        in_dim: Raw width of the modality, including its trailing past/current flag.
        unified_dim: Width U of the unified action space.

    The single Linear sits in ``projector[0]`` so that the state-dict key is
    ``{name}_processor.projector.0.weight`` as in the release.
    """

    def __init__(self, in_dim: int, unified_dim: int) -> None:
        super().__init__()
        self.projector = nn.Sequential(nn.Linear(in_dim, unified_dim))

    def forward(self, actions: Tensor) -> Tensor:
        """Maps ``actions`` [..., in_dim] to unified features [..., U]."""
        return self.projector(actions)


class ActionExperts(nn.Module):
    """The experts of one transformer block, mixed by routing weights.

    Args:
        unified_dim: Width U of the unified action space.
        dim: Hidden width of the transformer.
        num_experts: Number of experts E.
        hidden: 0 -> each expert is ``Sequential(Linear(U, dim))`` (the release, key
            ``experts.{e}.0.weight``); > 0 -> ``Sequential(Linear(U, hidden), GELU(), Linear(hidden, dim))``.
    """

    def __init__(self, unified_dim: int, dim: int, num_experts: int, hidden: int = 0) -> None:
        super().__init__()
        if num_experts < 1:
            raise ValueError(f"num_experts={num_experts} must be >= 1")
        if hidden < 0:
            raise ValueError(f"hidden={hidden} must be 0 (Linear experts) or a positive MLP width")
        self.experts = nn.ModuleList(_make_expert(unified_dim, dim, hidden) for _ in range(num_experts))

    def forward(self, unified: Tensor, weights: Tensor, active: Sequence[int] | None = None) -> Tensor:
        """Mixes the experts: ``sum_e weights[:, e:e+1] * expert_e(unified)``.

        Experts whose weight column is entirely zero are skipped; they would only add zeros, so the
        result is identical to evaluating every expert.

        Args:
            unified: [N, U] unified action features.
            weights: [N, E] routing weights.
            active: Optional expert indices known to have a non-zero weight (e.g.
                :attr:`RoutingResult.active_experts`); computed from ``weights`` when None, which
                costs one device-to-host sync.

        Returns:
            [N, dim] action features.
        """
        num_experts = len(self.experts)
        if weights.shape != (unified.shape[0], num_experts):
            raise ValueError(
                f"weights must be [N, E]=[{unified.shape[0]}, {num_experts}] to match unified "
                f"{tuple(unified.shape)}, got {tuple(weights.shape)}"
            )
        if active is None:
            active = _active_experts(weights)
        out = None
        for e in active:
            y = self.experts[e](unified)  # [N, dim]
            term = weights[:, e : e + 1].to(y.dtype) * y
            out = term if out is None else out + term
        if out is None:
            last = self.experts[0][-1]
            return unified.new_zeros(unified.shape[0], last.out_features)
        return out


def _make_expert(unified_dim: int, dim: int, hidden: int) -> nn.Sequential:
    """One expert: a Linear (hidden == 0) or a GELU MLP."""
    if hidden == 0:
        return nn.Sequential(nn.Linear(unified_dim, dim))
    return nn.Sequential(nn.Linear(unified_dim, hidden), nn.GELU(), nn.Linear(hidden, dim))


def _active_experts(weights: Tensor) -> tuple[int, ...]:
    """Indices of the expert columns of ``weights`` [..., E] holding at least one non-zero weight."""
    used = weights.reshape(-1, weights.shape[-1]).ne(0).any(dim=0)  # [E]
    return tuple(int(e) for e in torch.nonzero(used).flatten().tolist())


@dataclass(frozen=True, eq=False)
class RoutingResult:
    """Routing decision for one forward pass (shared by all blocks); never stored on a module.

    Attributes:
        weights: [B, A, E] float32 weight of each expert for each action row (zeros off the top-k).
        balance_loss: Scalar load-balancing loss E * sum_e f_e * P_e over valid rows;
            differentiable through P for learned routing, a constant 0 for hard routing.
        expert_load: [E] detached f_e, the fraction of (row, slot) assignments sent to each expert.
        router_prob: [E] detached P_e, the mean router probability of each expert (equals
            ``expert_load`` for hard routing).
        active_experts: Experts with at least one non-zero weight, for
            :meth:`ActionExperts.forward` to skip the others without a sync per block.
    """

    weights: Tensor
    balance_loss: Tensor
    expert_load: Tensor
    router_prob: Tensor
    active_experts: tuple[int, ...]


def route(
    config: AstraTransformerConfig,
    router: nn.Linear | None,
    unified: Tensor,
    modality: Tensor,
    valid: Tensor | None = None,
) -> RoutingResult:
    """Routes every unified action row to experts.

    Args:
        config: Model config (``routing``, ``top_k``, ``num_experts``, modality -> expert map).
        router: Linear(U, E) router; required for learned routing, ignored for hard routing.
        unified: [B, A, U] unified action features.
        modality: [B] long modality index of each batch row (into ``config.modalities``).
        valid: [B, A] bool rows that count in the balance loss and the statistics (e.g. the rows
            actually read by tokens); None = all rows.

    Returns:
        The :class:`RoutingResult`.
    """
    batch, rows, _ = unified.shape
    _check_modality(config, modality, batch)
    if valid is None:
        valid = torch.ones(batch, rows, dtype=torch.bool, device=unified.device)
    if valid.shape != (batch, rows):
        raise ValueError(f"valid must be [B, A]=[{batch}, {rows}] bool, got {tuple(valid.shape)}")
    if config.routing == "hard":
        return _route_hard(config, unified, modality, valid)
    if router is None:
        raise ValueError("routing='learned' needs the global_router Linear(U, E); got router=None")
    return _route_learned(config, router, unified, valid)


def _check_modality(config: AstraTransformerConfig, modality: Tensor, batch: int) -> None:
    """Raises a ValueError unless ``modality`` is [B] with indices into ``config.modalities``."""
    if modality.shape != (batch,):
        raise ValueError(f"modality must be [B]={batch} indices, got shape {tuple(modality.shape)}")
    count = len(config.modalities)
    if batch and (int(modality.min()) < 0 or int(modality.max()) >= count):
        raise ValueError(
            f"modality indices {modality.tolist()} out of range: this model has {count} modalities "
            f"{[m.name for m in config.modalities]}"
        )


def _route_hard(config: AstraTransformerConfig, unified: Tensor, modality: Tensor, valid: Tensor) -> RoutingResult:
    """Release routing: weight ``top_k`` on the modality's fixed expert (top_k copies summed)."""
    expert_of = torch.tensor([m.expert for m in config.modalities], device=unified.device)
    expert = expert_of[modality]  # [B]
    one_hot = F.one_hot(expert, config.num_experts).float()  # [B, E]
    weights = (config.top_k * one_hot)[:, None, :].expand(-1, unified.shape[1], -1)  # [B, A, E]
    load = _masked_mean(one_hot[:, None, :].expand_as(weights), valid)  # [E]
    zero = torch.zeros((), device=unified.device)
    return RoutingResult(weights.contiguous(), zero, load, load, _active_experts(one_hot))


def _route_learned(config: AstraTransformerConfig, router: nn.Linear, unified: Tensor, valid: Tensor) -> RoutingResult:
    """Paper routing: top-k of the router softmax, renormalised, with a load-balancing loss."""
    logits = router(unified).float()  # [B, A, E]
    probs = logits.softmax(dim=-1)
    top_logits, top_index = logits.topk(config.top_k, dim=-1)  # [B, A, k]
    weights = torch.zeros_like(logits).scatter(-1, top_index, top_logits.softmax(dim=-1))
    assigned = F.one_hot(top_index, config.num_experts).float().mean(dim=-2)  # [B, A, E], rows sum to 1
    load = _masked_mean(assigned, valid)  # f_e, [E]
    mean_prob = _masked_mean(probs, valid)  # P_e, [E]
    balance = config.num_experts * (load * mean_prob).sum()
    return RoutingResult(weights, balance, load, mean_prob.detach(), _active_experts(weights))


def _masked_mean(x: Tensor, valid: Tensor) -> Tensor:
    """Mean of ``x`` [B, A, E] over the rows where ``valid`` [B, A] is True; zeros when none are."""
    mask = valid.to(x.dtype)[..., None]  # [B, A, 1]
    return (x * mask).sum(dim=(0, 1)) / mask.sum().clamp(min=1.0)


def encode_actions(
    processors: Mapping[str, ModalityProcessor], config: AstraTransformerConfig, actions: ActionInput
) -> Tensor:
    """Projects every batch row with its own modality's processor.

    Each modality's processor runs only on its own batch rows and reads the first ``spec.dim``
    columns of :attr:`ActionInput.values`, so mixed-modality batches give, per row, exactly what
    that row gives alone.

    Args:
        processors: Modality name -> its :class:`ModalityProcessor`.
        config: Model config (the modality list).
        actions: Raw action rows [B, A, D] and modality [B].

    Returns:
        [B, A, U] unified action features.
    """
    values, modality = actions.values, actions.modality
    _check_modality(config, modality, values.shape[0])
    out = None
    for index, spec in enumerate(config.modalities):
        rows = torch.nonzero(modality == index).flatten()  # [b_m]
        if rows.numel() == 0:
            continue
        processor = _processor_for(processors, spec.name)
        if values.shape[-1] < spec.dim:
            raise ValueError(
                f"modality {spec.name!r} needs {spec.dim} action columns but ActionInput.values has "
                f"{values.shape[-1]}; pad the rows with make_action_rows(..., width={spec.dim})"
            )
        unified = processor(values[rows, :, : spec.dim])  # [b_m, A, U]
        if out is None:
            out = unified.new_zeros(values.shape[0], values.shape[1], unified.shape[-1])
        out = out.index_copy(0, rows, unified.to(out.dtype))
    if out is None:
        return values.new_zeros(values.shape[0], values.shape[1], config.unified_dim)
    return out


def _processor_for(processors: Mapping[str, ModalityProcessor], name: str) -> ModalityProcessor:
    """Looks up ``processors[name]`` with an error listing the available ones."""
    try:
        return processors[name]
    except KeyError:
        raise ValueError(f"no processor for modality {name!r}; processors exist for {sorted(processors)}") from None


def flag_columns(config: AstraTransformerConfig, modality: Tensor) -> Tensor:
    """Column of the past/current flag of each batch row: ``spec.dim - 1`` of its modality.

    Args:
        config: Model config.
        modality: [B] long modality indices.

    Returns:
        [B] long flag columns (pass to :func:`~astra_gym.world_model.framepack.pack`).
    """
    _check_modality(config, modality, modality.shape[0])
    columns = torch.tensor([m.dim - 1 for m in config.modalities], device=modality.device)
    return columns[modality]


def null_action_values(
    batch: int, rows: int, width: int, device: torch.device | str | None = None, dtype: torch.dtype = torch.float32
) -> Tensor:
    """The null action: every value zero, **including the past/current flag** (as in the release).

    This single definition is used both by action dropout in training (:func:`drop_actions`) and
    by the unconditional branch of action-free guidance (:func:`null_actions_like`), so the model
    is asked at inference exactly what it was taught during dropout. It still goes through the
    modality's processor (whose bias is therefore the "no action" feature), unlike an
    ``action_row`` of -1, which gives a zero feature.

    Returns:
        [batch, rows, width] zeros.
    """
    return torch.zeros(batch, rows, width, device=device, dtype=dtype)


def null_actions_like(actions: ActionInput) -> ActionInput:
    """``actions`` with every row replaced by the null action (same modality, shape, dtype)."""
    values = actions.values
    null = null_action_values(*values.shape, device=values.device, dtype=values.dtype)
    return ActionInput(values=null, modality=actions.modality)


def drop_actions(actions: ActionInput, p: float, generator: torch.Generator) -> tuple[ActionInput, Tensor]:
    """Action dropout: replaces whole batch rows' action sequences by the null action.

    Args:
        actions: Action rows [B, A, D] and modality [B].
        p: Probability of dropping each batch row (release: 0.05).
        generator: Source of the B uniform draws (drawn on the generator's device).

    Returns:
        (actions with the dropped rows nulled, dropped mask [B] bool).
    """
    if not 0.0 <= p <= 1.0:
        raise ValueError(f"action dropout probability p={p} must be in [0, 1]")
    values = actions.values
    draws = torch.rand(values.shape[0], generator=generator, device=generator.device)  # [B]
    dropped = (draws < p).to(values.device)
    null = null_action_values(*values.shape, device=values.device, dtype=values.dtype)
    kept = torch.where(dropped[:, None, None], null, values)
    return ActionInput(values=kept, modality=actions.modality), dropped


def make_action_rows(values: Tensor, flags: Tensor | float, width: int) -> Tensor:
    """Appends the past/current flag to raw action vectors and zero-pads them to ``width``.

    Args:
        values: [B, A, d] raw action vectors of one modality (without flag).
        flags: [B, A] flags (1 = history latent, 0 = latent to generate) or one scalar for all.
        width: Target width D >= d + 1 (the widest modality of the batch).

    Returns:
        [B, A, width] rows: ``[values, flag, 0, ...]``.
    """
    if values.ndim != 3:
        raise ValueError(f"values must be [B, A, d], got shape {tuple(values.shape)}")
    if width < values.shape[-1] + 1:
        needed = values.shape[-1] + 1
        raise ValueError(f"width={width} cannot hold {needed - 1} values plus the flag; use width >= {needed}")
    flag = torch.as_tensor(flags, dtype=values.dtype, device=values.device).expand(values.shape[:2])  # [B, A]
    rows = torch.cat([values, flag[..., None]], dim=-1)  # [B, A, d + 1]
    return F.pad(rows, (0, width - rows.shape[-1]))
