"""The authors' released Astra checkpoint and plain Wan2.1 transformers, loaded into our model.

* :func:`load_astra_release`: the authors' ``diffusion_pytorch_model.ckpt`` (flat ``train_first``
  state dict, or a Lightning checkpoint whose ``state_dict`` keys carry a ``pipe.dit.`` prefix, or
  a ``.safetensors`` file), optionally completed with the Wan2.1 base weights from ``wan_path``.
  The architecture (E, U, widths, depth, processors) is read from the tensors, and the load is
  strict: every missing, unexpected or mis-shaped key is named (astra-release.md §2.5).
* :func:`load_wan_transformer`: a plain Wan2.1 T2V DiT (original or diffusers layout) with the
  Astra additions at their initialisation.
* ``python -m astra_gym.world_model.release_checkpoint``: converts the release (plus a Wan2.1
  folder) once, offline, into our own format (:func:`~astra_gym.world_model.checkpoints.save_pretrained`,
  ``float16`` or ``bfloat16`` weights, the inferred config), which then loads without any format
  sniffing or base-weight merging.

Files are read by :mod:`astra_gym.world_model.checkpoints` (pickles only with ``weights_only=True``).
"""

from __future__ import annotations

import copy
import logging
import math
import os
import re
import sys
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

import torch
from torch import Tensor

from astra_gym.utils.cli_args import arg, parse_config
from astra_gym.world_model.checkpoints import (
    BLOCK_KEY,
    CheckpointError,
    build_model,
    finalize,
    load_into,
    only_tensors,
    read_state_dict,
    save_pretrained,
    summarize_keys,
)
from astra_gym.world_model.config import RELEASE_MODALITIES, AstraTransformerConfig, ModalitySpec, get_preset
from astra_gym.world_model.wan_keys import diffusers_to_original, is_astra_key

if TYPE_CHECKING:
    from astra_gym.world_model.transformer import AstraTransformer

__all__ = [
    "FillRule",
    "RELEASE_FILL_RULES",
    "read_release_state_dict",
    "read_wan_state_dict",
    "infer_release_config",
    "load_astra_release",
    "load_wan_transformer",
    "convert",
]

logger = logging.getLogger(__name__)

RELEASE_PRESET = "wan2.1-1.3b"
LIGHTNING_PREFIX = "pipe.dit."
# ComfyUI-style repackagings of Wan put the DiT under this prefix.
_WAN_WRAPPER_PREFIX = "model.diffusion_model."
_WAN_FILE_NAMES = ("diffusion_pytorch_model.safetensors.index.json", "diffusion_pytorch_model.safetensors")

_EXPERT_KEY = re.compile(r"^blocks\.0\.moe\.experts\.(\d+)\.0\.weight$")
_PROCESSOR_KEY = re.compile(r"^([A-Za-z_]\w*)_processor\.projector\.0\.weight$")
_CLEAN_EMBEDDERS = ((1, "proj"), (2, "proj_2x"), (4, "proj_4x"))


# --------------------------------------------------------------------------------------------
# Reading the release
# --------------------------------------------------------------------------------------------


def _strip_prefix(state: Mapping[str, Tensor], prefix: str, source: str) -> dict[str, Tensor]:
    """When any key has ``prefix``, keeps only those keys, without it, and logs what was dropped."""
    if not any(key.startswith(prefix) for key in state):
        return dict(state)
    dropped = [key for key in state if not key.startswith(prefix)]
    if dropped:
        logger.info("%s: ignoring %s outside %r", source, summarize_keys(dropped), prefix)
    return {key[len(prefix) :]: value for key, value in state.items() if key.startswith(prefix)}


def read_release_state_dict(ckpt_path: str | os.PathLike) -> dict[str, Tensor]:
    """Reads the authors' checkpoint as a flat state dict with Wan/Astra key names.

    Accepts the flat format written by ``train_first.py`` (``dit.state_dict()``), a Lightning
    checkpoint (tensors under ``"state_dict"`` with keys prefixed ``pipe.dit.``; other entries and
    keys are ignored) and ``.safetensors`` files.

    Raises:
        CheckpointError: Unreadable file, non-tensor content, or no state dict inside.
    """
    path = Path(ckpt_path)
    loaded = read_state_dict(path)
    if isinstance(loaded, Mapping) and isinstance(loaded.get("state_dict"), Mapping):
        logger.info("%s is a Lightning checkpoint; using its 'state_dict'", path)
        loaded = loaded["state_dict"]
    return _strip_prefix(only_tensors(loaded, str(path)), LIGHTNING_PREFIX, str(path))


