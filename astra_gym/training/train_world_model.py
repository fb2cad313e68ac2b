"""Train an Astra world model jointly on drive, manipulation and explore latent caches.

Usage::

    python -m astra_gym.training.train_world_model --preset small-cpu --run-dir runs/wm \\
        --dataset scenario=drive,path=caches/drive,weight=1 \\
        --dataset scenario=manipulation,path=caches/manipulation,weight=1 \\
        --dataset scenario=explore,path=caches/explore,weight=1 --vae runs/vae/final
    accelerate launch -m astra_gym.training.train_world_model --preset small-gpu ...   # several GPUs

Recipe (Astra, astra-release.md §5.2 and §7, with the fixes the release lacks): next-chunk flow
matching on windows of the latent caches; a history of random length (release distribution, at
most ``--max-history`` latents) packed by FramePack (``exact`` layout) in front of
``--chunk-latents`` noisy target latents; noise-as-mask on the history, 5 % whole-sequence action
dropout (for action-free guidance), the MoAE balance loss; fp32 master weights with optional bf16
autocast, AdamW with warm-up + cosine decay, gradient clipping and an EMA. Batches mix the datasets
by their weights (per row by default; ``--mixing step`` draws one dataset per step), see
:mod:`astra_gym.training.data`.

Outputs under ``--run-dir``: ``metrics.csv`` and ``tensorboard/`` (``train/*``, ``perf/*``,
``eval/*``), ``checkpoints/step_*`` (atomic and resumable: model, EMA, optimizer, scheduler, RNG,
step), ``previews/step_*.png`` and ``final/``, a :func:`~astra_gym.world_model.checkpoints.save_pretrained`
folder (EMA weights when EMA is on) whose ``extra_config`` holds what an env needs: per-scenario
modality, feature and action normalisation, VAE identity, layout, chunk size and sampler settings.

A killed run continues from its last checkpoint when started again with the same command
(``--resume auto``, the default); the data order and every random draw are the same as in an
uninterrupted run (counter-based RNG, see :mod:`astra_gym.training.checkpointing`).
"""

from __future__ import annotations

import copy
import dataclasses
import json
import logging
import math
import os
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import torch
from torch import nn

from astra_gym.training.checkpointing import (
    ExponentialMovingAverage,
    checkpoint_folder,
    latest_checkpoint,
    load_training_checkpoint,
    prune_checkpoints,
    save_training_checkpoint,
    step_generator,
)
from astra_gym.training.data import DatasetSpec, JointLatentData, batch_to
from astra_gym.training.distill import DistillConfig, distill_step
from astra_gym.training.metrics import MetricWriter
from astra_gym.training.normalization import ActionNormalizer
from astra_gym.training.optim import cosine_schedule, make_adamw
from astra_gym.training.preview import PreviewConfig, write_preview
from astra_gym.training.steps import StepConfig, per_dataset_mse, train_step
from astra_gym.utils.cli_args import arg, parse_preset_config
from astra_gym.world_model.checkpoints import load_pretrained, read_pretrained_config, save_pretrained
from astra_gym.world_model.config import AstraTransformerConfig, get_preset
from astra_gym.world_model.framepack import FramePackLayout
from astra_gym.world_model.sampling import SamplerConfig
from astra_gym.world_model.transformer import AstraTransformer

