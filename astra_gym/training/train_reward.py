"""Train a :class:`~astra_gym.world_model.reward_model.RewardModel` for one scenario from episodes.

Usage::

    python -m astra_gym.training.train_reward --preset small --episodes data/drive \\
        --action-norm runs/wm/final --out runs/reward-drive

One sample is one env step t of a recorded episode: the ``num_frames`` newest frames after the
step (``frames[t+2-k .. t+1]``, the first frame repeated at the episode start), the step's action
row (the scenario's command feature, normalised like the world model's rows), and the targets
``rewards[t]`` and ``terminated[t]``. Loss = reward regression (Huber or MSE) + ``termination_weight``
x binary cross-entropy on the termination logit. Terminations are rare, so the BCE weighs the
positive class by ``(negatives / positives) ** termination_balance`` (1 = fully balanced, 0 = none).

``--pose-weight W`` adds ``W`` x the MSE of an auxiliary head (``RewardModelConfig.pose_dim``) that
predicts the task's ground-truth poses after the step (``Task.pose_keys``, e.g. Manipulation's
gripper, block and goal positions; standardised by the training transitions' mean and std). A
distance alone says little about where each object is; the poses teach the features that. Held-out
scores then include ``pose_mae``, the head's mean absolute error in the poses' own units.
``--pose-reward`` goes further: the model computes the task's reward from its predicted poses
(:data:`~astra_gym.world_model.reward_model.POSE_REWARDS`), and the reward loss trains the pose head
through that formula too.

Held-out episodes (``--holdout-fraction``) give ``eval/reward_mae`` (and the MAE of always predicting
the training mean, for reference) and termination accuracy, balanced accuracy, precision and
recall at the env's decision threshold (logit > 0).

``--imagined BUNDLE`` also trains on the world model's own frames: every episode is re-imagined by
that bundle from ``--imagined-starts`` starts, ``--imagined-horizon`` steps under its recorded
actions, with the simulator's rewards (:mod:`astra_gym.training.imagined_data`). Those pieces join
the training transitions, and the held-out episodes' pieces give the same scores under
``eval_imagined/``: how right the model is on what an agent inside will show it. The model is saved atomically to
``<out>/final`` (:mod:`astra_gym.world_model.reward_io`) with those numbers in its metadata.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import math
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import numpy as np
import torch
import torch.nn.functional as F

from astra_gym.data.action_codecs import INFERENCE_FEATURE, episode_rows
from astra_gym.data.episodes import Episode, episode_filename, episode_paths, load_episode, save_episode
from astra_gym.data.tasks import Task, get_task, relabel
from astra_gym.training.checkpointing import step_generator
from astra_gym.training.episode_data import load_split
from astra_gym.training.loop import config_dict, run_steps
from astra_gym.training.metrics import MetricWriter
from astra_gym.training.normalization import ActionNormalizer
from astra_gym.training.optim import cosine_schedule, make_adamw, optimizer_step
from astra_gym.utils.atomic import atomic_write_text
from astra_gym.utils.cli_args import arg, parse_preset_config
from astra_gym.utils.device import resolve_device
from astra_gym.utils.pixels import uint8_to_pixels
from astra_gym.world_model.reward_io import save_reward_model
from astra_gym.world_model.reward_model import POSE_REWARDS, RewardModel, get_reward_model_preset

__all__ = ["RewardTrainConfig", "PRESETS", "TransitionPool", "pose_scale", "train_reward", "main"]

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class RewardTrainConfig:
    """Everything a reward-model training run reads (each field is a CLI flag; see ``--help``)."""

    episodes: tuple[str, ...] = arg((), "episode folder of the scenario; repeat the flag", parse=str, append=True)
    scenario: str | None = arg(None, "scenario of the episodes (none = read from them; they must agree)")
    task: str | None = arg(
        None,
        "the agent task whose reward to learn (astra_gym.data.tasks; relabelled from the recorded poses); "
        "none = the simulator's own",
    )
    model_preset: str = arg("small", "RewardModel preset: small, keypoints (reads where small objects are) or debug")
    num_frames: int = arg(1, "newest frames the model sees")
    action_norm: str = arg(
        "rms", "rms (from these episodes), none, or a world-model folder whose normalisation to reuse"
    )
    vae: str | None = arg(
        None,
        "VAE folder (train_vae output): train and evaluate on its reconstructions of the frames, the image "
        "domain the world model generates in (none = the real frames)",
    )
    imagined: str | None = arg(
        None,
        "bundle (name or folder) whose rollouts of the episodes' recorded actions, with the real rewards, are "
        "added to the training transitions and scored under eval_imagined/ (none = recorded frames only)",
    )
    imagined_horizon: int = arg(32, "--imagined: imagined steps per piece")
    imagined_starts: int = arg(6, "--imagined: pieces per episode, evenly spaced")
    imagined_context: int = arg(4, "--imagined: real frames the world model is reset on")
    imagined_cache: str | None = arg(
        None,
        "--imagined: folder keeping the imagined pieces (train/, heldout/), reused by later runs with the same "
        "episodes and settings (none = imagine anew)",
    )
    batch_size: int = arg(64, "transitions per step")
    total_steps: int = arg(5000, "optimizer steps")
    lr: float = arg(1e-3, "peak AdamW learning rate")
    min_lr_ratio: float = arg(0.1, "final learning rate as a fraction of --lr (cosine decay)")
    warmup_steps: int = arg(100, "linear learning-rate warm-up steps")
    weight_decay: float = arg(1e-4, "AdamW weight decay (matrices/kernels only)")
    max_grad_norm: float = arg(1.0, "gradient clipping norm (0 = off)")
    reward_loss: Literal["huber", "mse"] = arg("huber", "reward regression loss")
    termination_weight: float = arg(1.0, "weight of the termination BCE")
    termination_balance: float = arg(1.0, "positive-class BCE weight = (neg/pos) ** this (1 = balanced, 0 = off)")
    pose_weight: float = arg(
        0.0,
        "weight of an auxiliary loss: a second head predicts the task's ground-truth poses after the step "
        "(standardised), which teaches the features where the objects are (0 = off; needs a task with poses)",
    )
    pose_reward: bool = arg(
        False,
        "the model computes the task's reward from its predicted poses with the task's formula instead of a "
        "reward head (needs --pose-weight > 0 and a task of reward_model.POSE_REWARDS, e.g. reach-push)",
    )
    anchor_every: int = arg(
        0,
        "also read the episode's start frame (RewardModelConfig.anchor), taken every N recorded steps (the env's "
        "episode length: Manipulation 50; an imagined piece's is its first frame); 0 = the newest frames only",
    )
    holdout_fraction: float = arg(0.1, "share of the episodes held out for evaluation")
    eval_every: int = arg(500, "steps between held-out evaluations (0 = only at the end)")
    seed: int = arg(0, "seed of the split, the init and every random draw")
    device: str = arg("auto", "torch device: auto, cpu, cuda, cuda:N")
    out: str = arg("runs/reward", "output folder (the model is saved to OUT/final)")
    log_every: int = arg(50, "steps between metric rows")
    tensorboard: bool = arg(True, "also write TensorBoard event files")
    progress: bool = arg(True, "show a tqdm progress bar")

    def __post_init__(self) -> None:
        for name in ("num_frames", "batch_size", "total_steps", "log_every", "imagined_horizon", "imagined_starts"):
            if getattr(self, name) < 1:
                raise ValueError(f"--{name.replace('_', '-')}={getattr(self, name)} must be >= 1")
        if self.termination_balance < 0 or self.termination_weight < 0 or self.pose_weight < 0:
            raise ValueError("--termination-balance, --termination-weight and --pose-weight must be >= 0")
        if self.anchor_every < 0:
            raise ValueError(f"--anchor-every={self.anchor_every} must be >= 0 (0 = no anchor)")
        if self.anchor_every and self.imagined is not None and self.imagined_horizon > self.anchor_every:
            raise ValueError(
                f"--imagined-horizon {self.imagined_horizon} exceeds --anchor-every {self.anchor_every}: an imagined "
                "piece's anchor is its first (real) frame, so a piece must fit in one anchored episode"
            )
        if self.pose_reward and self.pose_weight == 0:
            raise ValueError("--pose-reward needs --pose-weight > 0 (the poses it computes the reward from)")


PRESETS: dict[str, RewardTrainConfig] = {
    "debug": RewardTrainConfig(
        model_preset="debug",
        batch_size=8,
        total_steps=10,
        warmup_steps=2,
        eval_every=5,
        log_every=1,
        tensorboard=False,
    ),
    "small": RewardTrainConfig(model_preset="small"),
}


class TransitionPool:
    """Every step of some episodes of one scenario: frames, normalised action row, reward, termination,
    with ``pose_keys`` the poses after the step, and with ``anchor_every`` the start frame of its episode.

    Args:
        episodes: Episodes of one scenario.
        feature: Action feature of the rows.
        normalizer: Applied to the rows.
        num_frames: Newest frames per sample k.
        pose_keys: Poses to gather, concatenated in this order (none = an empty [N, 0] array).
        anchor_every: N > 0: the anchor of step t is frame ``N * (t // N)``, where an env episode of N
            steps (the context's newest frame first) would have started; 0 = no anchors.
    """

    def __init__(
        self,
        episodes: Sequence[Episode],
        feature: str,
        normalizer: ActionNormalizer,
        num_frames: int,
        pose_keys: Sequence[str] = (),
        anchor_every: int = 0,
    ):
        self.frames = [ep.frames for ep in episodes]
        rows = [torch.from_numpy(episode_rows(ep, (feature,))[feature]) for ep in episodes]
        self.rows = normalizer.apply(torch.cat(rows))  # [N, d]
        self.rewards = torch.from_numpy(np.concatenate([ep.rewards for ep in episodes])).float()  # [N]
        self.terminated = torch.from_numpy(np.concatenate([ep.terminated for ep in episodes]))  # [N]
        self.episode = np.concatenate([np.full(ep.num_steps, i) for i, ep in enumerate(episodes)])
        self.step = np.concatenate([np.arange(ep.num_steps) for ep in episodes])
        self.poses = torch.from_numpy(np.concatenate([_poses_after(ep, pose_keys) for ep in episodes])).float()
        self.num_frames, self.anchor_every = num_frames, anchor_every

    def __len__(self) -> int:
        return len(self.rewards)

    def gather(self, index: torch.Tensor) -> tuple[torch.Tensor, ...]:
        """(frames [B, k, 3, H, W] in [-1, 1], rows [B, d], rewards [B], terminated [B], poses [B, P], anchors
        [B, 1, 3, H, W] in [-1, 1] or None without ``anchor_every``) of transitions ``index``."""
        clips, anchors = [], []
        for i in index.tolist():
            frames, t = self.frames[self.episode[i]], int(self.step[i])
            picks = np.clip(np.arange(t + 2 - self.num_frames, t + 2), 0, None)  # newest k frames after step t
            clips.append(uint8_to_pixels(frames[picks]))
            if self.anchor_every:
                anchors.append(uint8_to_pixels(frames[self.anchor_every * (t // self.anchor_every), None]))
        anchor = torch.stack(anchors) if anchors else None
        labels = self.rows[index], self.rewards[index], self.terminated[index], self.poses[index]
        return torch.stack(clips), *labels, anchor

    def sample(self, count: int, generator: torch.Generator):
        """:meth:`gather` of ``count`` transitions drawn uniformly."""
        return self.gather(torch.randint(len(self), (count,), generator=generator))


def _poses_after(episode: Episode, keys: Sequence[str]) -> np.ndarray:
    """[T, P] float: the poses ``keys`` after each of the episode's T steps, concatenated."""
    missing = [key for key in keys if key not in episode.poses]
    if missing:
        raise ValueError(f"an episode has no {missing} poses (it has {sorted(episode.poses)}); use --pose-weight 0")
    columns = [episode.poses[key][1:].reshape(episode.num_steps, -1) for key in keys]
    return np.concatenate(columns, axis=1) if columns else np.zeros((episode.num_steps, 0))


def _scenario(cfg: RewardTrainConfig, episodes: Sequence[Episode]) -> str:
    found = sorted({ep.scenario for ep in episodes})
    if cfg.scenario is not None and found != [cfg.scenario]:
        raise ValueError(f"--scenario {cfg.scenario} but the episodes are {found}; pass one scenario's folders")
    if len(found) != 1:
        raise ValueError(f"the episodes mix scenarios {found}; train one reward model per scenario")
    return found[0]


def _normalizer(cfg: RewardTrainConfig, scenario: str, feature: str, episodes: Sequence[Episode]) -> ActionNormalizer:
    """``--action-norm``: from the episodes' rows (rms), identity (none) or a world-model folder."""
    if cfg.action_norm == "none":
        rows = episode_rows(episodes[0], (feature,))[feature]
        return ActionNormalizer.identity(feature, rows.shape[1])
    if cfg.action_norm == "rms":
        return ActionNormalizer.from_rows(
            feature, np.concatenate([episode_rows(ep, (feature,))[feature] for ep in episodes])
        )
    from astra_gym.world_model.checkpoints import read_pretrained_config

    _, extra = read_pretrained_config(cfg.action_norm)
    entry = extra.get("scenarios", {}).get(scenario)
    if entry is None or entry["feature"] != feature:
        raise ValueError(f"world model {cfg.action_norm} has no {scenario!r} scenario with feature {feature!r}")
    return ActionNormalizer.from_dict(entry["action_normalization"])


def _pos_weight(pool: TransitionPool, balance: float) -> float:
    positives = int(pool.terminated.sum())
    if positives == 0:
        logger.warning("no terminations in the training episodes; the termination head learns 'never'")
        return 1.0
    return ((len(pool) - positives) / positives) ** balance


def pose_scale(poses: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(mean [P], std [P]) of the training transitions' poses [N, P]; a constant coordinate keeps std 1."""
    std = poses.std(dim=0)
    return poses.mean(dim=0), torch.where(std > 1e-6, std, torch.ones_like(std))


def _losses(model: RewardModel, batch, cfg: RewardTrainConfig, pos_weight: float, device) -> tuple[torch.Tensor, dict]:
    frames, rows, rewards, terminated, poses, anchor = (None if t is None else t.to(device) for t in batch)
    with_poses = model.pose_head is not None
    if not with_poses:
        reward, logit = model(frames, rows, anchor=anchor)
    else:
        reward, logit, predicted = model(frames, rows, poses=True, anchor=anchor)
        pose_loss = F.mse_loss(predicted / model.pose_std, poses / model.pose_std)  # in standard deviations
    if cfg.reward_loss == "huber":
        reward_loss = F.smooth_l1_loss(reward, rewards)
    else:
        reward_loss = F.mse_loss(reward, rewards)
    weight = torch.tensor(pos_weight, device=device)
    term_loss = F.binary_cross_entropy_with_logits(logit, terminated.float(), pos_weight=weight)
    loss = reward_loss + cfg.termination_weight * term_loss
    logs = {"train/reward_loss": reward_loss.item(), "train/termination_loss": term_loss.item()}
    if with_poses:
        loss = loss + cfg.pose_weight * pose_loss
        logs["train/pose_loss"] = pose_loss.item()
    return loss, {"train/loss": loss.item(), **logs}


@torch.no_grad()
def evaluate(
    model: RewardModel,
    pool: TransitionPool,
    reward_mean: float,
    batch: int = 256,
    prefix: str = "eval",
) -> dict[str, float]:
    """Held-out reward MAE (and the constant-mean baseline's), termination classification scores and the
    pose head's MAE in the poses' units (NaN without one); keyed ``{prefix}/...``."""
    was_training = model.training
    model.eval()
    device = next(model.parameters()).device
    preds, logits, pose_errors = [], [], []
    for start in range(0, len(pool), batch):
        frames, rows, _, _, poses, anchor = pool.gather(torch.arange(start, min(start + batch, len(pool))))
        anchor = None if anchor is None else anchor.to(device)
        out = model(frames.to(device), rows.to(device), poses=model.pose_head is not None, anchor=anchor)
        preds.append(out[0].cpu())
        logits.append(out[1].cpu())
        if model.pose_head is not None:
            pose_errors.append((out[2].cpu() - poses).abs())
    model.train(was_training)
    reward, predicted = torch.cat(preds), torch.cat(logits) > 0
    truth = pool.terminated
    tp, tn = int((predicted & truth).sum()), int((~predicted & ~truth).sum())
    pos, neg = int(truth.sum()), int((~truth).sum())
    scores = {
        "reward_mae": float((reward - pool.rewards).abs().mean()),
        "reward_mae_mean_baseline": float((pool.rewards - reward_mean).abs().mean()),
        "termination_accuracy": (tp + tn) / len(pool),
        "termination_balanced_accuracy": 0.5 * (tp / pos if pos else 1.0) + 0.5 * (tn / neg if neg else 1.0),
        "termination_precision": tp / int(predicted.sum()) if int(predicted.sum()) else math.nan,
        "termination_recall": tp / pos if pos else math.nan,
        "pose_mae": float(torch.cat(pose_errors).mean()) if pose_errors else math.nan,
    }
    return {f"{prefix}/{name}": value for name, value in scores.items()}


_SCORES = [
    "reward_mae",
    "reward_mae_mean_baseline",
    "termination_accuracy",
    "termination_balanced_accuracy",
    "termination_precision",
    "termination_recall",
    "pose_mae",
]
_EVAL_KEYS = [f"{prefix}/{name}" for prefix in ("eval", "eval_imagined") for name in _SCORES]
_TRAIN_KEYS = [
    "train/loss", "train/reward_loss", "train/termination_loss", "train/pose_loss", "train/lr", "perf/samples_per_s"
]  # fmt: skip


def _relabelled(episodes: Sequence[Episode], task: Task) -> list[Episode]:
    """The episodes with the rewards of ``task`` (recomputed from their poses; unchanged for the simulator's own)."""
    if task.native:
        return list(episodes)
    return [
        dataclasses.replace(ep, rewards=relabel(ep.poses, ep.rewards, task).astype(ep.rewards.dtype))
        for ep in episodes
    ]


def _reconstructed(episodes: Sequence[Episode], vae_folder: str, device: torch.device) -> list:
    """The episodes with every frame replaced by the VAE's reconstruction (uint8, same shapes)."""
    from astra_gym.world_model.vae_io import load_vae, reconstruct_frames

    vae = load_vae(vae_folder, device)
    return [dataclasses.replace(ep, frames=reconstruct_frames(vae, ep.frames)) for ep in episodes]


def _imagined(
    cfg: RewardTrainConfig, scenario: str, episodes: Sequence[Episode], device: torch.device, split: str
) -> list[Episode]:
    """``--imagined``: the episodes' pieces as imagined by that bundle (progress bar per batch), read
    from and written to ``--imagined-cache``/``split`` when given."""
    from tqdm.auto import tqdm

    from astra_gym.envs.variants import bundle_folder
    from astra_gym.rollout.bundle import load_bundle
    from astra_gym.training.imagined_data import imagine_episodes

    folder = bundle_folder(cfg.imagined).resolve()
    settings = {
        "bundle": str(folder),
        "task": cfg.task,  # the pieces carry the task's rewards
        "horizon": cfg.imagined_horizon,
        "starts": cfg.imagined_starts,
        "context": cfg.imagined_context,
        "seed": cfg.seed,
        "episodes": [[ep.env_id, ep.seed, ep.num_steps] for ep in episodes],
    }
    cache = None if cfg.imagined_cache is None else Path(cfg.imagined_cache) / split
    if cache is not None and (cache / _CACHE_SETTINGS).exists():
        return _cached_pieces(cache, settings)
    engine = load_bundle(folder, scenario, device).engine()
    with tqdm(desc=f"imagine {split} episodes", unit="piece", disable=not cfg.progress) as bar:

        def advance(done: int, total: int) -> None:
            bar.total = total
            bar.update(done - bar.n)

        pieces = imagine_episodes(
            episodes,
            engine,
            cfg.imagined_horizon,
            cfg.imagined_starts,
            cfg.imagined_context,
            cfg.seed,
            progress=advance,
        )
    if cache is not None:
        for index, piece in enumerate(pieces):
            save_episode(piece, cache / episode_filename(index))
        atomic_write_text(cache / _CACHE_SETTINGS, json.dumps(settings, indent=1))  # last: marks the folder complete
    return pieces


_CACHE_SETTINGS = "imagined.json"


def _cached_pieces(cache: Path, settings: dict) -> list[Episode]:
    """The pieces kept in ``cache``; a ValueError if they were imagined with other settings or episodes."""
    kept = json.loads((cache / _CACHE_SETTINGS).read_text())
    if kept != settings:
        changed = sorted(key for key in settings if kept.get(key) != settings[key])
        raise ValueError(
            f"--imagined-cache {cache.parent} holds pieces imagined with other {changed}; give a new folder "
            "or delete that one"
        )
    logger.info("reusing the imagined pieces in %s", cache)
    return [load_episode(path) for path in episode_paths(cache)]


def train_reward(cfg: RewardTrainConfig) -> Path:
    """Trains, evaluates and saves one scenario's reward model; returns the saved folder."""
    split = load_split(cfg.episodes, cfg.holdout_fraction, step_generator(cfg.seed, "split", 0))
    train_eps = [ep for group in split.train for ep in group]
    held_eps = [ep for group in split.holdout for ep in group]
    scenario = _scenario(cfg, train_eps + held_eps)
    task = get_task(scenario, cfg.task)
    train_eps, held_eps = _relabelled(train_eps, task), _relabelled(held_eps, task)
    feature = INFERENCE_FEATURE[scenario]
    normalizer = _normalizer(cfg, scenario, feature, train_eps)
    device = resolve_device(cfg.device)
    imagined_train, imagined_held = [], []
    if cfg.imagined is not None:
        imagined_train = _imagined(cfg, scenario, train_eps, device, "train")
        imagined_held = _imagined(cfg, scenario, held_eps, device, "heldout") if held_eps else []
    if cfg.vae is not None:
        train_eps, held_eps = _reconstructed(train_eps, cfg.vae, device), _reconstructed(held_eps, cfg.vae, device)
    pose_keys = _pose_keys(cfg, task)
    pool = TransitionPool(train_eps + imagined_train, feature, normalizer, cfg.num_frames, pose_keys, cfg.anchor_every)
    held = {
        prefix: TransitionPool(eps, feature, normalizer, cfg.num_frames, pose_keys, cfg.anchor_every)
        for prefix, eps in (("eval", held_eps), ("eval_imagined", imagined_held))
        if eps
    }
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(step_generator(cfg.seed, "init", 0).initial_seed())
        config = get_reward_model_preset(
            cfg.model_preset,
            pool.rows.shape[1],
            num_frames=cfg.num_frames,
            pose_dim=pool.poses.shape[1],
            pose_reward=task.name if cfg.pose_reward else None,
            anchor=cfg.anchor_every > 0,
        )
        model = RewardModel(config)
    if pose_keys:
        model.set_pose_scale(*pose_scale(pool.poses))
    model = model.to(device).train()
    writer = MetricWriter(cfg.out, _TRAIN_KEYS + _EVAL_KEYS, 0, cfg.tensorboard)
    reward_mean = float(pool.rewards.mean())
    try:
        _loop(model, pool, held, reward_mean, _pos_weight(pool, cfg.termination_balance), cfg, writer)
        metrics: dict[str, Any] = {
            "steps": cfg.total_steps,
            "train_transitions": len(pool),
            "imagined_train_transitions": sum(ep.num_steps for ep in imagined_train),
        }
        if held:
            metrics.update(_evaluate_all(model, held, reward_mean))
            writer.write(cfg.total_steps, metrics_only(metrics))
    finally:
        writer.close()
    metrics["config"] = config_dict(cfg)
    metrics = {k: (None if isinstance(v, float) and not math.isfinite(v) else v) for k, v in metrics.items()}
    folder = save_reward_model(
        model.cpu(),
        Path(cfg.out) / "final",
        scenario=scenario,
        feature=feature,
        normalizer=normalizer,
        metrics=metrics,
        task=None if task.native else task.name,
    )
    logger.info("saved the %s reward model of task %s to %s", scenario, task.name, folder)
    return folder


def metrics_only(metrics: dict[str, Any]) -> dict[str, float]:
    """The ``eval/*`` entries of a metrics dict."""
    return {k: v for k, v in metrics.items() if k in _EVAL_KEYS}


def _pose_keys(cfg: RewardTrainConfig, task: Task) -> tuple[str, ...]:
    """The pose keys of ``--pose-weight`` (none when it is 0); a task without poses raises."""
    if cfg.pose_weight == 0:
        return ()
    if cfg.pose_reward and task.name not in POSE_REWARDS:
        raise ValueError(f"--pose-reward: task {task.name!r} has no pose formula; choose from {sorted(POSE_REWARDS)}")
    if not task.pose_keys:
        raise ValueError(
            f"--pose-weight {cfg.pose_weight}: task {task.name!r} reads no poses; pick a --task that does "
            "(e.g. reach-push on Manipulation) or use --pose-weight 0"
        )
    return task.pose_keys


def _loop(model, pool, held, reward_mean, pos_weight, cfg: RewardTrainConfig, writer: MetricWriter) -> None:
    """The training steps with logging, periodic evaluation and a progress bar."""
    device = next(model.parameters()).device
    optimizer = make_adamw(model, cfg.lr, cfg.weight_decay)
    scheduler = cosine_schedule(optimizer, cfg.warmup_steps, cfg.total_steps, cfg.min_lr_ratio)

    def step(index: int) -> dict[str, float]:
        batch = pool.sample(cfg.batch_size, step_generator(cfg.seed, "data", index))
        loss, logs = _losses(model, batch, cfg, pos_weight, device)
        loss.backward()
        logs["train/lr"], _ = optimizer_step(model, optimizer, scheduler, cfg.max_grad_norm)
        return logs

    held_eval = (lambda: _evaluate_all(model, held, reward_mean)) if held else None
    run_steps(cfg, writer, step, held_eval, "train reward model")


def _evaluate_all(model: RewardModel, held: dict[str, TransitionPool], reward_mean: float) -> dict[str, float]:
    """:func:`evaluate` on every held-out pool, keyed by its prefix."""
    return {
        key: value
        for prefix, pool in held.items()
        for key, value in evaluate(model, pool, reward_mean, prefix=prefix).items()
    }


def main(argv: Sequence[str] | None = None) -> None:
    """Command-line entry point (see the module docstring): ``--preset`` (default small), then one flag
    per :class:`RewardTrainConfig` field; ``--print-config`` shows the result."""
    cfg = parse_preset_config(RewardTrainConfig, PRESETS, "small", argv, __doc__)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    train_reward(cfg)


if __name__ == "__main__":
    main()
