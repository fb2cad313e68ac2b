"""A small explicit process-wide cache, so that several envs in one process share one loaded model."""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable, Hashable
from typing import Any

import torch

__all__ = ["get_cached_model", "clear_model_cache", "cached_model_keys"]

logger = logging.getLogger(__name__)

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