__all__ = ["TrainConfig", "PRESETS", "TrainResult", "train", "config_from_args", "main"]

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class TrainConfig:
    """Everything a world-model training run reads (each field is a CLI flag; see ``--help``)."""

    # Data
    datasets: tuple[DatasetSpec, ...] = arg(
        (),
        "a dataset: scenario=NAME,path=CACHE_DIR[,weight=W][,feature=F][,name=LABEL]; repeat the flag",
        parse=DatasetSpec.parse,
        append=True,
        flag="--dataset",
        metavar="SPEC",
    )
    mixing: Literal["sample", "step"] = arg("sample", "dataset choice per batch row (mixed batches) or per step")
    chunk_latents: int = arg(1, "target latents per sample (the env's chunk; release: 8)")
    max_history: int = arg(30, "longest history in latents (release: 30)")
    history_1x: int | None = arg(
        None,
        "FramePack: most recent latents kept at full resolution, besides the start latent (release: 1); "
        "none = --init-from's, else 1",
    )
    episode_start_p: float = arg(
        0.0, "probability that a row's history starts at an episode's reset frame (0 = uniform windows only)"
    )
    action_norm: Literal["rms", "none"] = arg(
        "rms", "action rows divided by their per-column RMS from the cache stats"
    )
    # Model
    model_preset: str = arg("small", "transformer preset of astra_gym.world_model.config (debug, small, ...)")
    init_from: str | None = arg(
        None, "save_pretrained folder to start from (fine-tuning; its config replaces --model-preset); none = random"
    )
    history_attention: Literal["full", "causal"] | None = arg(
        None,
        "transformer history attention: full (Astra/release) or causal (history attends only to history, "
        "clean modulation; enables the sampler's history KV cache); none = the preset's / --init-from's",
    )
    num_experts: int | None = arg(
        None, "override the preset's action experts per block (0 = no MoAE: one shared cam_encoder; ablation)"
    )
    action_injection: Literal["add", "cross_attn"] | None = arg(
        None, "override the preset's action injection: add (ACT-Adapter) or cross_attn (ablation)"
    )
    trainable: Literal["full", "astra"] = arg("full", "parameters to train: all, or the paper's Astra subset")
    gradient_checkpointing: bool = arg(False, "recompute blocks in the backward pass (saves memory)")
    # Optimisation
    step: StepConfig = arg(StepConfig(), "per-step recipe (noise-as-mask, action dropout, timesteps, losses)")
    distill_from: str | None = arg(
        None,
        "teacher save_pretrained folder: instead of flow matching, train a few-step student (guidance baked "
        "in) to reproduce the teacher's sampler; start the student with --init-from the same folder",
    )
    distill: DistillConfig = arg(DistillConfig(), "few-step distillation settings (with --distill-from)")
    batch_size: int = arg(8, "samples per step and process")
    data_workers: int = arg(
        0, "processes that pack batches ahead of the training step (0 = in the training process); same batches"
    )
    total_steps: int = arg(20000, "optimizer steps of the whole run")
    lr: float = arg(3e-4, "peak AdamW learning rate")
    min_lr_ratio: float = arg(0.1, "final learning rate as a fraction of --lr (cosine decay)")
    warmup_steps: int = arg(500, "linear learning-rate warm-up steps")
    weight_decay: float = arg(
        0.01, "AdamW weight decay (matrices and kernels only; biases and norm weights are not decayed)"
    )
    betas: tuple[float, float] = arg((0.9, 0.999), "AdamW betas")
    max_grad_norm: float = arg(1.0, "gradient clipping norm (0 = off)")
    ema_decay: float | None = arg(0.999, "EMA decay of the weights (none = no EMA)")
    mixed_precision: Literal["no", "bf16"] = arg("no", "bf16 autocast with fp32 master weights, or fp32")
    seed: int = arg(0, "seed of every random draw (data order, noise, init, previews)")
    # Run
    run_dir: str = arg("runs/world_model", "output folder of the run")
    resume: str = arg("auto", "auto (last checkpoint of --run-dir if any), never, or a checkpoints/step_* folder")
    stop_after: int | None = arg(None, "stop after this step (checkpointing first) even if steps remain")
    time_budget_min: float | None = arg(
        None,
        "wall-clock budget of this invocation in minutes: when spent, checkpoint and export final/ with the "
        "weights so far (the learning rate will not have decayed fully; size --total-steps to the budget)",
    )
    log_every: int = arg(10, "steps between metric rows")
    checkpoint_every: int = arg(1000, "steps between training checkpoints")
    keep_checkpoints: int = arg(3, "training checkpoints kept (older ones are deleted)")
    tensorboard: bool = arg(True, "also write TensorBoard event files")
    progress: bool = arg(True, "show a tqdm progress bar")
    # Previews and the exported model
    vae: str | None = arg(None, "VAE folder (train_vae output): decodes previews; recorded in the model metadata")
    preview_every: int = arg(0, "steps between preview rollouts (0 = off)")
    preview_chunks: int = arg(8, "chunks rolled out per dataset in a preview")
    sampler_steps: int = arg(8, "Euler steps per chunk for previews and recommended to the envs")
    sampler_guidance: float = arg(1.0, "action-free guidance scale for previews and the envs (1 = off)")
    sampler_shift: float = arg(5.0, "sigma-schedule shift for previews and the envs")

    def __post_init__(self) -> None:
        positive = (
            "chunk_latents",
            "max_history",
            "history_1x",
            "batch_size",
            "total_steps",
            "log_every",
            "checkpoint_every",
        )
        for name in positive:
            if getattr(self, name) is not None and getattr(self, name) < 1:
                raise ValueError(f"--{name.replace('_', '-')}={getattr(self, name)} must be >= 1")
        if self.warmup_steps < 0 or not 0.0 <= self.min_lr_ratio <= 1.0 or self.lr <= 0:
            raise ValueError(
                f"need lr > 0, warmup_steps >= 0, min_lr_ratio in [0, 1]; got {self.lr}, "
                f"{self.warmup_steps}, {self.min_lr_ratio}"
            )
        if self.ema_decay is not None and not 0.0 < self.ema_decay < 1.0:
            raise ValueError(f"--ema-decay={self.ema_decay} must be in (0, 1) or none")
        self.model_config()  # validates the preset name and the overrides
        if self.init_from is not None and (self.num_experts is not None or self.action_injection is not None):
            raise ValueError(
                "--num-experts/--action-injection change the architecture; they cannot apply to --init-from"
            )
        if self.history_attention not in (None, "full", "causal"):
            raise ValueError(f"--history-attention={self.history_attention!r} must be full, causal or none")
        if self.distill_from is not None and self.step.self_forcing_p > 0:
            raise ValueError("--self-forcing-p applies to flow-matching training, not to --distill-from; set it to 0")

    def model_config(self) -> AstraTransformerConfig:
        """The ``model_preset`` with the ``num_experts`` / ``action_injection`` overrides applied."""
        changes = {}
        if self.num_experts is not None:
            changes["num_experts"] = self.num_experts
        if self.action_injection is not None:
            changes["action_injection"] = self.action_injection
        return get_preset(self.model_preset).replace(**changes)

    def to_dict(self) -> dict[str, Any]:
        """JSON form (stored in checkpoints)."""
        return json.loads(json.dumps(dataclasses.asdict(self)))