# --------------------------------------------------------------------------------------------
# Wan2.1 base weights
# --------------------------------------------------------------------------------------------


def _resolve_wan_file(wan_path: Path) -> Path:
    """The weights file or index json of a Wan2.1 transformer, given a file or a folder."""
    if wan_path.is_file():
        return wan_path
    if not wan_path.is_dir():
        raise CheckpointError(f"Wan2.1 weights path {wan_path} does not exist.")
    folder = wan_path / "transformer" if (wan_path / "transformer").is_dir() else wan_path
    for name in _WAN_FILE_NAMES:
        if (folder / name).is_file():
            return folder / name
    present = sorted(p.name for p in folder.iterdir())[:20]
    raise CheckpointError(
        f"no Wan2.1 transformer weights in {folder}: expected one of {list(_WAN_FILE_NAMES)} (an original Wan2.1 "
        f"folder, or a diffusers folder or its transformer/ subfolder); found {present}."
    )


def _is_diffusers_layout(keys: Iterable[str]) -> bool:
    """True for diffusers ``WanTransformer3DModel`` names (as opposed to Wan's original names)."""
    markers = ("condition_embedder.", "proj_out.", "scale_shift_table")
    return any(key.startswith(markers) or ".attn1." in key for key in keys)


def read_wan_state_dict(wan_path: str | os.PathLike) -> dict[str, Tensor]:
    """Reads Wan2.1 T2V transformer weights and returns them under Wan's original names.

    Args:
        wan_path: An original Wan2.1 folder or its ``diffusion_pytorch_model.safetensors`` (possibly
            sharded with an index json), or a diffusers folder (its ``transformer/`` subfolder when
            present; sharded ``diffusion_pytorch_model-0000x-of-0000y.safetensors`` + index).
            diffusers names are converted with :func:`wan_keys.diffusers_to_original`.

    Raises:
        CheckpointError: Nothing found, unreadable files, or keys that are not Wan2.1 T2V keys.
    """
    path = _resolve_wan_file(Path(wan_path))
    state = _strip_prefix(only_tensors(read_state_dict(path), str(path)), _WAN_WRAPPER_PREFIX, str(path))
    if _is_diffusers_layout(state):
        try:
            state = diffusers_to_original(state)
        except KeyError as err:
            raise CheckpointError(f"{path}: {err.args[0]}") from err
        logger.info("%s: converted %d diffusers-named tensors to Wan's original names", path, len(state))
    return state


def _merge_base(base: Mapping[str, Tensor], release: Mapping[str, Tensor], source: str) -> dict[str, Tensor]:
    """The Wan base weights overlaid with the release's tensors (the release wins on shared keys)."""
    overlap = set(base) & set(release)
    if overlap:
        logger.info("%d keys are both in %s and in the Wan weights; using %s's", len(overlap), source, source)
    return {**base, **release}


# --------------------------------------------------------------------------------------------
# Architecture inference
# --------------------------------------------------------------------------------------------


def _experts(state: Mapping[str, Tensor], source: str) -> dict[int, Tensor]:
    """``{e: blocks.0.moe.experts.{e}.0.weight}``, checked to be numbered 0..E-1."""
    experts = {int(m.group(1)): state[key] for key in state if (m := _EXPERT_KEY.match(key))}
    if not experts:
        raise CheckpointError(
            f"{source} has no 'blocks.0.moe.experts.{{e}}.0.weight': it is not an Astra checkpoint. "
            "Fix: for a plain Wan2.1 transformer use load_wan_transformer."
        )
    if sorted(experts) != list(range(len(experts))):
        raise CheckpointError(f"{source}: expert indices {sorted(experts)} are not 0..E-1.")
    return experts


def _num_layers(state: Mapping[str, Tensor], source: str) -> int:
    """Number of blocks, checked to be numbered 0..N-1."""
    indices = {int(m.group(1)) for key in state if (m := BLOCK_KEY.match(key))}
    if not indices:
        raise CheckpointError(f"{source} has no 'blocks.N.*' keys: it is not a Wan/Astra transformer.")
    gaps = sorted(set(range(max(indices) + 1)) - indices)
    if gaps:
        raise CheckpointError(f"{source}: blocks {gaps} have no keys at all (block indices must be 0..N-1).")
    return len(indices)


