"""Renaming between diffusers' ``WanTransformer3DModel`` and Wan's original parameter names.

:class:`~astra_gym.world_model.transformer.AstraTransformer` uses Wan's original ("civitai")
names, which is what Astra's release checkpoint holds. diffusers stores the same tensors with the
same shapes under other names; this module maps between the two, one module path at a time.
Only the text-to-video Wan2.1 layout is covered (no image cross-attention, no VACE).

Keys of Astra's additions (``blocks.N.projector``, ``blocks.N.cam_encoder``, ``blocks.N.moe``,
``clean_x_embedder``, ``*_processor``, ``global_router``) are the same in both namings and pass
through unchanged. Any other key that is not a Wan key raises a ``KeyError`` naming it.
"""

from __future__ import annotations

import re
from collections.abc import Mapping

__all__ = ["diffusers_to_original", "original_to_diffusers", "is_astra_key"]

# diffusers module path -> original module path, outside the blocks.
_TOP_MODULES: dict[str, str] = {
    "patch_embedding": "patch_embedding",
    "condition_embedder.time_embedder.linear_1": "time_embedding.0",
    "condition_embedder.time_embedder.linear_2": "time_embedding.2",
    "condition_embedder.time_proj": "time_projection.1",
    "condition_embedder.text_embedder.linear_1": "text_embedding.0",
    "condition_embedder.text_embedder.linear_2": "text_embedding.2",
    "proj_out": "head.head",
}


def _attention_modules(diffusers_name: str, original_name: str) -> dict[str, str]:
    """Module paths of one attention layer: diffusers ``attn1.to_q`` -> original ``self_attn.q`` etc."""
    pairs = (("to_q", "q"), ("to_k", "k"), ("to_v", "v"), ("to_out.0", "o"))
    pairs += (("norm_q", "norm_q"), ("norm_k", "norm_k"))
    return {f"{diffusers_name}.{d}": f"{original_name}.{o}" for d, o in pairs}


# diffusers module path -> original module path, inside ``blocks.N``.
_BLOCK_MODULES: dict[str, str] = {
    **_attention_modules("attn1", "self_attn"),
    **_attention_modules("attn2", "cross_attn"),
    "norm2": "norm3",  # the affine LayerNorm before cross-attention (diffusers' norm3 has no parameters)
    "ffn.net.0.proj": "ffn.0",
    "ffn.net.2": "ffn.2",
}

# Bare parameters (no .weight/.bias suffix): diffusers name -> original name.
_TOP_PARAMS: dict[str, str] = {"scale_shift_table": "head.modulation"}
_BLOCK_PARAMS: dict[str, str] = {"scale_shift_table": "modulation"}

_BLOCK_KEY = re.compile(r"^blocks\.(\d+)\.(.+)$")
_ASTRA_KEY = re.compile(
    r"^(blocks\.\d+\.(projector|cam_encoder|moe)\.|clean_x_embedder\.|[A-Za-z_]\w*_processor\.|global_router\.)"
)


def is_astra_key(key: str) -> bool:
    """True for parameters of Astra's additions (named identically in both layouts)."""
    return _ASTRA_KEY.match(key) is not None


def _rename(
    key: str,
    top_modules: Mapping[str, str],
    block_modules: Mapping[str, str],
    top_params: Mapping[str, str],
    block_params: Mapping[str, str],
) -> str | None:
    """Renames one key with the given module/parameter tables; None when no table covers it."""
    block = _BLOCK_KEY.match(key)
    prefix, rest = (f"blocks.{block.group(1)}.", block.group(2)) if block else ("", key)
    modules, params = (block_modules, block_params) if block else (top_modules, top_params)
    if rest in params:
        return prefix + params[rest]
    module, _, leaf = rest.rpartition(".")
    if leaf in ("weight", "bias") and module in modules:
        return f"{prefix}{modules[module]}.{leaf}"
    return None


def _convert(state_dict: Mapping, tables: tuple, source: str, target: str) -> dict:
    """Applies :func:`_rename` to every key; Astra keys pass through; anything else raises."""
    converted, unknown = {}, []
    for key, value in state_dict.items():
        new_key = key if is_astra_key(key) else _rename(key, *tables)
        if new_key is None:
            unknown.append(key)
            continue
        if new_key in converted:
            raise KeyError(f"{source} keys map twice onto {target} key {new_key!r}; the state dict mixes both namings")
        converted[new_key] = value
    if unknown:
        shown = ", ".join(repr(k) for k in unknown[:8]) + (" ..." if len(unknown) > 8 else "")
        raise KeyError(
            f"{len(unknown)} key(s) are neither text-to-video Wan2.1 {source} keys nor Astra keys: {shown}. "
            f"Pass a Wan2.1 T2V transformer state dict in {source} naming (image-to-video and VACE "
            "checkpoints are not supported); strip any wrapper prefix such as 'model.diffusion_model.' first."
        )
    return converted


def _invert(table: Mapping[str, str]) -> dict[str, str]:
    """The reverse mapping of a one-to-one renaming table."""
    return {v: k for k, v in table.items()}


def diffusers_to_original(state_dict: Mapping) -> dict:
    """Renames a diffusers ``WanTransformer3DModel`` state dict to Wan's original names.

    Args:
        state_dict: diffusers-named tensors (Astra keys may be mixed in).

    Returns:
        A new dict with the same tensors (not copied) under original names.

    Raises:
        KeyError: A key is neither a diffusers Wan2.1 T2V key nor an Astra key.
    """
    tables = (_TOP_MODULES, _BLOCK_MODULES, _TOP_PARAMS, _BLOCK_PARAMS)
    return _convert(state_dict, tables, "diffusers", "original")


def original_to_diffusers(state_dict: Mapping) -> dict:
    """Renames an original-Wan (or Astra) state dict to diffusers' ``WanTransformer3DModel`` names.

    Args:
        state_dict: Original-named tensors (Astra keys pass through unchanged).

    Returns:
        A new dict with the same tensors (not copied) under diffusers names.

    Raises:
        KeyError: A key is neither an original Wan2.1 T2V key nor an Astra key.
    """
    tables = tuple(_invert(t) for t in (_TOP_MODULES, _BLOCK_MODULES, _TOP_PARAMS, _BLOCK_PARAMS))
    return _convert(state_dict, tables, "original", "diffusers")