PRESETS: dict[str, TrainConfig] = {
    # Seconds on a laptop: the tiny transformer, a few steps, every feature on.
    "debug": TrainConfig(
        model_preset="debug",
        batch_size=4,
        total_steps=20,
        max_history=6,
        warmup_steps=2,
        log_every=1,
        checkpoint_every=10,
        ema_decay=0.9,
        preview_chunks=2,
        sampler_steps=2,
        tensorboard=False,
    ),
    # The small (~11M) model on CPU cores, fp32.
    "small-cpu": TrainConfig(
        model_preset="small",
        batch_size=8,
        total_steps=20000,
        lr=3e-4,
        warmup_steps=500,
        checkpoint_every=500,
        preview_every=2000,
    ),
    # The small model on one or more GPUs (accelerate launch), bf16 autocast.
    "small-gpu": TrainConfig(
        model_preset="small",
        batch_size=64,
        total_steps=50000,
        lr=5e-4,
        warmup_steps=1000,
        checkpoint_every=2000,
        preview_every=5000,
        mixed_precision="bf16",
        data_workers=8,
    ),
}


@dataclass
class TrainResult:
    """What :func:`train` returns.

    Attributes:
        step: Steps completed.
        final: The exported model folder (None if the run stopped early).
        rows: Every logged metric row ``{"step": ..., key: value}`` of this invocation.
    """

    step: int
    final: Path | None
    rows: list[dict[str, float]] = field(default_factory=list)


# ---------------------------------------------------------------------------------------------
# Set-up helpers
# ---------------------------------------------------------------------------------------------


def _make_accelerator(cfg: TrainConfig):
    from accelerate import Accelerator
    from accelerate.utils import DistributedDataParallelKwargs

    # Not every expert / history scale is used by every batch: DDP must tolerate unused parameters.
    ddp = DistributedDataParallelKwargs(find_unused_parameters=True)
    return Accelerator(mixed_precision=cfg.mixed_precision, kwargs_handlers=[ddp])


