"""Reading and writing transformer weights: our own format, the authors' release and plain Wan2.1.

This is the only module that touches model files. Three entry points:

* :func:`save_pretrained` / :func:`load_pretrained`: astra-gym's own folder format, a
  ``model.safetensors`` next to a ``config.json`` holding the :class:`AstraTransformerConfig`, a
  format version and free-form extra metadata (VAE, sampler, ... settings an env needs). Saving is
  atomic: a crash never leaves a half-written folder under the target name and never destroys the
  previous checkpoint.
* :func:`load_astra_release`: the authors' ``diffusion_pytorch_model.ckpt`` (flat ``train_first``
  state dict, or a Lightning checkpoint whose ``state_dict`` keys carry a ``pipe.dit.`` prefix, or
  a ``.safetensors`` file), optionally completed with the Wan2.1 base weights from ``wan_path``.
  The architecture (E, U, widths, depth, processors) is read from the tensors, and the load is
  strict: every missing, unexpected or mis-shaped key is named (astra-release.md §2.5).
* :func:`load_wan_transformer`: a plain Wan2.1 T2V DiT (original or diffusers layout) with the
  Astra additions at their initialisation.

Pickled files are only ever read with ``torch.load(weights_only=True)``. A small explicit process
cache (:func:`get_cached_model`) lets several envs share one loaded model.
"""

from __future__ import annotations

import copy
import json
import logging
import math
import os
import pickle
import re
import shutil
import tempfile
import threading
import zipfile
from collections.abc import Callable, Hashable, Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file
from torch import Tensor

from astra_gym.utils.atomic import BACKUP_TAG, TEMP_TAG, fsync_path, remove_stale_temps, swap_in
from astra_gym.world_model.config import RELEASE_MODALITIES, AstraTransformerConfig, ModalitySpec, get_preset
from astra_gym.world_model.wan_keys import diffusers_to_original, is_astra_key

if TYPE_CHECKING:
    from astra_gym.world_model.transformer import AstraTransformer

__all__ = [
    "FORMAT_NAME",
    "FORMAT_VERSION",
    "WEIGHTS_NAME",
    "CONFIG_NAME",
    "CheckpointError",
    "StateDictMismatchError",
    "FillRule",
    "RELEASE_FILL_RULES",
    "summarize_keys",
    "compare_state_dict",
    "save_pretrained",
    "load_pretrained",
    "read_pretrained_config",
    "read_state_dict",
    "read_release_state_dict",
    "read_wan_state_dict",
    "infer_release_config",
    "load_astra_release",
    "load_wan_transformer",
    "get_cached_model",
    "clear_model_cache",
    "cached_model_keys",
]

logger = logging.getLogger(__name__)

FORMAT_NAME = "astra-gym-transformer"
FORMAT_VERSION = 1
WEIGHTS_NAME = "model.safetensors"
CONFIG_NAME = "config.json"
RELEASE_PRESET = "wan2.1-1.3b"
LIGHTNING_PREFIX = "pipe.dit."
# ComfyUI-style repackagings of Wan put the DiT under this prefix.
_WAN_WRAPPER_PREFIX = "model.diffusion_model."
_WAN_FILE_NAMES = ("diffusion_pytorch_model.safetensors.index.json", "diffusion_pytorch_model.safetensors")

_BLOCK_KEY = re.compile(r"^blocks\.(\d+)\.(.+)$")
_EXPERT_KEY = re.compile(r"^blocks\.0\.moe\.experts\.(\d+)\.0\.weight$")
_PROCESSOR_KEY = re.compile(r"^([A-Za-z_]\w*)_processor\.projector\.0\.weight$")
_CLEAN_EMBEDDERS = ((1, "proj"), (2, "proj_2x"), (4, "proj_4x"))
_SUMMARY_LIMIT = 40
_ALIGNMENT = 64  # bytes; what PyTorch's CPU allocator guarantees

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
        match = _BLOCK_KEY.match(key)
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


def _build_model(config: AstraTransformerConfig, materialize: bool) -> AstraTransformer:
    """Builds the model on the meta device (no memory), or initialised on CPU with ``materialize``."""
    cls = _transformer_class()
    if materialize:
        return cls(config)
    with torch.device("meta"):
        return cls(config)


def _expected_shapes(model: torch.nn.Module) -> dict[str, Shape]:
    """Key -> shape of the model's state dict (works for models on the meta device)."""
    return {key: tuple(value.shape) for key, value in model.state_dict().items()}


