"""Inverse-dynamics model (IDM): recovers the action of a transition from the frames around it.

Trained on *real* simulator frames, the IDM is the objective judge of action following: a world
model that obeys its actions produces video from which the IDM reads back the commanded actions
nearly as well as from real video. Report its accuracy on generated video next to its accuracy
on real video over the same transitions.

Action labels (discrete, per scenario)
--------------------------------------
Each native action becomes a few categorical *heads* (binary ones have two classes). A head
exists only where the simulator shows the action, since an IDM can only be as right as the
video is informative. Thresholds are :class:`LabelThresholds` (stored in the IDM's config).

============  ===========  ====================  ================================================
scenario      head         classes               from the native action
============  ===========  ====================  ================================================
drive         steer        left/straight/right   steer < -steer (default 1/3) / between / > +steer
                                                 (CarRacing: -1 = full left)
drive         gas          off/on                gas > pedal (default 0.1)
drive         brake        off/on                brake > pedal (default 0.1)
manipulation  dx, dy, dz   neg/zero/pos          component < -move / between / > +move (default 1/3)
manipulation  gripper      close/open            gripper > 0; only with ``gripper=True``:
                                                 FetchPush-v4 blocks its fingers, so the
                                                 command is invisible (FetchPickAndPlace moves them)
explore       move         back/none/forward     MOVE_FORWARD - MOVE_BACKWARD
explore       strafe       left/none/right       MOVE_RIGHT - MOVE_LEFT
explore       turn         left/none/right       TURN_RIGHT - TURN_LEFT
explore       look         down/none/up          LOOK_UP - LOOK_DOWN
explore       <button>     up/down               every other button of the IDM's ``button_names``
============  ===========  ====================  ================================================

The explore axes exist when both of their buttons are among the IDM's ``button_names`` (a lone
button of a pair is an up/down head). Doom sums opposite keys, so "left and right held" moves
like "neither": per-button labels would ask the IDM for something the frames do not show, while
the net axis is exactly what they show.

Input window
------------
The transition t -> t+1 (``actions[t]`` turns ``frames[t]`` into ``frames[t+1]``) is judged from
``frames[t - frames_before .. t + 1]``: the frame after the action and ``frames_before + 1`` frames
before it. One frame of history (the default) exposes velocity *changes*, which is what CarRacing's
gas and brake do. The network sees the frames and their consecutive differences::

    frames uint8 [B, n, H, W, 3] -> [-1, 1]; channels = 3n frames + 3(n-1) differences
      -> (Conv 3x3 stride 2, GroupNorm, SiLU) x len(channels)
      -> adaptive average pool to 4x4 (keeps coarse position) -> flatten
      -> Linear -> SiLU -> Linear(sum of head classes) -> one logit group per head

Accuracy (:func:`score_predictions`): ``balanced_accuracy``, the headline, is the mean over heads
of the mean per-class recall; any predictor that ignores the video scores ``balanced_chance`` on
it in expectation (the mean over heads of 1 / the number of classes present), whatever the class
frequencies.
``mean_accuracy`` (the mean over heads of the fraction of right classes) is dominated by frequent
classes: always predicting each head's most frequent class scores ``majority_baseline`` on it,
which for rarely pressed buttons is close to 1. ``exact_match`` is the fraction of transitions
with every head right. Training weighs the classes of each head by inverse frequency
(:attr:`IDMTrainConfig.class_balance`) so rare actions are learned rather than ignored.

Files: :func:`save_idm` writes one safetensors file whose metadata holds the config (written to a
temporary file, fsynced and renamed, so a crash never leaves a partial file); :func:`load_idm`
reads it back. No pickle.
"""

from __future__ import annotations

import dataclasses
import json
import math
import os
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from safetensors import safe_open
from safetensors.torch import save_file
from torch import Tensor, nn

from astra_gym.data.episodes import Episode
from astra_gym.utils.atomic import atomic_write
from astra_gym.utils.pixels import uint8_to_pixels

__all__ = [
    "LabelThresholds",
    "ActionHead",
    "IDMConfig",
    "InverseDynamicsModel",
    "IDMTrainConfig",
    "scenario_heads",
    "action_labels",
    "make_idm_config",
    "transition_windows",
    "predict",
    "score_predictions",
    "accuracy",
    "train_idm",
    "save_idm",
    "load_idm",
    "IDM_FORMAT",
]

