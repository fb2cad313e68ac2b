"""Flow-matching Euler sampler with action-free guidance (AFG) for one chunk of latents.

The release samples each chunk with 50 Euler steps on a shift-5 sigma schedule (astra-release.md
§6.5-6.6). With AFG the velocity is ``v_u + s * (v_c - v_u)``, where ``v_c`` is the prediction with
the real actions and ``v_u`` the one with null (all-zero) actions. Differences from the release:

* The model receives the timestep ``1000 * sigma`` in float32 (the release feeds a bf16 copy, bug 7).
* All noise comes from caller-supplied ``torch.Generator`` objects (the release never seeds, bug 15).
* The conditional and unconditional branches run as one forward of a doubled batch by default.
* ``use_history_cache=True`` (models trained with ``history_attention="causal"`` only) computes
  the history keys/values once per chunk (one cache per AFG branch, batched like the branches)
  and runs only the target tokens at every step; the result equals the uncached loop.

The model is any module with the transformer's signature
``model(latents [B, C, F, H, W], timestep [B], context=..., frame_pack=..., actions=...) -> velocity``.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import torch
from torch import Tensor, nn

from astra_gym.world_model.conditioning import ActionInput, FramePackInputs, TokenGroup

__all__ = [
    "SamplerConfig",
    "flow_sigmas",
    "broadcast_level",
    "euler_step",
    "guided_velocity",
    "draw_noise",
    "cat_frame_packs",
    "cat_actions",
    "sample_chunk",
]

Generators = torch.Generator | Sequence[torch.Generator]
VelocityFn = Callable[[Tensor, Tensor], Tensor]


@dataclass(frozen=True)
class SamplerConfig:
    """Settings of :func:`sample_chunk`.

    Attributes:
        num_steps: Euler steps per chunk (release: 50).
        shift: Timestep shift of :func:`flow_sigmas` (release: 5.0).
        guidance_scale: AFG scale s in ``v_u + s * (v_c - v_u)``. 1.0 turns guidance off (one
            conditional forward per step), 0.0 samples action-free (one forward with null actions);
            the release's AFG default is 2.0.
        batch_guidance: If True, the two AFG branches run as one forward of batch 2B; if False, as
            two forwards of batch B (same result, for benchmarks and memory-bound cases).
    """

    num_steps: int = 50
    shift: float = 5.0
    guidance_scale: float = 1.0
    batch_guidance: bool = True

    def __post_init__(self) -> None:
        if self.num_steps < 1:
            raise ValueError(f"SamplerConfig.num_steps={self.num_steps} must be >= 1")
        if not self.shift > 0:
            raise ValueError(f"SamplerConfig.shift={self.shift} must be > 0")
        if not math.isfinite(self.guidance_scale):
            raise ValueError(f"SamplerConfig.guidance_scale={self.guidance_scale} must be finite")

    def replace(self, **changes) -> SamplerConfig:
        """Returns a copy with ``changes`` applied (validated)."""
        return dataclasses.replace(self, **changes)


def flow_sigmas(
    num_steps: int,
    shift: float = 5.0,
    sigma_max: float = 1.0,
    sigma_min: float = 0.0,
    device: torch.device | str | None = None,
) -> Tensor:
    """Shifted flow-matching noise levels, high to low, with a final 0.

    ``s = linspace(sigma_max, sigma_min, num_steps + 1)[:num_steps]`` and
    ``sigma = shift * s / (1 + (shift - 1) * s)``, then 0 is appended (DiffSynth's
    ``extra_one_step=True``). For 50 steps and shift 5: 1.0, 0.9959, 0.9917, ..., 0.1724, 0.0926, 0.

    Args:
        num_steps: Number of Euler steps (>= 1).
        shift: Timestep shift (> 0); 1 gives the unshifted linear schedule.
        sigma_max: Unshifted start level in (0, 1].
        sigma_min: Unshifted level the linspace would end at (excluded), in [0, sigma_max).
        device: Device of the result.

    Returns:
        [num_steps + 1] float32 sigmas in [0, 1], decreasing, last entry 0.
    """
    if num_steps < 1:
        raise ValueError(f"num_steps={num_steps} must be >= 1")
    if not 0.0 <= sigma_min < sigma_max <= 1.0:
        raise ValueError(f"need 0 <= sigma_min < sigma_max <= 1, got sigma_min={sigma_min}, sigma_max={sigma_max}")
    s = torch.linspace(sigma_max, sigma_min, num_steps + 1, dtype=torch.float64)[:num_steps]
    sigmas = shift * s / (1.0 + (shift - 1.0) * s)
    sigmas = torch.cat([sigmas, sigmas.new_zeros(1)])
    return sigmas.to(device=device, dtype=torch.float32)


def broadcast_level(value: Tensor | float, x: Tensor) -> Tensor:
    """A float, 0-d or [B] noise level as a float32 tensor broadcastable to ``x`` [B, ...]."""
    value = torch.as_tensor(value, dtype=torch.float32, device=x.device)
    if value.ndim == 1:
        value = value.view(-1, *([1] * (x.ndim - 1)))  # [B] -> [B, 1, ..., 1]
    return value


def euler_step(x: Tensor, v: Tensor, sigma: Tensor | float, sigma_next: Tensor | float) -> Tensor:
    """One Euler step of the flow ODE: ``x + v * (sigma_next - sigma)``, in float32.

    Args:
        x: [B, ...] current sample at noise level ``sigma``.
        v: Velocity (noise - data direction) with the shape of ``x``; any float dtype.
        sigma: Current level: a float, a 0-d tensor or a [B] tensor (per-row levels).
        sigma_next: Next (lower) level, same forms as ``sigma``.

    Returns:
        float32 tensor shaped like ``x`` at level ``sigma_next``.
    """
    if v.shape != x.shape:
        raise ValueError(f"velocity shape {tuple(v.shape)} does not match sample shape {tuple(x.shape)}")
    dt = broadcast_level(sigma_next, x) - broadcast_level(sigma, x)
    return x.float() + v.float() * dt


def guided_velocity(v_cond: Tensor, v_uncond: Tensor, scale: float) -> Tensor:
    """Action-free guidance: ``v_uncond + scale * (v_cond - v_uncond)`` in float32.

    Args:
        v_cond: Velocity predicted with the real actions, [B, C, F, H, W].
        v_uncond: Velocity predicted with null actions, same shape.
        scale: Guidance scale; 1 returns ``v_cond``, 0 returns ``v_uncond``.

    Returns:
        float32 guided velocity, same shape.
    """
    v_uncond = v_uncond.float()
    return v_uncond + scale * (v_cond.float() - v_uncond)


def draw_noise(
    shape: Sequence[int],
    generator: Generators,
    device: torch.device | str | None = None,
    dtype: torch.dtype = torch.float32,
) -> Tensor:
    """Standard normal noise drawn from the given generator(s).

    A list of generators draws row i from ``generator[i]`` alone (as diffusers' ``randn_tensor``),
    so a row's noise does not depend on which other rows share the batch. Noise is drawn on each
    generator's device and then moved to ``device``.

    Args:
        shape: Full shape [B, ...].
        generator: One generator for the whole tensor, or B per-row generators.
        device: Device of the result (default: the generator's device).
        dtype: dtype of the result.

    Returns:
        [B, ...] noise tensor.
    """
    shape = tuple(int(n) for n in shape)
    if isinstance(generator, torch.Generator):
        noise = torch.randn(shape, generator=generator, device=generator.device, dtype=torch.float32)
        return noise.to(device=device or generator.device, dtype=dtype)
    generators = list(generator)
    if len(generators) != shape[0]:
        raise ValueError(f"got {len(generators)} generators for batch size {shape[0]}; pass one per row")
    rows = [torch.randn((1, *shape[1:]), generator=g, device=g.device, dtype=torch.float32) for g in generators]
    return torch.cat([r.to(device=device or generators[0].device) for r in rows]).to(dtype)


def _cat_group(groups: Sequence[TokenGroup]) -> TokenGroup:
    """Concatenates one history group of several inputs along batch (scales must agree)."""
    first = groups[0]
    if any(g.scale != first.scale or g.spatial_scale != first.spatial_scale for g in groups):
        raise ValueError("cannot concatenate token groups with different scale or spatial_scale")
    return TokenGroup(
        scale=first.scale,
        latents=torch.cat([g.latents for g in groups]),
        frame_pos=torch.cat([g.frame_pos for g in groups]),
        action_row=torch.cat([g.action_row for g in groups]),
        valid=torch.cat([g.valid for g in groups]),
        spatial_scale=first.spatial_scale,
    )


def cat_frame_packs(packs: Sequence[FramePackInputs]) -> FramePackInputs:
    """Concatenates packed inputs along batch; all must have the same group layout and token counts.

    Args:
        packs: Inputs with batches B_1, ..., B_n.

    Returns:
        Inputs with batch B_1 + ... + B_n, rows in the given order.
    """
    if len({len(p.history) for p in packs}) != 1:
        raise ValueError("cannot concatenate FramePackInputs with different numbers of history groups")
    history = tuple(_cat_group(groups) for groups in zip(*(p.history for p in packs), strict=True))
    return FramePackInputs(
        history=history,
        target_frame_pos=torch.cat([p.target_frame_pos for p in packs]),
        target_action_row=torch.cat([p.target_action_row for p in packs]),
    )


def cat_actions(actions: Sequence[ActionInput]) -> ActionInput:
    """Concatenates action inputs along batch (same A rows and D columns).

    Args:
        actions: Inputs with values [B_i, A, D] and modality [B_i].

    Returns:
        ActionInput with values [sum B_i, A, D] and modality [sum B_i].
    """
    return ActionInput(
        values=torch.cat([a.values for a in actions]),
        modality=torch.cat([a.modality for a in actions]),
    )


def _cat_context(context: Tensor | None) -> Tensor | None:
    """[B, L, text_dim] -> [2B, L, text_dim] (None stays None)."""
    return None if context is None else torch.cat([context, context])


def _default_null_actions(actions: ActionInput) -> ActionInput:
    """The transformer's null action (all zeros, flag included), from :mod:`action_encoders`."""
    from astra_gym.world_model.action_encoders import null_actions_like

    return null_actions_like(actions)


def _call(
    model: nn.Module,
    x: Tensor,
    sigma: Tensor,
    context: Tensor | None,
    frame_pack: FramePackInputs | None,
    actions: ActionInput | None,
    cache: object | None = None,
) -> Tensor:
    """One model forward at level ``sigma`` (0-d) with timestep ``1000 * sigma`` [B] float32.

    ``cache`` (a :class:`~astra_gym.world_model.kv_cache.HistoryKVCache`) is passed as
    ``history_cache`` only when given, so stand-in models need not accept it.
    """
    timestep = (1000.0 * sigma).to(device=x.device, dtype=torch.float32).expand(x.shape[0]).contiguous()
    extra = {} if cache is None else {"history_cache": cache}
    v = model(x, timestep, context=context, frame_pack=frame_pack, actions=actions, **extra)
    return v.float()


def _history_cache(
    model: nn.Module,
    use_cache: bool,
    context: Tensor | None,
    frame_pack: FramePackInputs | None,
    actions: ActionInput | None,
) -> object | None:
    """The model's history cache of one branch (None when caching is off or there is no history)."""
    if not use_cache:
        return None
    if not hasattr(model, "encode_history"):
        raise ValueError(f"use_history_cache=True needs a model with encode_history; got {type(model).__name__}")
    if frame_pack is None:
        return None
    return model.encode_history(context, frame_pack, actions)


def _make_velocity_fn(
    model: nn.Module,
    context: Tensor | None,
    frame_pack: FramePackInputs | None,
    actions: ActionInput | None,
    null_actions: ActionInput | None,
    config: SamplerConfig,
    use_cache: bool = False,
) -> VelocityFn:
    """Returns ``velocity(x [B, C, F, H, W], sigma []) -> [B, C, F, H, W]`` implementing ``config``.

    With ``use_cache`` each branch's history cache is built here, once, and reused by every call.
    """
    scale = config.guidance_scale
    if scale == 1.0:
        cache = _history_cache(model, use_cache, context, frame_pack, actions)
        return lambda x, sigma: _call(model, x, sigma, context, frame_pack, actions, cache)
    if actions is None:
        raise ValueError(f"guidance_scale={scale} needs actions; pass them, or set guidance_scale=1.0")
    null = _default_null_actions(actions) if null_actions is None else null_actions
    if scale == 0.0:
        cache = _history_cache(model, use_cache, context, frame_pack, null)
        return lambda x, sigma: _call(model, x, sigma, context, frame_pack, null, cache)
    if not config.batch_guidance:
        cache_c = _history_cache(model, use_cache, context, frame_pack, actions)
        cache_u = _history_cache(model, use_cache, context, frame_pack, null)
        return lambda x, sigma: guided_velocity(
            _call(model, x, sigma, context, frame_pack, actions, cache_c),
            _call(model, x, sigma, context, frame_pack, null, cache_u),
            scale,
        )
    context2 = _cat_context(context)
    frame_pack2 = None if frame_pack is None else cat_frame_packs([frame_pack, frame_pack])
    actions2 = cat_actions([actions, null])
    cache2 = _history_cache(model, use_cache, context2, frame_pack2, actions2)  # both branches, one pass

    def batched(x: Tensor, sigma: Tensor) -> Tensor:
        v = _call(model, torch.cat([x, x]), sigma, context2, frame_pack2, actions2, cache2)  # [2B, C, F, H, W]
        v_cond, v_uncond = v.chunk(2)  # 2 x [B, C, F, H, W]
        return guided_velocity(v_cond, v_uncond, scale)

    return batched


@torch.no_grad()
def sample_chunk(
    model: nn.Module,
    noise: Tensor | Sequence[int],
    *,
    context: Tensor | None,
    frame_pack: FramePackInputs | None,
    actions: ActionInput | None,
    config: SamplerConfig,
    generator: Generators | None = None,
    null_actions: ActionInput | None = None,
    device: torch.device | str | None = None,
    use_history_cache: bool = False,
) -> Tensor:
    """Denoises one chunk of latents with Euler steps and optional action-free guidance.

    Args:
        model: Velocity model (the transformer or a stand-in with its forward signature). It is
            called with float32 latents; wrap the call in autocast to run it in bf16.
        noise: Initial noise [B, C, F, H, W] at sigma = 1, or its shape (then drawn with
            :func:`draw_noise` from ``generator`` onto ``device``).
        context: [B, L, text_dim] text features, or None.
        frame_pack: Packed history for batch B, or None.
        actions: Actions for batch B, or None (only without guidance).
        config: Steps, shift and guidance scale.
        generator: One generator or B per-row generators; required when ``noise`` is a shape.
        null_actions: Actions of the unconditional branch; default ``null_actions_like(actions)``
            (all zeros, flag included) from :mod:`astra_gym.world_model.action_encoders`.
        device: Device of drawn noise (ignored when a noise tensor is given).
        use_history_cache: Compute the history keys/values once per chunk (per AFG branch) with
            ``model.encode_history`` and run only the target tokens at each step. Needs a model
            with ``history_attention="causal"`` (the release's full attention raises); same result.

    Returns:
        [B, C, F, H, W] float32 clean latents (sigma = 0).
    """
    if not isinstance(noise, Tensor):
        if generator is None:
            raise ValueError("sample_chunk got a noise shape but no generator; pass generator= or a noise tensor")
        noise = draw_noise(noise, generator, device=device)
    if noise.ndim != 5:
        raise ValueError(f"noise must be [B, C, F, H, W], got shape {tuple(noise.shape)}")
    velocity = _make_velocity_fn(model, context, frame_pack, actions, null_actions, config, use_history_cache)
    sigmas = flow_sigmas(config.num_steps, config.shift, device=noise.device)
    x = noise.float()
    for i in range(config.num_steps):
        x = euler_step(x, velocity(x, sigmas[i]), sigmas[i], sigmas[i + 1])
    return x