def _load_into(
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


def _finalize(model: AstraTransformer, device: torch.device | str, dtype: torch.dtype | None) -> AstraTransformer:
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


def save_pretrained(model: torch.nn.Module, folder: str | os.PathLike, extra_config: dict | None = None) -> Path:
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

    Returns:
        The absolute checkpoint folder.

    Raises:
        CheckpointError: ``folder`` exists and is not an astra-gym checkpoint, the metadata cannot
            be serialised, or the model has tensors without values.
    """
    folder = Path(folder).absolute()
    meta_text = _checkpoint_metadata(model, extra_config)
    state = _checkpoint_state(model)
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
    model = _build_model(config, materialize=False)
    fix = f"{CONFIG_NAME} and {WEIGHTS_NAME} in {folder} disagree; re-save the checkpoint with save_pretrained."
    _load_into(model, state, strict=True, source=str(weights), fix=fix)
    return _finalize(model, device, dtype)


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
    """Reads one safetensors file on CPU, with a clear error for truncated or foreign files."""
    try:
        return {key: _aligned(value) for key, value in load_file(str(path), device="cpu").items()}
    except (SafetensorError, OSError) as err:
        raise CheckpointError(
            f"cannot read {path} as safetensors ({err}): the file is truncated, corrupted or not a "
            "safetensors file. Fix: download or save it again."
        ) from err


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


def _only_tensors(loaded: Any, source: str) -> dict[str, Tensor]:
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
    return _strip_prefix(_only_tensors(loaded, str(path)), LIGHTNING_PREFIX, str(path))


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
    state = _strip_prefix(_only_tensors(read_state_dict(path), str(path)), _WAN_WRAPPER_PREFIX, str(path))
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
    indices = {int(m.group(1)) for key in state if (m := _BLOCK_KEY.match(key))}
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
    model = _build_model(config, materialize=not strict)
    state = _fill_release_gaps(model, state)
    _load_into(model, state, strict=strict, source=source, fix=_release_fix(state, wan_path))
    return _finalize(model, device, dtype)


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
    model = _build_model(config, materialize=True)
    fix = "wan_path must hold one complete Wan2.1 text-to-video transformer (not I2V or VACE, not a partial file)."
    _load_into(model, state, strict=True, source=source, fix=fix, may_be_missing=is_astra_key)
    astra_keys = [key for key in model.state_dict() if key not in state]
    logger.info("%s: Astra modules keep their initialisation: %s", source, summarize_keys(astra_keys))
    return _finalize(model, device, dtype)


# --------------------------------------------------------------------------------------------
# Process-wide model cache
# --------------------------------------------------------------------------------------------

_MODEL_CACHE: dict[Hashable, Any] = {}
_CACHE_LOCK = threading.RLock()


def get_cached_model(key: Hashable, loader: Callable[[], Any]) -> Any:
    """Returns the model cached under ``key``, calling ``loader()`` once if it is not cached yet.

    Envs in one process share the returned object: treat it as read-only (eval mode, no in-place
    weight edits). Example key: ``("astra-release", str(ckpt_path), "cuda", "bfloat16")``. Loading
    holds a process-wide lock, so concurrent callers of the same key load once.

    Args:
        key: Hashable identity of the model, not None; include path, device and dtype.
        loader: Zero-argument callable that loads the model (not cached if it raises).

    Raises:
        ValueError: ``key`` is None.
    """
    if key is None:
        raise ValueError("get_cached_model: key must not be None (None means 'every entry' in clear_model_cache).")
    with _CACHE_LOCK:
        if key not in _MODEL_CACHE:
            logger.info("model cache miss for %r: loading", key)
            _MODEL_CACHE[key] = loader()
        return _MODEL_CACHE[key]


def clear_model_cache(key: Hashable | None = None) -> int:
    """Drops one cached model (``key``) or all of them (None), then frees cached GPU memory.

    Returns:
        How many entries were dropped. Models still referenced elsewhere stay alive.
    """
    with _CACHE_LOCK:
        keys = list(_MODEL_CACHE) if key is None else [key] if key in _MODEL_CACHE else []
        for entry in keys:
            del _MODEL_CACHE[entry]
    if keys and torch.cuda.is_available() and torch.cuda.is_initialized():
        torch.cuda.empty_cache()
    return len(keys)


def cached_model_keys() -> tuple[Hashable, ...]:
    """Keys of the models currently cached, in insertion order."""
    with _CACHE_LOCK:
        return tuple(_MODEL_CACHE)