IDM_FORMAT = "astra-gym-idm"
IDM_FORMAT_VERSION = 1
_POOL = 4


# ------------------------------------------------------------------------------------------------
# Labels
# ------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class LabelThresholds:
    """Bin edges that turn continuous native actions into classes (see the module table).

    Attributes:
        steer: CarRacing |steer| above which a step counts as a left/right turn.
        pedal: CarRacing gas/brake above which the pedal counts as pressed.
        move: Fetch |dx|, |dy|, |dz| above which the component counts as a move.
    """

    steer: float = 1.0 / 3.0
    pedal: float = 0.1
    move: float = 1.0 / 3.0


@dataclass(frozen=True)
class ActionHead:
    """One categorical output of the IDM.

    Attributes:
        name: Head name (e.g. ``"steer"`` or a button name).
        classes: Class names, index = label value.
    """

    name: str
    classes: tuple[str, ...]


# Explore axes: (head, negative button, positive button, classes).
_AXES = (
    ("move", "MOVE_BACKWARD", "MOVE_FORWARD", ("back", "none", "forward")),
    ("strafe", "MOVE_LEFT", "MOVE_RIGHT", ("left", "none", "right")),
    ("turn", "TURN_LEFT", "TURN_RIGHT", ("left", "none", "right")),
    ("look", "LOOK_DOWN", "LOOK_UP", ("down", "none", "up")),
)


def scenario_heads(scenario: str, button_names: Sequence[str] = (), gripper: bool = False) -> tuple[ActionHead, ...]:
    """The heads of a scenario (module table).

    Args:
        scenario: ``"drive"``, ``"manipulation"`` or ``"explore"``.
        button_names: ViZDoom buttons (explore only).
        gripper: Add the manipulation gripper head (only for envs whose fingers move).

    Returns:
        The heads in label-column order.
    """
    if scenario == "drive":
        return (ActionHead("steer", ("left", "straight", "right")), _binary("gas"), _binary("brake"))
    if scenario == "manipulation":
        moves = tuple(ActionHead(axis, ("neg", "zero", "pos")) for axis in ("dx", "dy", "dz"))
        return (*moves, ActionHead("gripper", ("close", "open"))) if gripper else moves
    if scenario == "explore":
        if not button_names:
            raise ValueError("explore labels need the ViZDoom button names (Episode.attrs['button_names'])")
        axes = [a for a in _AXES if a[1] in button_names and a[2] in button_names]
        paired = {b for a in axes for b in a[1:3]}
        singles = [ActionHead(str(b), ("up", "down")) for b in button_names if b not in paired]
        return (*(ActionHead(name, classes) for name, _, _, classes in axes), *singles)
    raise ValueError(f"unknown scenario {scenario!r}; choose drive, manipulation or explore")


def _binary(name: str) -> ActionHead:
    return ActionHead(name, ("off", "on"))


def _three_way(values: np.ndarray, threshold: float) -> np.ndarray:
    """0 below -threshold, 1 in between, 2 above +threshold."""
    return np.where(values < -threshold, 0, np.where(values > threshold, 2, 1))


def _candidate_labels(
    scenario: str,
    actions: np.ndarray,
    button_names: Sequence[str],
    episode_buttons: Sequence[str] | None,
    thresholds: LabelThresholds,
) -> dict[str, np.ndarray]:
    """Every label column a scenario can have, by head name ([T] int each)."""
    if scenario == "drive":
        _check_width(actions, 3, "drive [steer, gas, brake]")
        return {
            "steer": _three_way(actions[:, 0], thresholds.steer),
            "gas": (actions[:, 1] > thresholds.pedal).astype(np.int64),
            "brake": (actions[:, 2] > thresholds.pedal).astype(np.int64),
        }
    if scenario == "manipulation":
        _check_width(actions, 4, "manipulation [dx, dy, dz, gripper]")
        moves = _three_way(actions[:, :3], thresholds.move)
        return {
            "dx": moves[:, 0],
            "dy": moves[:, 1],
            "dz": moves[:, 2],
            "gripper": (actions[:, 3] > 0).astype(np.int64),
        }
    if scenario == "explore":
        pressed = _pressed(actions, button_names, episode_buttons)
        labels = {name: pressed[name] for name in button_names}
        for name, negative, positive, _ in _AXES:
            if negative in pressed and positive in pressed:
                labels[name] = 1 + pressed[positive] - pressed[negative]
        return labels
    raise ValueError(f"unknown scenario {scenario!r}; choose drive, manipulation or explore")


