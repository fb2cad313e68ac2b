"""Our transformer weight format, and reading weight files safely.

* :func:`save_pretrained` / :func:`load_pretrained`: astra-gym's own folder format, a
  ``model.safetensors`` next to a ``config.json`` holding the :class:`AstraTransformerConfig`, a
  format version and free-form extra metadata (VAE, sampler, ... settings an env needs). Saving is
  atomic: a crash never leaves a half-written folder under the target name and never destroys the
  previous checkpoint. ``save_pretrained(..., int8=True)`` stores each weight matrix and kernel as
  int8 with one scale per 32 inputs of an output row (:func:`quantize_int8`), about a quarter of
  float32's size; every reader here restores the float weights (:func:`dequantize_int8`).
* :func:`read_state_dict`: safetensors (single or sharded) and pickled files, the latter only ever
  with ``torch.load(weights_only=True)``.
* Strict loading with named differences (:func:`compare_state_dict`, :class:`StateDictMismatchError`).

The authors' release and plain Wan2.1 transformers are read by
:mod:`astra_gym.world_model.release_checkpoint` (which also converts the release into this
format, offline); the process-wide model cache is :mod:`astra_gym.world_model.model_cache`.
"""

from __future__ import annotations

import json
import logging
import os
import pickle
import re
import shutil
import tempfile
import zipfile
from collections.abc import Callable, Iterable, Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file
from torch import Tensor

from astra_gym.utils.atomic import BACKUP_TAG, TEMP_TAG, fsync_path, remove_stale_temps, swap_in
from astra_gym.world_model.config import AstraTransformerConfig

if TYPE_CHECKING:
    from astra_gym.world_model.transformer import AstraTransformer

__all__ = [
    "FORMAT_NAME",
    "FORMAT_VERSION",
    "WEIGHTS_NAME",
    "CONFIG_NAME",
    "CheckpointError",
    "StateDictMismatchError",
    "summarize_keys",
    "compare_state_dict",
    "save_pretrained",
    "load_pretrained",
    "read_pretrained_config",
    "read_state_dict",
    "quantize_int8",
    "dequantize_int8",
]

logger = logging.getLogger(__name__)

FORMAT_NAME = "astra-gym-transformer"
FORMAT_VERSION = 2  # 2: weight matrices may be stored as int8 with per-group scales (INT8_SCALE_SUFFIX)
WEIGHTS_NAME = "model.safetensors"
CONFIG_NAME = "config.json"

BLOCK_KEY = re.compile(r"^blocks\.(\d+)\.(.+)$")
_SUMMARY_LIMIT = 40
_ALIGNMENT = 64  # bytes; what PyTorch's CPU allocator guarantees
INT8_SCALE_SUFFIX = ".int8_scale"
INT8_MIN_NUMEL = 4096  # smaller tensors (biases, norms, small tables) keep their float dtype
INT8_GROUP = 32  # inputs per int8 scale

Shape = tuple[int, ...]


class CheckpointError(RuntimeError):
    """A checkpoint file or folder is missing, unreadable, or does not fit the model."""


class StateDictMismatchError(CheckpointError):
    """The key set or shapes of a state dict differ from the model's.

    Attributes:
        missing: Keys the model has and the checkpoint lacks.
        unexpected: Keys the checkpoint has and the model lacks.
        mismatched: ``{key: (checkpoint shape, model shape)}`` for keys present in both.
    """

    def __init__(
        self,
        message: str,
        missing: Iterable[str] = (),
        unexpected: Iterable[str] = (),
        mismatched: Mapping[str, tuple[Shape, Shape]] | None = None,
    ) -> None:
        super().__init__(message)
        self.missing = sorted(missing, key=_natural_key)
        self.unexpected = sorted(unexpected, key=_natural_key)
        self.mismatched = dict(mismatched or {})


# --------------------------------------------------------------------------------------------
# Key-set comparison and error messages
# --------------------------------------------------------------------------------------------