def _build_model(cfg: TrainConfig) -> AstraTransformer:
    """The transformer (seeded init or ``init_from``) with ``trainable`` parameters requiring grad."""
    if cfg.init_from is not None:
        model = load_pretrained(cfg.init_from, dtype=torch.float32).train()
    else:
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(int(step_generator(cfg.seed, "init", 0).initial_seed()))
            model = AstraTransformer(cfg.model_config())
    if cfg.history_attention is not None:  # no parameters change: only how history tokens attend
        model.config = model.config.replace(history_attention=cfg.history_attention)
    trainable = set(model.trainable_parameter_names(cfg.trainable))
    for name, param in model.named_parameters():
        param.requires_grad_(name in trainable)
    model.gradient_checkpointing = cfg.gradient_checkpointing
    return model


def _load_teacher(cfg: TrainConfig, config: AstraTransformerConfig, device: torch.device) -> nn.Module | None:
    """The frozen distillation teacher, or None; it must share the student's inputs."""
    if cfg.distill_from is None:
        return None
    teacher = load_pretrained(cfg.distill_from, dtype=torch.float32).to(device).eval().requires_grad_(False)
    keys = ("in_channels", "patch_size", "modalities", "history_scales")
    differ = [k for k in keys if getattr(teacher.config, k) != getattr(config, k)]
    if differ:
        raise ValueError(
            f"teacher {cfg.distill_from} and student differ in {differ}; distill into a student with the "
            "teacher's latent channels, patch size, history scales and action modalities (e.g. --init-from "
            "the teacher)"
        )
    return teacher


def _layout(cfg: TrainConfig, model: AstraTransformer) -> FramePackLayout:
    """The ``exact`` layout (``history_1x`` full-resolution latents, by default the start model's); the start
    token sits at most ``max_history`` latents before the targets at inference too (the longest distance
    trained; FramePack needs at least its window + 1)."""
    num_1x = cfg.history_1x
    if num_1x is None:  # a fine-tune keeps the layout its start model was trained with
        start = read_pretrained_config(cfg.init_from)[1].get("layout") if cfg.init_from else None
        num_1x = (start or {}).get("num_1x", 1)
    base = FramePackLayout(mode="exact", num_1x=num_1x, patch_hw=tuple(model.config.patch_size[1:]))
    return dataclasses.replace(base, max_start_distance=max(cfg.max_history, base.window + 1))


def _resume_folder(cfg: TrainConfig) -> Path | None:
    """The checkpoint to resume from, per ``--resume``."""
    if cfg.resume == "never":
        if latest_checkpoint(cfg.run_dir) is not None:
            raise FileExistsError(
                f"{cfg.run_dir} already holds checkpoints; pass --resume auto to continue it, or a new --run-dir"
            )
        return None
    if cfg.resume == "auto":
        return latest_checkpoint(cfg.run_dir)
    return Path(cfg.resume)


# Fields that only steer logging, saving and stopping: a resumed run may change them freely.
_RUN_CONTROL = {
    "stop_after",
    "time_budget_min",
    "progress",
    "tensorboard",
    "log_every",
    "checkpoint_every",
    "keep_checkpoints",
    "preview_every",
    "preview_chunks",
    "resume",
    "run_dir",
    "vae",
}


def _warn_on_changed_config(saved: dict[str, Any], cfg: TrainConfig) -> None:
    """Warns when a resumed run's training-relevant settings differ from the checkpoint's."""
    current = cfg.to_dict()
    changed = sorted(k for k in current if k not in _RUN_CONTROL and saved.get(k) != current[k])
    if changed:
        logger.warning("resuming with changed settings %s: the run will not match an uninterrupted one", changed)


def _metric_keys(data: JointLatentData, cfg: TrainConfig) -> list[str]:
    train = ["loss", "loss_flow", "mse", "moe_balance", "lr", "grad_norm", "history_noised", "actions_dropped"]
    if cfg.step.self_forcing_p > 0:
        train.append("self_forced")
    per_dataset = [f"train/mse/{spec.label}" for spec in data.specs]
    return [f"train/{k}" for k in train] + per_dataset + ["perf/samples_per_s", "perf/step_s", "eval/preview_mse"]