def action_labels(config: IDMConfig, actions: np.ndarray, episode_buttons: Sequence[str] | None = None) -> np.ndarray:
    """Native actions -> class labels, one column per head of ``config``.

    Args:
        config: The IDM's config (scenario, heads, buttons, thresholds).
        actions: [T, ...] env-native actions (drive [T, 3], manipulation [T, 4], explore [T, n] multi-hot).
        episode_buttons: Button order of explore ``actions``; None = ``config.button_names``.

    Returns:
        [T, num_heads] int64 class indices.
    """
    actions = np.asarray(actions)
    if actions.ndim != 2:
        raise ValueError(f"actions must be [T, action_dim], got shape {actions.shape}")
    labels = _candidate_labels(config.scenario, actions, config.button_names, episode_buttons, config.thresholds)
    return np.stack([labels[head.name] for head in config.heads], 1).astype(np.int64)


def _check_width(actions: np.ndarray, width: int, what: str) -> None:
    if actions.shape[1] != width:
        raise ValueError(f"{what} actions must have {width} columns, got shape {actions.shape}")


def _pressed(
    actions: np.ndarray, button_names: Sequence[str], episode_buttons: Sequence[str] | None
) -> dict[str, np.ndarray]:
    """{IDM button: [T] 0/1 pressed} from multi-hot actions whose columns are ``episode_buttons``."""
    if not button_names:
        raise ValueError("explore labels need the IDM's button_names")
    source = list(episode_buttons if episode_buttons is not None else button_names)
    if actions.shape[1] != len(source):
        raise ValueError(f"explore actions have {actions.shape[1]} columns but {len(source)} button names {source}")
    missing = [b for b in button_names if b not in source]
    if missing:
        raise ValueError(f"the episode has no buttons {missing} (it has {source}); use an IDM trained on its buttons")
    return {b: (actions[:, source.index(b)] > 0).astype(np.int64) for b in button_names}


# ------------------------------------------------------------------------------------------------
# The network
# ------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class IDMConfig:
    """Everything needed to rebuild an IDM and its labels.

    Attributes:
        scenario: Scenario whose actions it recovers.
        heads: Output heads (from :func:`scenario_heads`).
        button_names: ViZDoom buttons the explore labels read (axes and single buttons), else empty.
        thresholds: Label bin edges.
        frames_before: History frames before frame t (input = ``frames_before + 2`` frames).
        channels: Widths of the stride-2 conv stages.
        hidden: Width of the MLP head.
    """

    scenario: str
    heads: tuple[ActionHead, ...]
    button_names: tuple[str, ...] = ()
    thresholds: LabelThresholds = field(default_factory=LabelThresholds)
    frames_before: int = 1
    channels: tuple[int, ...] = (32, 64, 64)
    hidden: int = 128

    def __post_init__(self) -> None:
        if not self.heads or any(len(h.classes) < 2 for h in self.heads):
            raise ValueError(f"IDMConfig needs at least one head of >= 2 classes, got {self.heads}")
        if self.frames_before < 0 or not self.channels or min(self.channels) < 1 or self.hidden < 1:
            raise ValueError(
                f"frames_before={self.frames_before} must be >= 0 and channels={self.channels}, "
                f"hidden={self.hidden} positive"
            )

    @property
    def num_frames(self) -> int:
        """Frames per input window: ``frames_before + 2``."""
        return self.frames_before + 2

    def to_dict(self) -> dict[str, Any]:
        """JSON form (inverse of :meth:`from_dict`)."""
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> IDMConfig:
        """Rebuilds a config from :meth:`to_dict` output."""
        data = dict(data)
        data["heads"] = tuple(ActionHead(h["name"], tuple(h["classes"])) for h in data["heads"])
        data["button_names"] = tuple(data.get("button_names", ()))
        data["thresholds"] = LabelThresholds(**data.get("thresholds", {}))
        data["channels"] = tuple(data["channels"])
        return cls(**data)