def _natural_key(key: str) -> list:
    """Sort key that orders ``blocks.2`` before ``blocks.10``."""
    return [int(part) if part.isdigit() else part for part in re.split(r"(\d+)", key)]


def _index_ranges(indices: Iterable[int]) -> str:
    """``[0, 1, 2, 5]`` -> ``"0-2,5"``."""
    runs: list[list[int]] = []
    for index in sorted(set(indices)):
        if runs and index == runs[-1][1] + 1:
            runs[-1][1] = index
        else:
            runs.append([index, index])
    return ",".join(str(a) if a == b else f"{a}-{b}" for a, b in runs)


def summarize_keys(keys: Iterable[str], details: Mapping[str, str] | None = None, limit: int = _SUMMARY_LIMIT) -> str:
    """Names keys compactly, folding block indices: ``blocks.{0-29}.cam_encoder.weight``.

    Args:
        keys: State-dict keys.
        details: Optional text appended to each key (e.g. shapes); keys fold only if it is equal.
        limit: Entries shown before the rest is summarised as a count.

    Returns:
        ``"N key(s): a, b, ..."``; at least ``min(limit, N)`` entries are named.
    """
    keys = sorted(set(keys), key=_natural_key)
    details = details or {}
    groups: dict[tuple[str, str], list[int]] = {}
    for key in keys:
        match = BLOCK_KEY.match(key)
        pattern, index = ("blocks.{}." + match.group(2), int(match.group(1))) if match else (key, -1)
        groups.setdefault((pattern, details.get(key, "")), []).append(index)
    items = []
    for (pattern, detail), indices in groups.items():
        if indices[0] >= 0:  # a block key: fold the indices
            ranges = _index_ranges(indices)
            pattern = pattern.replace("{}", ranges if len(indices) == 1 else "{" + ranges + "}", 1)
        items.append(f"{pattern} {detail}".rstrip())
    more = f", ... and {len(items) - limit} more" if len(items) > limit else ""
    return f"{len(keys)} key(s): {', '.join(items[:limit])}{more}"


def compare_state_dict(
    expected: Mapping[str, Shape], state_dict: Mapping[str, Tensor]
) -> tuple[list[str], list[str], dict[str, tuple[Shape, Shape]]]:
    """Compares a state dict with the expected key -> shape table.

    Returns:
        ``(missing, unexpected, mismatched)``: keys only in ``expected``, keys only in
        ``state_dict``, and ``{key: (found shape, expected shape)}`` for shared keys that differ.
    """
    missing = sorted(set(expected) - set(state_dict), key=_natural_key)
    unexpected = sorted(set(state_dict) - set(expected), key=_natural_key)
    mismatched = {
        key: (tuple(state_dict[key].shape), shape)
        for key, shape in expected.items()
        if key in state_dict and tuple(state_dict[key].shape) != shape
    }
    return missing, unexpected, mismatched


def _mismatch_error(
    source: str,
    missing: list[str],
    unexpected: list[str],
    mismatched: Mapping[str, tuple[Shape, Shape]],
    fix: str,
) -> StateDictMismatchError:
    """Builds the error that names every offending key (block indices folded)."""
    lines = [f"the state dict from {source} does not fit the model:"]
    if missing:
        lines.append(f"  missing (model has, checkpoint lacks) {summarize_keys(missing)}")
    if unexpected:
        lines.append(f"  unexpected (checkpoint has, model lacks) {summarize_keys(unexpected)}")
    if mismatched:
        details = {k: f"(checkpoint {list(found)} vs model {list(want)})" for k, (found, want) in mismatched.items()}
        lines.append(f"  wrong shape {summarize_keys(mismatched, details)}")
    lines.append(f"Fix: {fix}")
    return StateDictMismatchError("\n".join(lines), missing, unexpected, mismatched)


# --------------------------------------------------------------------------------------------
# Model construction and loading
# --------------------------------------------------------------------------------------------


def _transformer_class() -> type[AstraTransformer]:
    """The model class, imported lazily so that the transformer module may import this one."""
    from astra_gym.world_model.transformer import AstraTransformer

    return AstraTransformer