def extra_config(cfg: TrainConfig, data: JointLatentData, step: int, samples: int, weights: str) -> dict[str, Any]:
    """The metadata stored with every exported model folder (what an env needs to use it).

    A distilled student also keeps its teacher's training record (``teacher``): the recipe that
    made the dynamics it reproduces, which a later fine-tune of the student continues.
    """
    extra = {
        "kind": "astra-gym-world-model",
        "scenarios": data.scenario_metadata(),
        "vae": {"identity": dict(data.vae_identity()), "folder": cfg.vae},
        "latent_shape": list(data.datasets[0].index["latent_shape"]),
        "layout": dataclasses.asdict(data.layout),
        "chunk_latents": cfg.chunk_latents,
        "max_history": cfg.max_history,
        "sampler": {
            "num_denoise_steps": cfg.sampler_steps,
            "guidance_scale": cfg.sampler_guidance,
            "shift": cfg.sampler_shift,
        },
        "training": {"step": step, "samples_seen": samples, "weights": weights, "config": cfg.to_dict()},
    }
    if cfg.distill_from is not None:
        extra["teacher"] = read_pretrained_config(cfg.distill_from)[1].get("training", {})
    return extra


def _export_model(model: nn.Module, ema: ExponentialMovingAverage | None) -> nn.Module:
    """A copy of the model holding the EMA weights (the model itself when EMA is off)."""
    if ema is None:
        return model
    copied = copy.deepcopy(model)
    ema.copy_to(copied)
    return copied


def _load_preview_vae(cfg: TrainConfig, device: torch.device):
    if cfg.vae is None or cfg.preview_every == 0:
        return None
    from astra_gym.world_model.vae_io import load_vae

    return load_vae(cfg.vae, device)


# ---------------------------------------------------------------------------------------------
# The loop
# ---------------------------------------------------------------------------------------------


@dataclass
class _Run:
    """Mutable state of one invocation (modules, data, writers); the loop's only context."""

    cfg: TrainConfig
    accelerator: Any
    data: JointLatentData
    model: nn.Module
    optimizer: Any
    scheduler: Any
    ema: ExponentialMovingAverage | None
    writer: MetricWriter | None
    vae: Any
    step: int = 0
    samples: int = 0
    rows: list[dict[str, float]] = field(default_factory=list)
    teacher: nn.Module | None = None
    out_of_time: bool = False
    reference: tuple[torch.Tensor, ...] | None = None

    @property
    def unwrapped(self) -> nn.Module:
        return self.accelerator.unwrap_model(self.model)


class _StepBatches(torch.utils.data.Dataset):
    """Item ``step`` = this process's rows of step ``step``'s batch (counter-based: any order, any worker)."""

    def __init__(self, data: JointLatentData, cfg: TrainConfig, rank: int, world: int) -> None:
        self.data, self.cfg, self.rank, self.world = data, cfg, rank, world

    def __len__(self) -> int:
        return self.cfg.total_steps

    def __getitem__(self, step: int):
        rows = slice(self.rank * self.cfg.batch_size, (self.rank + 1) * self.cfg.batch_size)
        return self.data.batch(self.cfg.batch_size * self.world, step_generator(self.cfg.seed, "data", step), rows)


def _batches(run: _Run, stop: int):
    """Batches of steps ``run.step .. stop - 1`` in order, packed by ``data_workers`` processes ahead."""
    dataset = _StepBatches(run.data, run.cfg, run.accelerator.process_index, run.accelerator.num_processes)
    steps = range(run.step, stop)
    if run.cfg.data_workers == 0:
        return (dataset[step] for step in steps)
    loader = torch.utils.data.DataLoader(
        dataset, batch_size=None, sampler=steps, num_workers=run.cfg.data_workers, prefetch_factor=4
    )
    return iter(loader)