def make_idm_config(scenario: str, button_names: Sequence[str] = (), gripper: bool = False, **sizes: Any) -> IDMConfig:
    """An :class:`IDMConfig` with the heads of :func:`scenario_heads`; ``sizes`` override the other fields."""
    buttons = tuple(str(b) for b in button_names) if scenario == "explore" else ()
    heads = scenario_heads(scenario, buttons, gripper)
    return IDMConfig(scenario=scenario, heads=heads, button_names=buttons, **sizes)


def _group_norm(channels: int) -> nn.GroupNorm:
    return nn.GroupNorm(math.gcd(channels, 8), channels)


class InverseDynamicsModel(nn.Module):
    """CNN from a window of frames to one logit group per action head (module docstring).

    Args:
        config: Heads, window and sizes.
    """

    def __init__(self, config: IDMConfig) -> None:
        super().__init__()
        self.config = config
        stages: list[nn.Module] = []
        width = 3 * config.num_frames + 3 * (config.num_frames - 1)
        for out in config.channels:
            stages += [nn.Conv2d(width, out, 3, stride=2, padding=1), _group_norm(out), nn.SiLU()]
            width = out
        self.encoder = nn.Sequential(*stages, nn.AdaptiveAvgPool2d(_POOL), nn.Flatten())
        self.head = nn.Sequential(
            nn.Linear(width * _POOL * _POOL, config.hidden),
            nn.SiLU(),
            nn.Linear(config.hidden, sum(len(h.classes) for h in config.heads)),
        )

    def forward(self, windows: Tensor) -> list[Tensor]:
        """Logits of every head.

        Args:
            windows: uint8 [B, n, H, W, 3] frame windows, n = ``config.num_frames``, oldest first.

        Returns:
            One float32 [B, num_classes] logit tensor per head, in head order.
        """
        n = self.config.num_frames
        if windows.ndim != 5 or windows.shape[1] != n or windows.shape[-1] != 3:
            raise ValueError(f"windows must be uint8 [B, {n}, H, W, 3], got {windows.dtype} {tuple(windows.shape)}")
        pixels = uint8_to_pixels(windows, channel_dim=-3)  # [B, n, 3, H, W]
        diffs = pixels[:, 1:] - pixels[:, :-1]
        features = self.encoder(torch.cat([pixels, diffs], 1).flatten(1, 2))
        logits = self.head(features)
        return list(logits.split([len(h.classes) for h in self.config.heads], dim=1))


# ------------------------------------------------------------------------------------------------
# Windows, prediction and scoring
# ------------------------------------------------------------------------------------------------


def transition_windows(frames: np.ndarray, steps: np.ndarray, frames_before: int) -> np.ndarray:
    """The input windows of transitions ``steps`` of one video.

    Args:
        frames: uint8 [T+1, H, W, 3] video.
        steps: [n] int transition indices t (t -> t+1), each in [frames_before, T - 1].
        frames_before: History frames before frame t.

    Returns:
        uint8 [n, frames_before + 2, H, W, 3].
    """
    frames, steps = np.asarray(frames), np.asarray(steps, dtype=np.int64).reshape(-1)
    if frames.dtype != np.uint8 or frames.ndim != 4:
        raise ValueError(f"frames must be uint8 [T+1, H, W, 3], got {frames.dtype} {frames.shape}")
    last = frames.shape[0] - 2
    if steps.size and (steps.min() < frames_before or steps.max() > last):
        raise ValueError(
            f"transition indices must lie in [{frames_before}, {last}] for {frames.shape[0]} frames and "
            f"frames_before={frames_before}, got [{steps.min()}, {steps.max()}]"
        )
    offsets = np.arange(-frames_before, 2)
    return frames[steps[:, None] + offsets[None]]