def build_model(config: AstraTransformerConfig, materialize: bool) -> AstraTransformer:
    """Builds the model on the meta device (no memory), or initialised on CPU with ``materialize``."""
    cls = _transformer_class()
    if materialize:
        return cls(config)
    with torch.device("meta"):
        return cls(config)


def _expected_shapes(model: torch.nn.Module) -> dict[str, Shape]:
    """Key -> shape of the model's state dict (works for models on the meta device)."""
    return {key: tuple(value.shape) for key, value in model.state_dict().items()}


def load_into(
    model: torch.nn.Module,
    state_dict: Mapping[str, Tensor],
    strict: bool,
    source: str,
    fix: str,
    may_be_missing: Callable[[str], bool] | None = None,
) -> None:
    """Checks key sets and shapes first, then loads (``assign=True`` into meta-built models).

    Shape mismatches always raise. Missing keys (other than those ``may_be_missing`` accepts) and
    unexpected keys raise in strict mode; otherwise they are logged, and missing ones keep the
    model's initial values, which needs a materialised (not meta-built) model.
    """
    missing, unexpected, mismatched = compare_state_dict(_expected_shapes(model), state_dict)
    tolerated = {key for key in missing if may_be_missing is not None and may_be_missing(key)}
    missing = [key for key in missing if key not in tolerated]
    if mismatched or (strict and (missing or unexpected)):
        raise _mismatch_error(source, missing, unexpected, mismatched, fix)
    if missing:
        logger.warning("%s lacks %s; they keep their initial values", source, summarize_keys(missing))
    if unexpected:
        logger.warning("ignoring keys of %s that the model lacks: %s", source, summarize_keys(unexpected))
        dropped = set(unexpected)
        state_dict = {key: value for key, value in state_dict.items() if key not in dropped}
    complete = not (missing or tolerated)
    meta_built = any(p.is_meta for p in model.parameters())
    if meta_built and not complete:
        raise CheckpointError(f"internal error: {source} leaves keys of a meta-built model without values.")
    model.load_state_dict(state_dict, strict=complete, assign=meta_built)
    left = [name for name, tensor in (*model.named_parameters(), *model.named_buffers()) if tensor.is_meta]
    if left:
        raise CheckpointError(
            f"after loading {source}, {summarize_keys(left)} have no values (meta device): they are not in "
            "the model's state dict. Fix: the transformer must create non-persistent buffers lazily."
        )


def finalize(model: AstraTransformer, device: torch.device | str, dtype: torch.dtype | None) -> AstraTransformer:
    """Moves and casts the loaded model and puts it in eval mode.

    A plain cast: the transformer computes its norms in float32 whatever the parameter dtype and
    offers no hook to keep norm weights in float32 (the release runs them in bf16 as well).
    """
    return model.to(device=device, dtype=dtype).eval()


# --------------------------------------------------------------------------------------------
# Our folder format
# --------------------------------------------------------------------------------------------


def _is_our_checkpoint(folder: Path) -> bool:
    """True if ``folder`` holds a config.json written by :func:`save_pretrained`."""
    try:
        return json.loads((folder / CONFIG_NAME).read_text(encoding="utf-8")).get("format") == FORMAT_NAME
    except (OSError, ValueError, AttributeError):
        return False


def _check_replaceable(folder: Path) -> None:
    """Refuses to replace anything but a missing or empty folder, or one of our checkpoints."""
    if not folder.exists():
        return
    if not folder.is_dir():
        raise CheckpointError(f"cannot save a checkpoint to {folder}: it is a file. Fix: pick another path.")
    if any(folder.iterdir()) and not _is_our_checkpoint(folder):
        raise CheckpointError(
            f"refusing to replace {folder}: it is not empty and holds no astra-gym {CONFIG_NAME}. "
            "Fix: save into a new or empty folder, or delete this one yourself."
        )


