"""The scaffold shared by the small single-model trainers (VAE, reward model).

A preset-based command line (``--preset``, ``--print-config``, one flag per config field) and the
step loop with metric rows, periodic held-out
evaluation and a tqdm progress bar. The trainers keep their own data, losses and evaluation.
"""

from __future__ import annotations

import dataclasses
import json
import time
from collections.abc import Callable, Mapping
from typing import Any

from astra_gym.training.metrics import MetricWriter

__all__ = ["config_dict", "run_steps"]


def config_dict(cfg: Any) -> dict[str, Any]:
    """A dataclass config as plain JSON values (tuples become lists), for saved metadata."""
    return json.loads(json.dumps(dataclasses.asdict(cfg)))


def run_steps(
    cfg: Any,
    writer: MetricWriter,
    step: Callable[[int], dict[str, float]],
    evaluate: Callable[[], Mapping[str, float]] | None,
    desc: str,
    show_sps: bool = False,
) -> None:
    """``cfg.total_steps`` calls of ``step(step_index)`` with logging, periodic evaluation and a progress bar.

    Every ``cfg.log_every`` steps the step's logs (plus ``perf/samples_per_s``) become a metric row;
    every ``cfg.eval_every`` steps (0 = never) ``evaluate()`` does, unless it is None.
    """
    bar = None
    if cfg.progress:
        from tqdm import tqdm

        bar = tqdm(total=cfg.total_steps, desc=desc, unit="step")
    tick = time.perf_counter()
    for index in range(cfg.total_steps):
        logs = step(index)
        if bar is not None:
            bar.update(1)
        if (index + 1) % cfg.log_every == 0:
            now = time.perf_counter()
            logs["perf/samples_per_s"] = cfg.log_every * cfg.batch_size / (now - tick)
            tick = now
            writer.write(index + 1, logs)
            if bar is not None:
                postfix = {"loss": f"{logs['train/loss']:.4f}"}
                if show_sps:
                    postfix["sps"] = f"{logs['perf/samples_per_s']:.0f}"
                bar.set_postfix(**postfix)
        if evaluate is not None and cfg.eval_every and (index + 1) % cfg.eval_every == 0:
            writer.write(index + 1, evaluate())
    if bar is not None:
        bar.close()