@torch.inference_mode()
def predict(idm: InverseDynamicsModel, windows: np.ndarray | Tensor, batch_size: int = 256) -> np.ndarray:
    """Most likely class of every head for each window.

    Args:
        idm: The model (put in eval mode here).
        windows: uint8 [n, frames_before + 2, H, W, 3] (:func:`transition_windows`).
        batch_size: Windows per forward pass.

    Returns:
        [n, num_heads] int64 class indices.
    """
    idm.eval()
    device = next(idm.parameters()).device
    windows = torch.as_tensor(np.asarray(windows)) if not isinstance(windows, Tensor) else windows
    out = []
    for start in range(0, windows.shape[0], batch_size):
        logits = idm(windows[start : start + batch_size].to(device))
        out.append(torch.stack([g.argmax(1) for g in logits], 1).cpu())
    if not out:
        return np.zeros((0, len(idm.config.heads)), np.int64)
    return torch.cat(out).numpy().astype(np.int64)


def score_predictions(predictions: np.ndarray, labels: np.ndarray, heads: Sequence[ActionHead]) -> dict[str, Any]:
    """Accuracy summary of IDM predictions against true labels (module docstring, "Accuracy").

    Args:
        predictions: [n, num_heads] int predicted classes.
        labels: [n, num_heads] int true classes.
        heads: The heads (names and class counts).

    Returns:
        JSON-ready dict: ``count``, ``balanced_accuracy``, ``balanced_chance``, ``mean_accuracy``,
        ``majority_baseline``, ``exact_match`` and ``per_head`` {name: {"accuracy",
        "balanced_accuracy", "balanced_chance", "majority_baseline"}}; statistics are None when n = 0.
    """
    predictions, labels = np.asarray(predictions), np.asarray(labels)
    if predictions.shape != labels.shape or labels.ndim != 2 or labels.shape[1] != len(heads):
        raise ValueError(
            f"predictions {predictions.shape} and labels {labels.shape} must both be [n, {len(heads)}] "
            "(one column per head)"
        )
    if labels.shape[0] == 0:
        keys = ("balanced_accuracy", "balanced_chance", "mean_accuracy", "majority_baseline", "exact_match")
        return {"count": 0, **dict.fromkeys(keys), "per_head": {}}
    per_head = {h.name: _head_scores(predictions[:, i], labels[:, i], len(h.classes)) for i, h in enumerate(heads)}
    return {
        "count": int(labels.shape[0]),
        "balanced_accuracy": _mean_of(per_head, "balanced_accuracy"),
        "balanced_chance": _mean_of(per_head, "balanced_chance"),
        "mean_accuracy": _mean_of(per_head, "accuracy"),
        "majority_baseline": _mean_of(per_head, "majority_baseline"),
        "exact_match": float(np.mean(np.all(predictions == labels, axis=1))),
        "per_head": per_head,
    }


def _mean_of(per_head: dict[str, dict[str, float]], key: str) -> float:
    return float(np.mean([scores[key] for scores in per_head.values()]))


def _head_scores(predicted: np.ndarray, true: np.ndarray, num_classes: int) -> dict[str, float]:
    """Accuracy, balanced accuracy (mean recall over present classes), its chance level and majority rate."""
    counts = np.bincount(true, minlength=num_classes)
    present = np.flatnonzero(counts)
    recalls = [np.mean(predicted[true == c] == c) for c in present]
    return {
        "accuracy": float(np.mean(predicted == true)),
        "balanced_accuracy": float(np.mean(recalls)),
        "balanced_chance": 1.0 / len(present),
        "majority_baseline": float(counts.max() / counts.sum()),
    }