def _checkpoint_state(model: torch.nn.Module) -> dict[str, Tensor]:
    """Detached, contiguous CPU tensors of the state dict, ready for safetensors."""
    state = {}
    for key, value in model.state_dict().items():
        if value.is_meta:
            raise CheckpointError(f"cannot save {key!r}: it is on the meta device (the model holds no values).")
        state[key] = value.detach().to("cpu").contiguous()
    return state


def _groups(value: Tensor) -> int:
    """Scale groups per row: the row's inputs in runs of ``INT8_GROUP``, or one group if they do not divide."""
    inputs = value[0].numel()
    return inputs // INT8_GROUP if inputs % INT8_GROUP == 0 else 1


def quantize_int8(state: Mapping[str, Tensor]) -> dict[str, Tensor]:
    """Stores every floating tensor of 2+ dims and at least ``INT8_MIN_NUMEL`` values as int8.

    Symmetric, per group of ``INT8_GROUP`` inputs of an output row (dim 0; per row where they do not
    divide): ``q = round(w / s)`` in [-127, 127] with ``s = max|w_group| / 127``, kept under
    ``key + INT8_SCALE_SUFFIX`` as a ``(rows, groups)`` tensor of the weight's own dtype. The error per
    weight is at most half a step, ``s / 2`` (about 0.5 % of the weights' RMS for the bundled world
    models; one scale per row gives 1.0 %). Other tensors are returned unchanged.

    Args:
        state: Name -> tensor.

    Returns:
        The state with int8 tensors and their ``(rows, groups)`` scales in place of the large ones.
    """
    out: dict[str, Tensor] = {}
    for key, value in state.items():
        if not (value.is_floating_point() and value.dim() >= 2 and value.numel() >= INT8_MIN_NUMEL):
            out[key] = value
            continue
        groups = value.float().reshape(value.shape[0], _groups(value), -1)
        scale = (groups.abs().amax(dim=2) / 127).to(value.dtype)  # 0 for a group of zeros (it stores zeros)
        steps = torch.round(groups / torch.where(scale == 0, 1, scale).float()[..., None]).clamp(-127, 127)
        out[key] = steps.to(torch.int8).reshape(value.shape).contiguous()
        out[key + INT8_SCALE_SUFFIX] = scale.contiguous()
    return out


def dequantize_int8(state: Mapping[str, Tensor]) -> dict[str, Tensor]:
    """Inverse of :func:`quantize_int8`: each int8 tensor with a scale becomes ``q * s`` in the scale's dtype.

    Raises:
        CheckpointError: A scale without its int8 tensor, or one that does not fit it.
    """
    out = {key: value for key, value in state.items() if not key.endswith(INT8_SCALE_SUFFIX)}
    for key, scale in state.items():
        if not key.endswith(INT8_SCALE_SUFFIX):
            continue
        name = key[: -len(INT8_SCALE_SUFFIX)]
        steps = out.get(name)
        fits = steps is not None and steps.dtype == torch.int8 and scale.dim() == 2
        if not (fits and scale.shape[0] == steps.shape[0] and steps[0].numel() % scale.shape[1] == 0):
            raise CheckpointError(
                f"{key!r} is an int8 scale without a matching int8 tensor {name!r} (scales {tuple(scale.shape)}). "
                "Fix: save the checkpoint again."
            )
        groups = steps.float().reshape(*scale.shape, -1) * scale.float()[..., None]
        out[name] = groups.reshape(steps.shape).to(scale.dtype)
    return out


def _checkpoint_metadata(model: torch.nn.Module, extra_config: dict | None) -> str:
    """The config.json text; raises before anything is written if it cannot be serialised."""
    config = getattr(model, "config", None)
    if not isinstance(config, AstraTransformerConfig):
        raise TypeError(
            f"save_pretrained needs a model whose .config is an AstraTransformerConfig, got {type(config)}"
        )
    meta = {
        "format": FORMAT_NAME,
        "format_version": FORMAT_VERSION,
        "config": config.to_dict(),
        "extra": dict(extra_config or {}),
    }
    try:
        return json.dumps(meta, indent=2, sort_keys=True, allow_nan=False)
    except (TypeError, ValueError) as err:
        raise CheckpointError(
            f"extra_config is not JSON-serialisable ({err}). Fix: pass plain dicts, lists, numbers and strings."
        ) from err