def _one_step(run: _Run, batch) -> dict[str, torch.Tensor]:
    """Runs forward/backward/update on this step's batch; returns detached logs."""
    cfg, acc = run.cfg, run.accelerator
    share = (acc.process_index, acc.num_processes)
    batch = batch_to(batch, acc.device)
    generator = step_generator(cfg.seed, "noise", run.step)  # every rank: its rows of the global draws
    if run.teacher is None:
        loss, logs = train_step(run.model, batch, cfg.step, generator, share, run.reference, _sampler(cfg))
    else:
        autocast = torch.bfloat16 if cfg.mixed_precision == "bf16" else None
        loss, logs = distill_step(
            run.model,
            run.teacher,
            batch,
            cfg.distill,
            cfg.step.action_dropout,
            cfg.step.moe_balance_weight,
            generator,
            autocast,
            share,
        )
    acc.backward(loss)
    params = [p for p in run.model.parameters() if p.requires_grad]
    logs["grad_norm"] = acc.clip_grad_norm_(params, cfg.max_grad_norm if cfg.max_grad_norm > 0 else math.inf)
    logs["lr"] = torch.tensor(run.optimizer.param_groups[0]["lr"])
    run.optimizer.step()
    run.scheduler.step()
    run.optimizer.zero_grad(set_to_none=True)
    if run.ema is not None:
        run.ema.update(run.unwrapped)
    logs["mse_sums"], logs["mse_counts"] = per_dataset_mse(logs.pop("mse_per_row"), batch.dataset, len(run.data.specs))
    return logs


def _log(run: _Run, window: list[dict[str, torch.Tensor]], elapsed: float, bar: Any) -> None:
    """Reduces the logs of the last steps over steps and processes and writes one metric row."""
    acc = run.accelerator
    keys = [k for k in window[0] if not k.startswith("mse_")]
    means = torch.stack([torch.stack([w[k].float().to(acc.device) for k in keys]) for w in window]).mean(0)
    means = acc.reduce(means, "mean")
    sums = acc.reduce(torch.stack([w["mse_sums"] for w in window]).sum(0).to(acc.device), "sum")
    counts = acc.reduce(torch.stack([w["mse_counts"] for w in window]).sum(0).to(acc.device), "sum")
    row = {f"train/{k}": float(v) for k, v in zip(keys, means.tolist(), strict=True)}
    for spec, total, count in zip(run.data.specs, sums.tolist(), counts.tolist(), strict=True):
        if count:
            row[f"train/mse/{spec.label}"] = total / count
    row["perf/step_s"] = elapsed / len(window)
    row["perf/samples_per_s"] = len(window) * run.cfg.batch_size * acc.num_processes / elapsed
    if acc.is_main_process:
        run.writer.write(run.step, row)
        run.rows.append({"step": run.step, **row})
        if bar is not None:
            bar.set_postfix(loss=f"{row['train/loss']:.4f}", sps=f"{row['perf/samples_per_s']:.1f}")


def _save(run: _Run) -> None:
    """Writes a training checkpoint (main process) and prunes old ones."""
    acc = run.accelerator
    acc.wait_for_everyone()
    if acc.is_main_process:
        folder = save_training_checkpoint(
            checkpoint_folder(run.cfg.run_dir, run.step),
            model=run.unwrapped,
            optimizer=run.optimizer,
            scheduler=run.scheduler,
            ema=run.ema,
            step=run.step,
            samples_seen=run.samples,
            config=run.cfg.to_dict(),
            extra_config=extra_config(run.cfg, run.data, run.step, run.samples, "raw"),
        )
        prune_checkpoints(run.cfg.run_dir, run.cfg.keep_checkpoints, protect=[folder])
    acc.wait_for_everyone()


def _sampler(cfg: TrainConfig) -> SamplerConfig:
    """The sampler recommended to the envs (previews and self-forcing use it too)."""
    return SamplerConfig(num_steps=cfg.sampler_steps, shift=cfg.sampler_shift, guidance_scale=cfg.sampler_guidance)