def accuracy(
    idm: InverseDynamicsModel,
    frames: np.ndarray,
    actions: np.ndarray,
    steps: np.ndarray | None = None,
    episode_buttons: Sequence[str] | None = None,
) -> dict[str, Any]:
    """How well the IDM recovers ``actions`` from ``frames`` (one video).

    Args:
        idm: A trained IDM.
        frames: uint8 [T+1, H, W, 3] real or generated video.
        actions: [T, ...] native actions; ``actions[t]`` produced ``frames[t+1]``.
        steps: Transitions t to score (default: every t >= ``frames_before``).
        episode_buttons: Button order of explore ``actions`` (default: the IDM's).

    Returns:
        :func:`score_predictions` of those transitions.
    """
    cfg = idm.config
    frames, actions = np.asarray(frames), np.asarray(actions)
    if frames.shape[0] != actions.shape[0] + 1:
        raise ValueError(
            f"a video of {frames.shape[0]} frames needs {frames.shape[0] - 1} actions, got {actions.shape[0]}"
        )
    if steps is None:
        steps = np.arange(cfg.frames_before, actions.shape[0])
    labels = action_labels(cfg, actions, episode_buttons)
    predicted = predict(idm, transition_windows(frames, steps, cfg.frames_before))
    return score_predictions(predicted, labels[np.asarray(steps, dtype=np.int64)], cfg.heads)


# ------------------------------------------------------------------------------------------------
# Training
# ------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class IDMTrainConfig:
    """Optimisation settings of :func:`train_idm`.

    Attributes:
        steps: Optimizer steps.
        batch_size: Transitions per step.
        lr: AdamW learning rate (cosine decay to 10 % after a 5 % warm-up).
        weight_decay: AdamW weight decay.
        class_balance: Exponent of the per-head inverse-frequency class weights of the loss,
            ``(n / (K n_c)) ** class_balance`` (0 = plain cross-entropy, 1 = fully balanced).
    """

    steps: int = 2000
    batch_size: int = 64
    lr: float = 1e-3
    weight_decay: float = 1e-4
    class_balance: float = 1.0

    def __post_init__(self) -> None:
        if self.steps < 1 or self.batch_size < 1 or not self.lr > 0 or self.weight_decay < 0:
            raise ValueError(f"IDMTrainConfig needs steps, batch_size >= 1, lr > 0, weight_decay >= 0; got {self}")
        if not 0.0 <= self.class_balance <= 1.0:
            raise ValueError(f"IDMTrainConfig.class_balance={self.class_balance} must be in [0, 1]")


@dataclass
class _Transitions:
    """Training transitions of many episodes: videos, labels and a flat (episode, t) index."""

    videos: list[np.ndarray]
    labels: list[np.ndarray]
    index: np.ndarray  # [N, 2] (episode, t)

    def batch(self, rows: np.ndarray, frames_before: int) -> tuple[Tensor, Tensor]:
        """(windows uint8 [b, n, H, W, 3], labels int64 [b, heads]) of index rows ``rows``."""
        picked = self.index[rows]
        windows = [transition_windows(self.videos[e], np.array([t]), frames_before)[0] for e, t in picked]
        labels = [self.labels[e][t] for e, t in picked]
        return torch.from_numpy(np.stack(windows)), torch.from_numpy(np.stack(labels))

    def class_weights(self, heads: Sequence[ActionHead], balance: float) -> list[Tensor]:
        """Per head, float32 [K] weights ``(n / (K n_c)) ** balance`` (classes absent from the data: 0)."""
        labels = np.stack([self.labels[e][t] for e, t in self.index])  # [N, heads]
        weights = []
        for i, head in enumerate(heads):
            counts = np.bincount(labels[:, i], minlength=len(head.classes)).astype(np.float64)
            present = counts > 0
            w = np.zeros_like(counts)
            w[present] = (counts.sum() / (present.sum() * counts[present])) ** balance
            weights.append(torch.tensor(w, dtype=torch.float32))
        return weights


def _transitions(episodes: Sequence[Episode], config: IDMConfig) -> _Transitions:
    """Collects every usable transition (t >= frames_before) of the episodes."""
    videos, labels, index = [], [], []
    for e, ep in enumerate(episodes):
        if ep.scenario != config.scenario:
            raise ValueError(f"episode {e} is a {ep.scenario!r} episode; the IDM is for {config.scenario!r}")
        buttons = ep.attrs.get("button_names")
        videos.append(ep.frames)
        labels.append(action_labels(config, ep.actions, buttons))
        index += [(e, t) for t in range(config.frames_before, ep.num_steps)]
    if not index:
        raise ValueError(f"no transitions with {config.frames_before} history frames; record longer episodes")
    return _Transitions(videos, labels, np.asarray(index, dtype=np.int64))