def _write_folder(tmp: Path, state: dict[str, Tensor], meta_text: str) -> None:
    """Writes the weights, then config.json (a partial folder never has a config), fsyncing each."""
    weights = tmp / WEIGHTS_NAME
    save_file(state, str(weights), metadata={"format": "pt", "astra_gym_format": FORMAT_NAME})
    fsync_path(weights)
    with open(tmp / CONFIG_NAME, "w", encoding="utf-8") as handle:
        handle.write(meta_text)
        handle.flush()
        os.fsync(handle.fileno())
    fsync_path(tmp)


def save_pretrained(
    model: torch.nn.Module, folder: str | os.PathLike, extra_config: dict | None = None, int8: bool = False
) -> Path:
    """Saves a transformer as ``folder/model.safetensors`` + ``folder/config.json``, atomically.

    Everything is written into a hidden temp folder next to ``folder`` and fsynced; only then is it
    renamed into place (a previous checkpoint is moved aside first and deleted after the rename). A
    crash at any point leaves the old or the new checkpoint under ``folder``, plus at most a hidden
    ``.{name}.tmp-*`` folder (never with a config.json, so it never loads) that the next save
    removes. The folder is replaced as a whole: do not keep other files in it.

    Args:
        model: An :class:`AstraTransformer` (anything with an AstraTransformerConfig ``config``).
        folder: Target folder; its parents are created if needed.
        extra_config: JSON-serialisable metadata stored under ``"extra"`` (e.g. the VAE or sampler
            settings an env needs); read back with :func:`read_pretrained_config`.
        int8: Store weight matrices and kernels as int8 with a scale per 32 inputs (:func:`quantize_int8`);
            biases, norms and small tensors keep the model's dtype. Loading restores that dtype.

    Returns:
        The absolute checkpoint folder.

    Raises:
        CheckpointError: ``folder`` exists and is not an astra-gym checkpoint, the metadata cannot
            be serialised, or the model has tensors without values.
    """
    folder = Path(folder).absolute()
    meta_text = _checkpoint_metadata(model, extra_config)
    state = _checkpoint_state(model)
    if int8:
        state = quantize_int8(state)
    folder.parent.mkdir(parents=True, exist_ok=True)
    _check_replaceable(folder)
    remove_stale_temps(folder, logger)
    tmp = Path(tempfile.mkdtemp(prefix=f".{folder.name}{TEMP_TAG}", dir=folder.parent))
    try:
        _write_folder(tmp, state, meta_text)
        swap_in(tmp, folder)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)
    logger.info("saved %d tensors to %s", len(state), folder)
    return folder


def _missing_checkpoint_error(folder: Path, what: str) -> CheckpointError:
    """Error for a missing checkpoint; points at the backup an interrupted save may have left."""
    backups = sorted(folder.parent.glob(f".{folder.name}{BACKUP_TAG}*")) if folder.parent.is_dir() else []
    hint = ""
    if backups and not folder.exists():
        hint = f" A save was interrupted while swapping folders: the previous checkpoint is {backups[-1]}; rename it."
    return CheckpointError(
        f"no astra-gym checkpoint at {folder}: {what} is missing (expected {CONFIG_NAME} and {WEIGHTS_NAME} "
        f"written by save_pretrained).{hint}"
    )