def _base_fields(state: Mapping[str, Tensor]) -> dict[str, Any]:
    """Config fields readable from the Wan base weight shapes (only those whose keys are present)."""
    fields: dict[str, Any] = {}
    if "blocks.0.ffn.0.weight" in state:
        fields["ffn_dim"] = state["blocks.0.ffn.0.weight"].shape[0]
    if "text_embedding.0.weight" in state:
        fields["text_dim"] = state["text_embedding.0.weight"].shape[1]
    if "time_embedding.0.weight" in state:
        fields["freq_dim"] = state["time_embedding.0.weight"].shape[1]
    # The 1x history embedder has the same kernel as the patch embedding (a release without base weights).
    for key in ("patch_embedding.weight", "clean_x_embedder.proj.weight"):
        if key in state:
            shape = state[key].shape
            fields["in_channels"] = fields["out_channels"] = shape[1]
            fields["patch_size"] = tuple(shape[2:])
            break
    if "head.head.weight" in state:
        patch = fields.get("patch_size", get_preset(RELEASE_PRESET).patch_size)
        fields["out_channels"] = state["head.head.weight"].shape[0] // math.prod(patch)
    return fields


def _modalities(state: Mapping[str, Tensor]) -> tuple[ModalitySpec, ...]:
    """Modalities from ``{name}_processor.projector.0.weight`` [U, d], with the release's expert map."""
    release_expert = {m.name: m.expert for m in RELEASE_MODALITIES}
    order = {name: i for i, name in enumerate(release_expert)}
    found = [(m.group(1), state[key].shape[1]) for key in state if (m := _PROCESSOR_KEY.match(key))]
    found.sort(key=lambda item: (order.get(item[0], len(order)), item[0]))
    for name, _ in found:
        if name not in release_expert:
            logger.warning("processor %r is not one of the release's %s; routing it to expert 0", name, list(order))
    return tuple(ModalitySpec(name, dim, release_expert.get(name, 0)) for name, dim in found)


def _num_heads(dim: int, base: AstraTransformerConfig, num_heads: int | None) -> int:
    """Heads cannot be read from shapes: the preset's head width unless given explicitly."""
    if num_heads is not None:
        return num_heads
    if dim % base.head_dim:
        raise CheckpointError(
            f"hidden width {dim} is not a multiple of Wan's head width {base.head_dim}, so the number of "
            "heads cannot be inferred. Fix: pass num_heads explicitly."
        )
    return dim // base.head_dim


def infer_release_config(
    state: Mapping[str, Tensor], num_heads: int | None = None, source: str = "the checkpoint"
) -> AstraTransformerConfig:
    """Builds the config of a release-style state dict from its tensor shapes.

    Starts from the ``"wan2.1-1.3b"`` preset and replaces: E (the number of distinct
    ``blocks.0.moe.experts.{e}``), U and the hidden width (``experts.{e}.0.weight`` is [dim, U];
    MLP experts with a ``.2`` layer give ``expert_hidden``), the depth, the modalities (one per
    ``{name}_processor``, input width from its weight), the ``clean_x_embedder`` scales and, where
    base weights are present, the FFN, text, timestep, channel and patch sizes. The number of heads
    is not visible in any shape: hidden width / 128 (Wan's head width) unless ``num_heads`` is given.

    Raises:
        CheckpointError: No experts (not an Astra checkpoint), gaps in indices, or an invalid config.
    """
    base = get_preset(RELEASE_PRESET)
    experts = _experts(state, source)
    first, last = experts[0], state.get("blocks.0.moe.experts.0.2.weight")
    dim = int((last if last is not None else first).shape[0])
    fields: dict[str, Any] = {
        "dim": dim,
        "num_layers": _num_layers(state, source),
        "num_heads": _num_heads(dim, base, num_heads),
        "unified_dim": int(first.shape[1]),
        "num_experts": len(experts),
        "expert_hidden": int(first.shape[0]) if last is not None else 0,
        **_base_fields(state),
    }
    scales = tuple(scale for scale, name in _CLEAN_EMBEDDERS if f"clean_x_embedder.{name}.weight" in state)
    if scales:
        fields["history_scales"] = scales
    if modalities := _modalities(state):
        fields["modalities"] = modalities
    try:
        return base.replace(**fields)
    except ValueError as err:
        raise CheckpointError(f"the shapes in {source} give an invalid config ({err}).") from err


# --------------------------------------------------------------------------------------------
# The release
# --------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class FillRule:
    """Keys that a release checkpoint may lack, and how they are filled.

    Attributes:
        pattern: Regex that must match the whole state-dict key.
        fill: ``"zeros"``, or ``"init"``: the module's default ``reset_parameters`` under seed 0.
        reason: Why filling is harmless; logged at info level.
    """

    pattern: str
    fill: Literal["zeros", "init"]
    reason: str


