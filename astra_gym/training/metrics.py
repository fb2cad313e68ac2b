"""Training metrics to CSV and TensorBoard, resume-safe.

Keys are namespaced (``train/loss_flow``, ``train/moe_balance``, ``perf/samples_per_s``,
``eval/preview_mse``, ...). The CSV has one row per logged step with a fixed set of columns (blank
where a key was not logged at that step). On resume, rows logged after the checkpoint being
resumed are dropped from the CSV and purged from TensorBoard, so a killed-and-resumed run leaves
the same files as an uninterrupted one.
"""

from __future__ import annotations

import csv
import logging
import math
import os
from collections.abc import Mapping, Sequence
from pathlib import Path

from astra_gym.utils.atomic import atomic_write

__all__ = ["MetricWriter"]

logger = logging.getLogger(__name__)


class MetricWriter:
    """Appends metric rows to ``<run_dir>/metrics.csv`` and TensorBoard ``<run_dir>/tensorboard``.

    Args:
        run_dir: Run folder.
        keys: Every metric key that may be logged (the CSV columns, after ``step``).
        resume_step: Steps already completed by the checkpoint being resumed (0 for a fresh run);
            logged rows with a larger step are discarded.
        tensorboard: Also write TensorBoard event files.
    """

    def __init__(
        self, run_dir: str | os.PathLike, keys: Sequence[str], resume_step: int = 0, tensorboard: bool = True
    ):
        self.path = Path(run_dir) / "metrics.csv"
        self.keys = list(keys)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._truncate(resume_step)
        fresh = not self.path.exists()
        self._file = open(self.path, "a", newline="", encoding="utf-8")  # noqa: SIM115 - closed in close()
        self._csv = csv.writer(self._file)
        if fresh:
            self._csv.writerow(["step", *self.keys])
            self._file.flush()
        self._tb = None
        if tensorboard:
            from torch.utils.tensorboard import SummaryWriter

            self._tb = SummaryWriter(str(Path(run_dir) / "tensorboard"), purge_step=resume_step + 1)

    def _truncate(self, resume_step: int) -> None:
        """Keeps the header and the rows with step <= resume_step (all of them if the header changed)."""
        if not self.path.exists():
            return
        with open(self.path, newline="", encoding="utf-8") as handle:
            rows = list(csv.reader(handle))
        if not rows or rows[0] != ["step", *self.keys]:
            backup = self.path.with_suffix(".csv.old")
            logger.warning("metrics.csv has other columns; moving it to %s", backup)
            os.replace(self.path, backup)
            return
        kept = [rows[0]] + [r for r in rows[1:] if r and int(r[0]) <= resume_step]
        atomic_write(self.path, lambda tmp: _write_rows(tmp, kept))

    def write(self, step: int, values: Mapping[str, float]) -> None:
        """Logs ``values`` (keys must be among ``keys``) at ``step``."""
        unknown = sorted(set(values) - set(self.keys))
        if unknown:
            raise KeyError(f"metric keys {unknown} were not declared; declared: {self.keys}")
        self._csv.writerow([step, *(_cell(values.get(k)) for k in self.keys)])
        self._file.flush()
        if self._tb is not None:
            for key, value in values.items():
                if value is not None and math.isfinite(value):
                    self._tb.add_scalar(key, value, step)

    def close(self) -> None:
        """Flushes and closes both outputs."""
        self._file.close()
        if self._tb is not None:
            self._tb.close()


def _write_rows(path: Path, rows: Sequence[Sequence[str]]) -> None:
    """Writes ``rows`` to the CSV file ``path``."""
    with open(path, "w", newline="", encoding="utf-8") as handle:
        csv.writer(handle).writerows(rows)


def _cell(value: float | None) -> str:
    """CSV text of a value: ``repr`` (round-trips exactly) or blank."""
    return "" if value is None else repr(float(value))