def read_pretrained_config(folder: str | os.PathLike) -> tuple[AstraTransformerConfig, dict]:
    """Reads ``config.json`` of a :func:`save_pretrained` folder without loading the weights.

    Returns:
        ``(config, extra)``, ``extra`` being the ``extra_config`` given when saving.

    Raises:
        CheckpointError: The file is missing, not ours, from a newer format, or its config is invalid.
    """
    folder = Path(folder)
    path = folder / CONFIG_NAME
    if not path.is_file():
        raise _missing_checkpoint_error(folder, CONFIG_NAME if folder.is_dir() else "the folder")
    try:
        meta = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as err:
        raise CheckpointError(f"{path} is not valid JSON ({err}). Fix: re-save the checkpoint.") from err
    if not isinstance(meta, dict) or meta.get("format") != FORMAT_NAME:
        raise CheckpointError(
            f'{path} was not written by astra-gym\'s save_pretrained (no "format": "{FORMAT_NAME}").'
        )
    version = meta.get("format_version")
    if not isinstance(version, int) or version > FORMAT_VERSION:
        raise CheckpointError(
            f"{path} has format_version {version!r}; this astra-gym reads versions up to {FORMAT_VERSION}. "
            "Fix: upgrade astra-gym."
        )
    try:
        config = AstraTransformerConfig.from_dict(meta["config"])
    except (KeyError, TypeError, ValueError) as err:
        raise CheckpointError(
            f"{path} holds an invalid transformer config ({err}). Fix: re-save the checkpoint."
        ) from err
    return config, dict(meta.get("extra") or {})


def load_pretrained(
    folder: str | os.PathLike, device: torch.device | str = "cpu", dtype: torch.dtype | None = None
) -> AstraTransformer:
    """Loads a :func:`save_pretrained` folder (safetensors only, no pickle), strictly.

    Args:
        folder: Checkpoint folder.
        device: Device of the returned model.
        dtype: Cast to this dtype; None keeps the stored dtypes.

    Returns:
        The model in eval mode.

    Raises:
        CheckpointError: Missing or invalid files. :class:`StateDictMismatchError` naming every
            missing, unexpected and mis-shaped key when the weights do not fit the config.
    """
    folder = Path(folder)
    config, _ = read_pretrained_config(folder)
    weights = folder / WEIGHTS_NAME
    if not weights.is_file():
        raise _missing_checkpoint_error(folder, WEIGHTS_NAME)
    state = _read_safetensors(weights)
    model = build_model(config, materialize=False)
    fix = f"{CONFIG_NAME} and {WEIGHTS_NAME} in {folder} disagree; re-save the checkpoint with save_pretrained."
    load_into(model, state, strict=True, source=str(weights), fix=fix)
    return finalize(model, device, dtype)


# --------------------------------------------------------------------------------------------
# Reading weight files
# --------------------------------------------------------------------------------------------


def _aligned(tensor: Tensor) -> Tensor:
    """``tensor``, copied into fresh memory if its data is not 64-byte aligned.

    safetensors returns CPU tensors at unaligned addresses; BLAS then takes other code paths and a
    model loaded from them differs from the saved one in the last bit of its outputs.
    """
    return tensor if tensor.data_ptr() % _ALIGNMENT == 0 else tensor.clone()


def _read_safetensors(path: Path) -> dict[str, Tensor]:
    """Reads one safetensors file on CPU (int8 weights restored, :func:`dequantize_int8`), with a clear error for
    truncated or foreign files."""
    try:
        state = {key: _aligned(value) for key, value in load_file(str(path), device="cpu").items()}
    except (SafetensorError, OSError) as err:
        raise CheckpointError(
            f"cannot read {path} as safetensors ({err}): the file is truncated, corrupted or not a "
            "safetensors file. Fix: download or save it again."
        ) from err
    return dequantize_int8(state)


def _unpickler_reason(err: Exception) -> str:
    """The informative line of torch's weights_only refusal (which global it refused)."""
    lines = [line.strip() for line in str(err).splitlines() if "WeightsUnpickler error" in line]
    return lines[0] if lines else str(err).splitlines()[0]


def _torch_load(path: Path, mmap: bool) -> Any:
    """``torch.load(weights_only=True)`` with errors translated into :class:`CheckpointError`."""
    try:
        return torch.load(path, map_location="cpu", weights_only=True, mmap=mmap)
    except pickle.UnpicklingError as err:
        raise CheckpointError(
            f"{path} contains objects other than tensors and plain containers, which weights-only loading "
            f"refuses ({_unpickler_reason(err)}); this loader never unpickles arbitrary objects. Fix: only if "
            "you trust the file, load it once with weights_only=False in a separate session and re-save just "
            "its tensors, e.g. torch.save({k: v for k, v in sd.items() if torch.is_tensor(v)}, 'clean.ckpt')."
        ) from err
    except (RuntimeError, EOFError, OSError, ValueError) as err:
        raise CheckpointError(
            f"cannot read {path} as a PyTorch checkpoint ({str(err).splitlines()[0]}): the file is truncated "
            "or corrupted. Fix: download it again and compare its size and checksum."
        ) from err