# Everything else that is missing is an error in strict mode (astra-release.md §2.2, §2.5, §7.1).
RELEASE_FILL_RULES: tuple[FillRule, ...] = (
    FillRule(
        r"blocks\.\d+\.cam_encoder\.(weight|bias)",
        "zeros",
        "cam_encoder is zero-initialised in the release and never called on the MoE path",
    ),
    FillRule(
        r"global_router\.(weight|bias)",
        "init",
        "global_router is never called with hard routing (train_single drops it when resuming)",
    ),
)


def _init_value(model: torch.nn.Module, key: str) -> Tensor:
    """Default initial value of one parameter: a CPU copy of its module, reset under seed 0."""
    module_name, _, leaf = key.rpartition(".")
    module = copy.deepcopy(model.get_submodule(module_name)).to_empty(device="cpu")
    if not hasattr(module, "reset_parameters"):
        raise CheckpointError(f"cannot initialise {key!r}: {type(module).__name__} has no reset_parameters.")
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        module.reset_parameters()
    return module.state_dict()[leaf].detach()


def _fill_release_gaps(
    model: torch.nn.Module, state: Mapping[str, Tensor], rules: Iterable[FillRule] = RELEASE_FILL_RULES
) -> dict[str, Tensor]:
    """Adds values for the missing keys that ``rules`` allow; logs one info line per rule used."""
    expected = model.state_dict()
    filled = dict(state)
    for rule in rules:
        keys = [key for key in expected if key not in state and re.fullmatch(rule.pattern, key)]
        for key in keys:
            filled[key] = torch.zeros(expected[key].shape) if rule.fill == "zeros" else _init_value(model, key)
        if keys:
            logger.info("filled %s with %s: %s", summarize_keys(keys), rule.fill, rule.reason)
    return filled


def _release_fix(state: Mapping[str, Tensor], wan_path: Any) -> str:
    """Advice for a release mismatch; points at ``wan_path`` when the base weights are absent."""
    has_base = "patch_embedding.weight" in state and "blocks.0.cross_attn.q.weight" in state
    if not has_base and wan_path is None:
        return (
            "the checkpoint holds only part of the model; pass wan_path= the Wan2.1-T2V-1.3B folder "
            "(diffusion_pytorch_model.safetensors) or its diffusers transformer/ folder."
        )
    return (
        "check that the file is Astra's diffusion_pytorch_model.ckpt and wan_path a Wan2.1 T2V transformer; "
        "strict=False loads anyway, keeping missing keys at their initialisation."
    )


def load_astra_release(
    ckpt_path: str | os.PathLike,
    wan_path: str | os.PathLike | None = None,
    device: torch.device | str = "cpu",
    dtype: torch.dtype | None = torch.bfloat16,
    strict: bool = True,
    num_heads: int | None = None,
) -> AstraTransformer:
    """Loads the authors' released transformer (astra-release.md §2.5).

    Args:
        ckpt_path: ``diffusion_pytorch_model.ckpt`` (flat, or Lightning-nested with ``pipe.dit.``
            keys) or a ``.safetensors`` export of it.
        wan_path: Wan2.1 T2V weights for base keys the checkpoint lacks (see
            :func:`read_wan_state_dict`); the checkpoint's own tensors win on shared keys.
        device: Device of the returned model.
        dtype: Cast to this dtype (None keeps the stored dtypes).
        strict: If True, a missing key that :data:`RELEASE_FILL_RULES` does not cover, or an
            unexpected key, raises. If False they are logged and missing keys keep the model's
            initialisation (the model is then built in memory first). Wrong shapes always raise.
        num_heads: Attention heads; default hidden width / 128 (Wan's head width).

    Returns:
        The model in eval mode.

    Raises:
        CheckpointError: Unreadable files, or no Astra experts. :class:`StateDictMismatchError`
            naming every missing, unexpected and mis-shaped key.
    """
    source = str(ckpt_path)
    state = read_release_state_dict(ckpt_path)
    if wan_path is not None:
        state = _merge_base(read_wan_state_dict(wan_path), state, source)
    config = infer_release_config(state, num_heads=num_heads, source=source)
    logger.info(
        "%s: %d blocks, dim %d, E=%d experts, U=%d, modalities %s",
        source, config.num_layers, config.dim, config.num_experts, config.unified_dim,
        [f"{m.name}:{m.dim}" for m in config.modalities],
    )  # fmt: skip
    model = build_model(config, materialize=not strict)
    state = _fill_release_gaps(model, state)
    load_into(model, state, strict=strict, source=source, fix=_release_fix(state, wan_path))
    return finalize(model, device, dtype)