def _preview(run: _Run) -> None:
    """Writes a preview PNG and logs ``eval/preview_mse`` (main process)."""
    if not run.accelerator.is_main_process:
        return
    cfg = run.cfg
    sampler = _sampler(cfg)
    path = Path(cfg.run_dir) / "previews" / f"step_{run.step:08d}.png"
    with run.accelerator.autocast():
        mse = write_preview(
            _export_model(run.unwrapped, run.ema),
            run.vae,
            run.data,
            PreviewConfig(cfg.preview_chunks, sampler, cfg.seed),
            path,
        )
    run.writer.write(run.step, {"eval/preview_mse": mse})
    run.rows.append({"step": run.step, "eval/preview_mse": mse})


def _budget_spent(run: _Run, started: float) -> bool:
    """Whether ``time_budget_min`` is spent (checked at log steps; reduced so every process stops together)."""
    if run.cfg.time_budget_min is None or run.step % run.cfg.log_every:
        return False
    spent = torch.tensor(float(time.perf_counter() - started > 60.0 * run.cfg.time_budget_min))
    return bool(run.accelerator.reduce(spent.to(run.accelerator.device), "max") > 0)


def _loop(run: _Run, bar: Any) -> None:
    """Steps until ``total_steps`` (or ``stop_after``), logging, checkpointing and previewing."""
    cfg = run.cfg
    stop = cfg.total_steps if cfg.stop_after is None else min(cfg.total_steps, cfg.stop_after)
    window, tick = [], time.perf_counter()
    started = tick
    batches = _batches(run, stop)
    while run.step < stop:
        window.append(_one_step(run, next(batches)))
        run.step += 1
        run.samples += cfg.batch_size * run.accelerator.num_processes
        if bar is not None:
            bar.update(1)
        if run.step % cfg.log_every == 0 or run.step == stop:
            now = time.perf_counter()
            _log(run, window, now - tick, bar)
            window, tick = [], now
        run.out_of_time = run.step < stop and _budget_spent(run, started)
        if run.step % cfg.checkpoint_every == 0 or run.step == stop or run.out_of_time:
            _save(run)
        if cfg.preview_every and run.step % cfg.preview_every == 0:
            _preview(run)
        if run.out_of_time:
            logger.warning("time budget of %s min spent at step %d of %d", cfg.time_budget_min, run.step, stop)
            break


def init_normalizers(folder: str) -> dict[str, ActionNormalizer]:
    """``{feature: normaliser}`` a :func:`save_pretrained` world model was trained with.

    Fine-tuning keeps them: fitting new ones to other data (e.g. the agent's own, in the Dyna loop)
    would rescale the actions the model has learned to read, and the reward models trained with
    the old ones would disagree with the env's single normalisation.
    """
    _, extra = read_pretrained_config(folder)
    found = {}
    for scenario, entry in extra.get("scenarios", {}).items():
        norm = ActionNormalizer.from_dict(entry["action_normalization"])
        found[norm.feature] = norm
        logger.info("%s: keeping the action normalisation of %s (scale %s)", scenario, folder, norm.scale)
    return found


def train(cfg: TrainConfig) -> TrainResult:
    """Runs (or resumes) a training run; the composition root of this module.

    Args:
        cfg: The run's configuration.

    Returns:
        The steps completed, the exported folder and the logged metric rows.
    """
    if not cfg.datasets:
        raise ValueError("no datasets; pass --dataset scenario=drive,path=CACHE_DIR (repeat for each scenario)")
    accelerator = _make_accelerator(cfg)
    model = _build_model(cfg)
    layout = _layout(cfg, model)
    data = JointLatentData(
        cfg.datasets,
        model.config,
        cfg.chunk_latents,
        cfg.max_history,
        layout,
        cfg.action_norm,
        cfg.mixing,
        fixed_normalizers=init_normalizers(cfg.init_from) if cfg.init_from else None,
        episode_start_p=cfg.episode_start_p,
        prefix=cfg.step.self_forcing_p > 0,
    )
    model = model.to(accelerator.device)
    optimizer = make_adamw(model, cfg.lr, cfg.weight_decay, cfg.betas)
    scheduler = cosine_schedule(optimizer, cfg.warmup_steps, cfg.total_steps, cfg.min_lr_ratio)
    ema = ExponentialMovingAverage(model, cfg.ema_decay) if cfg.ema_decay is not None else None
    resume = _resume_folder(cfg)
    state = None
    if resume is not None:
        state = load_training_checkpoint(resume, model=model, optimizer=optimizer, scheduler=scheduler, ema=ema)
        logger.info("resuming %s at step %d", resume, state.step)
        _warn_on_changed_config(state.meta.get("config", {}), cfg)
    config = model.config
    model, optimizer = accelerator.prepare(model, optimizer)  # may wrap the model (DDP)
    writer = None
    if accelerator.is_main_process:
        writer = MetricWriter(cfg.run_dir, _metric_keys(data, cfg), state.step if state else 0, cfg.tensorboard)
        (Path(cfg.run_dir) / "config.json").write_text(json.dumps(cfg.to_dict(), indent=2), encoding="utf-8")
    run = _Run(
        cfg,
        accelerator,
        data,
        model,
        optimizer,
        scheduler,
        ema,
        writer,
        _load_preview_vae(cfg, accelerator.device),
        state.step if state else 0,
        state.samples_seen if state else 0,
        teacher=_load_teacher(cfg, config, accelerator.device),
        reference=_mean_latents(cfg, data, accelerator.device),
    )
    try:
        _run_with_progress(run)
        final = _finish(run)
    finally:
        if writer is not None:
            writer.close()
        accelerator.end_training()  # destroys the process group (a no-op in one process)
    return TrainResult(run.step, final, run.rows)