def _read_torch_file(path: Path) -> Any:
    """Reads a ``torch.save`` file (zip or legacy format); anything else is refused by its header."""
    with open(path, "rb") as handle:
        head = handle.read(8)
    if head.startswith(b"PK\x03\x04"):
        if not zipfile.is_zipfile(path):
            raise CheckpointError(
                f"{path} starts like a PyTorch checkpoint but its end is missing ({path.stat().st_size} bytes; "
                "truncated download or interrupted save). Fix: download it again."
            )
        return _torch_load(path, mmap=True)
    if head.startswith(b"\x80"):  # pickle protocol marker: the legacy (pre-1.6) torch.save format
        return _torch_load(path, mmap=False)
    raise CheckpointError(
        f"{path} is neither a PyTorch checkpoint nor a safetensors file (first bytes {head!r}, "
        f"{path.stat().st_size} bytes). Fix: pass diffusion_pytorch_model.ckpt or a .safetensors file."
    )


def _looks_like_safetensors(path: Path) -> bool:
    """safetensors files start with an 8-byte header length followed by a JSON object."""
    if path.suffix == ".safetensors":
        return True
    with open(path, "rb") as handle:
        head = handle.read(9)
    return len(head) == 9 and head[8:9] == b"{"


def _read_sharded(index_path: Path) -> dict[str, Tensor]:
    """Reads every shard listed in a ``*.safetensors.index.json`` and checks that all keys arrived."""
    try:
        weight_map = json.loads(index_path.read_text(encoding="utf-8"))["weight_map"]
        shards = sorted(set(weight_map.values()))
    except (OSError, ValueError, KeyError, TypeError, AttributeError) as err:
        raise CheckpointError(f'{index_path} is not a safetensors index with a "weight_map" ({err!r}).') from err
    state: dict[str, Tensor] = {}
    for shard in shards:
        shard_path = index_path.parent / shard
        if not shard_path.is_file():
            raise CheckpointError(f"shard {shard_path} listed in {index_path} is missing. Fix: download every shard.")
        state.update(_read_safetensors(shard_path))
    absent = set(weight_map) - set(state)
    if absent:
        raise CheckpointError(f"{index_path} lists keys that no shard holds: {summarize_keys(absent)}.")
    return state


def only_tensors(loaded: Any, source: str) -> dict[str, Tensor]:
    """Checks that a loaded object is a flat ``str -> Tensor`` state dict."""
    if not isinstance(loaded, Mapping):
        raise CheckpointError(f"{source} holds a {type(loaded).__name__}, not a state dict (a mapping of tensors).")
    bad = [str(key) for key, value in loaded.items() if not (isinstance(key, str) and isinstance(value, Tensor))]
    if bad:
        raise CheckpointError(f"{source} has entries that are not named tensors: {summarize_keys(bad)}.")
    return dict(loaded)


def read_state_dict(path: str | os.PathLike) -> Any:
    """Reads a ``.safetensors`` file, a ``*.safetensors.index.json`` with its shards, or a ``torch.save`` file.

    Pickled files are read with ``weights_only=True`` (memory-mapped when possible). Nothing is
    unwrapped or renamed here, so a Lightning checkpoint comes back as its outer dict.

    Raises:
        CheckpointError: Missing, truncated or foreign files, or pickled non-tensor objects.
    """
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"checkpoint file {path} does not exist.")
    if path.name.endswith(".index.json"):
        return _read_sharded(path)
    if _looks_like_safetensors(path):
        return _read_safetensors(path)
    return _read_torch_file(path)