def load_wan_transformer(
    wan_path: str | os.PathLike,
    device: torch.device | str = "cpu",
    dtype: torch.dtype | None = torch.bfloat16,
    num_heads: int | None = None,
    **config_changes: Any,
) -> AstraTransformer:
    """Loads a plain Wan2.1 T2V DiT into an AstraTransformer whose Astra modules keep their init.

    The base sizes are read from the weights; the Astra part follows the ``"wan2.1-1.3b"`` preset
    (U=25, E=3, release modalities) unless overridden. The model is first built and initialised
    in memory (identity ``projector``, zero ``cam_encoder``, default experts ...; about 6 GB in
    float32 for the 1.3B model), then the Wan tensors are copied in. With ``actions=None`` and no
    history it then computes exactly Wan2.1.

    Args:
        wan_path: See :func:`read_wan_state_dict`.
        device: Device of the returned model.
        dtype: Cast to this dtype (None keeps float32 init and the stored dtypes).
        num_heads: Attention heads; default hidden width / 128.
        **config_changes: Overrides of :class:`AstraTransformerConfig` fields for the Astra part,
            e.g. ``unified_dim=32, modalities=ASTRA_GYM_MODALITIES``.

    Raises:
        CheckpointError: Unreadable files, or keys/shapes that are not a Wan2.1 T2V transformer.
    """
    source = str(wan_path)
    state = read_wan_state_dict(wan_path)
    if "blocks.0.self_attn.q.weight" not in state:
        raise CheckpointError(f"{source} has no 'blocks.0.self_attn.q.weight': it is not a Wan2.1 transformer.")
    base = get_preset(RELEASE_PRESET)
    dim = state["blocks.0.self_attn.q.weight"].shape[0]
    fields = {"dim": dim, "num_layers": _num_layers(state, source), "num_heads": _num_heads(dim, base, num_heads)}
    try:
        config = base.replace(**{**fields, **_base_fields(state), **config_changes})
    except (TypeError, ValueError) as err:
        raise CheckpointError(f"no valid config for {source} ({err}).") from err
    model = build_model(config, materialize=True)
    fix = "wan_path must hold one complete Wan2.1 text-to-video transformer (not I2V or VACE, not a partial file)."
    load_into(model, state, strict=True, source=source, fix=fix, may_be_missing=is_astra_key)
    astra_keys = [key for key in model.state_dict() if key not in state]
    logger.info("%s: Astra modules keep their initialisation: %s", source, summarize_keys(astra_keys))
    return finalize(model, device, dtype)


# --------------------------------------------------------------------------------------------
# Offline conversion
# --------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class ConvertArgs:
    """Flags of the converter (each field's help is its ``--help`` text)."""

    release: str = arg(help="the authors' diffusion_pytorch_model.ckpt (or .safetensors)")
    out: str = arg(help="folder to write (our format: config.json + model.safetensors; replaced atomically)")
    wan: str | None = arg(None, help="Wan2.1 T2V folder (or file) completing the base weights; none = release only")
    num_heads: int | None = arg(None, help="attention heads; none = the Wan2.1-1.3B value for its width")
    dtype: Literal["float32", "float16", "bfloat16"] = arg("bfloat16", help="stored weight dtype")


def convert(args: ConvertArgs) -> Path:
    """Loads the release (strictly, with ``wan`` base weights) and saves it in our format.

    Returns:
        The written folder; :func:`~astra_gym.world_model.checkpoints.load_pretrained` loads it.
    """
    dtype = getattr(torch, args.dtype)
    model = load_astra_release(args.release, wan_path=args.wan, dtype=dtype, num_heads=args.num_heads)
    extra = {"source": {"format": "astra-release", "release": str(args.release), "wan": args.wan}}
    folder = save_pretrained(model, args.out, extra_config=extra)
    logger.info("converted %s (%s parameters) to %s", args.release, f"{model.num_parameters():,}", folder)
    return folder


def main(argv: list[str] | None = None) -> Path:
    """CLI: ``python -m astra_gym.world_model.release_checkpoint --release CKPT --wan WAN --out FOLDER``."""
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    return convert(parse_config(ConvertArgs, argv, __doc__))


if __name__ == "__main__":
    main(sys.argv[1:])