def _lr_factor(step: int, total: int) -> float:
    """5 % linear warm-up, then cosine decay to 10 %."""
    warmup = max(1, total // 20)
    if step < warmup:
        return (step + 1) / warmup
    progress = (step - warmup) / max(1, total - warmup)
    return 0.1 + 0.45 * (1.0 + math.cos(math.pi * progress))


def train_idm(
    episodes: Sequence[Episode],
    config: IDMConfig,
    train: IDMTrainConfig = IDMTrainConfig(),
    *,
    generator: torch.Generator,
    device: torch.device | str = "cpu",
) -> tuple[InverseDynamicsModel, list[float]]:
    """Trains an IDM on real episodes (class-weighted cross-entropy summed over heads).

    Args:
        episodes: Training episodes of ``config.scenario`` (never the held-out ones).
        config: Network and label settings (:func:`make_idm_config`).
        train: Optimisation settings.
        generator: CPU generator of the initialisation and the batch draws (the only randomness).
        device: Training device.

    Returns:
        (the model in eval mode, the loss of every step).
    """
    data = _transitions(episodes, config)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(int(torch.randint(0, 2**62, (1,), generator=generator)))
        idm = InverseDynamicsModel(config)
    idm.to(device).train()
    optimizer = torch.optim.AdamW(idm.parameters(), lr=train.lr, weight_decay=train.weight_decay)
    schedule = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda s: _lr_factor(s, train.steps))
    weights = [w.to(device) for w in data.class_weights(config.heads, train.class_balance)]
    losses = []
    for _ in range(train.steps):
        rows = torch.randint(0, len(data.index), (train.batch_size,), generator=generator).numpy()
        windows, labels = data.batch(rows, config.frames_before)
        logits = idm(windows.to(device))
        loss = sum(F.cross_entropy(g, labels[:, i].to(device), weight=weights[i]) for i, g in enumerate(logits))
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        schedule.step()
        losses.append(float(loss.detach()))
    return idm.eval(), losses


# ------------------------------------------------------------------------------------------------
# Files
# ------------------------------------------------------------------------------------------------


def save_idm(idm: InverseDynamicsModel, path: str | os.PathLike, metrics: dict[str, Any] | None = None) -> Path:
    """Writes the IDM to one safetensors file, atomically (:func:`~astra_gym.utils.atomic.atomic_write`).

    Args:
        idm: The model.
        path: Target file (``.safetensors``); parents are created.
        metrics: JSON-able training facts stored with it (episodes, steps, accuracy, ...).

    Returns:
        The absolute path.
    """
    state = {k: v.detach().cpu().contiguous() for k, v in idm.state_dict().items()}
    meta = {
        "format": IDM_FORMAT,
        "format_version": str(IDM_FORMAT_VERSION),
        "config": json.dumps(idm.config.to_dict(), sort_keys=True),
        "metrics": json.dumps(metrics or {}, sort_keys=True, allow_nan=False),
    }
    return atomic_write(Path(path).absolute(), lambda tmp: save_file(state, str(tmp), metadata=meta))


def load_idm(path: str | os.PathLike, device: torch.device | str = "cpu") -> tuple[InverseDynamicsModel, dict]:
    """Loads a :func:`save_idm` file (strict).

    Returns:
        (the model in eval mode on ``device``, the stored metrics).

    Raises:
        FileNotFoundError: No file at ``path``.
        ValueError: The file is not an astra-gym IDM or is from a newer format.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(
            f"no IDM file at {path}; train one with "
            "`python -m benchmarks.eval_world_model ... --idm FILE --idm-train-episodes DIR`"
        )
    with safe_open(str(path), framework="pt") as handle:
        meta = handle.metadata() or {}
        state = {k: handle.get_tensor(k) for k in handle.keys()}
    if meta.get("format") != IDM_FORMAT or int(meta.get("format_version", 0)) > IDM_FORMAT_VERSION:
        raise ValueError(f"{path} is not an IDM file of this astra-gym version (format {meta.get('format')!r})")
    idm = InverseDynamicsModel(IDMConfig.from_dict(json.loads(meta["config"])))
    idm.load_state_dict(state, strict=True)
    return idm.to(device).eval(), json.loads(meta.get("metrics", "{}"))