def _mean_latents(cfg: TrainConfig, data: JointLatentData, device: torch.device) -> tuple[torch.Tensor, ...] | None:
    """Each dataset's mean latent on ``device`` when the detail loss weight needs it, else None."""
    if cfg.step.detail_weight == 0:
        return None
    return tuple(mean.to(device) for mean in data.mean_latents())


def _run_with_progress(run: _Run) -> None:
    bar = None
    if run.cfg.progress and run.accelerator.is_main_process:
        from tqdm import tqdm

        bar = tqdm(total=run.cfg.total_steps, initial=run.step, desc="train world model", unit="step")
    try:
        _loop(run, bar)
    finally:
        if bar is not None:
            bar.close()


def _finish(run: _Run) -> Path | None:
    """Exports ``<run_dir>/final`` (EMA weights if on) once every step is done or the time budget is spent."""
    if run.step < run.cfg.total_steps and not run.out_of_time:
        return None
    final = Path(run.cfg.run_dir) / "final"
    if run.accelerator.is_main_process:
        weights = "ema" if run.ema is not None else "raw"
        meta = extra_config(run.cfg, run.data, run.step, run.samples, weights)
        save_pretrained(_export_model(run.unwrapped, run.ema), final, meta)
        logger.info("exported %s weights to %s", weights, final)
    run.accelerator.wait_for_everyone()
    return final


# ---------------------------------------------------------------------------------------------
# CLI
# ---------------------------------------------------------------------------------------------


def config_from_args(argv: Sequence[str] | None = None) -> TrainConfig:
    """The ``--preset`` (default small-cpu) with every given flag applied; ``--print-config`` prints it and exits."""
    return parse_preset_config(TrainConfig, PRESETS, "small-cpu", argv, __doc__)


def main(argv: Sequence[str] | None = None) -> None:
    """Command-line entry point (see the module docstring)."""
    cfg = config_from_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    result = train(cfg)
    if result.final is not None:
        logger.info("done: %d steps, model in %s", result.step, result.final)
    else:
        logger.info("stopped at step %d of %d; run the same command again to continue", result.step, cfg.total_steps)
    if int(os.environ.get("WORLD_SIZE", "1")) > 1:
        _exit_without_destructors()


def _exit_without_destructors() -> None:
    """Ends a finished torchrun rank with exit code 0, skipping the interpreter's teardown.

    Everything is saved and the ranks have met at a barrier, but in about 1 run in 12 on this CPU
    (torch 2.13, gloo) a rank still aborts in a C++ destructor at interpreter exit ("terminate
    called without an active exception", SIGABRT) even after ``destroy_process_group``, and torchrun
    then reports the whole run as failed. Measured with a 3-step DDP script: 2 of 24 runs failed
    without this exit, 0 of 24 with it.
    """
    logging.shutdown()
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(0)


if __name__ == "__main__":
    main()
