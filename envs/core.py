"""What :class:`~astra_gym.envs.env.AstraEnv` and :class:`~astra_gym.envs.vector_env.AstraVectorEnv`
share: resolving the world model, start contexts, action rows and rewards. No Gymnasium API here.

The ``checkpoint`` constructor argument of every variant accepts:

================================================  ===================================================
value                                             world model
================================================  ===================================================
a bundled name (``"small-v0"``)                   the bundle shipped in ``astra_gym/assets/models/<name>/``
                                                  (until it is trained, a clear error says how to get it)
``"debug"``                                       tiny random weights from a fixed seed (tests, docs, CI)
a folder path                                     a bundle written by ``python -m astra_gym.training.bundle``
``{"astra_release": ckpt, "wan": folder,          the authors' released model with the Wan2.1 VAE and
"prompt": str}``                                  text encoder (GPU; :func:`~astra_gym.rollout.bundle.release_bundle`)
================================================  ===================================================

Models are loaded once per process and shared by every env that asks for the same
(checkpoint, scenario, device, dtype) (:func:`~astra_gym.world_model.model_cache.get_cached_model`).
"""

from __future__ import annotations

import difflib
import json
import math
import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import gymnasium as gym
import numpy as np
import torch
import torch.nn.functional as F

from astra_gym.data.action_codecs import align_to_latents
from astra_gym.data.tasks import get_task
from astra_gym.envs.frame_bank import BUNDLED_BANKS, FrameBank, load_frame_bank
from astra_gym.envs.spaces import action_rows, action_space, check_actions, check_rest_scenario, rest_actions
from astra_gym.envs.variants import bundled_model_path, installed_bundles
from astra_gym.rollout.bundle import (
    RELEASE_MODALITY,
    BundleError,
    WorldModelBundle,
    debug_bundle,
    load_bundle,
    read_manifest,
    release_bundle,
    scenario_modality,
)
from astra_gym.rollout.engine import WorldModelRollout
from astra_gym.rollout.state import RolloutState
from astra_gym.utils.device import resolve_device, resolve_dtype
from astra_gym.utils.seeding import derive_seed
from astra_gym.world_model.model_cache import get_cached_model

__all__ = [
    "EnvCore",
    "StartBatch",
    "StepBatch",
    "check_bank_matches",
    "held_rows",
    "load_world_model",
    "model_frame_bank",
    "model_sim_config",
    "reject_unknown_kwargs",
    "rest_reward",
    "ENV_KWARGS",
]

#: Constructor kwargs of ``AstraEnv``, which ``AstraVectorEnv`` accepts too (plus its own).
ENV_KWARGS = (
    "scenario",
    "checkpoint",
    "frame_bank",
    "num_denoise_steps",
    "guidance_scale",
    "frames_per_step",
    "device",
    "dtype",
    "batch_invariant",
    "task",
    "uncertainty_penalty",
    "rest_baseline",
    "render_mode",
    "render_fps",
    "rollout",
)
_RELEASE_KEYS = ("astra_release", "wan", "prompt")
_RESET_OPTIONS = ("frames", "image", "actions")


def reject_unknown_kwargs(owner: str, unknown: Mapping[str, Any], valid: Sequence[str]) -> None:
    """Raises a TypeError naming unknown constructor kwargs, the closest valid names and all valid ones."""
    if not unknown:
        return
    hints = []
    for name in sorted(unknown):
        close = difflib.get_close_matches(name, valid, n=1)
        hints.append(f"{name!r}" + (f" (did you mean {close[0]!r}?)" if close else ""))
    raise TypeError(f"{owner} got unknown keyword argument(s) {', '.join(hints)}; valid: {sorted(valid)}")


# ------------------------------------------------------------------------------------------------
# World model resolution
# ------------------------------------------------------------------------------------------------


def _missing_bundled_model(name: str, path: Path) -> BundleError:
    installed = installed_bundles()
    close = difflib.get_close_matches(name, installed, n=1, cutoff=0.4)
    hint = f" Did you mean {close[0]!r}?" if close else ""
    return BundleError(
        f"the world model {name!r} is not installed: {path} has no bundle.json.{hint} Installed: "
        f"{', '.join(map(repr, installed)) or 'none'}. Bundles are trained and written by "
        f"`python -m astra_gym.training.bundle --name {name} ... --out {path}`. Until one is there: pass "
        "checkpoint='debug' to run with random tiny weights (plumbing and tests only), "
        f"checkpoint='/path/to/bundle' for a bundle you trained, or checkpoint={{'astra_release': ckpt, "
        f"'wan': folder, 'prompt': text}} for the authors' released model on a GPU."
    )


def _checkpoint_loader(
    checkpoint: Any, scenario: str, device: torch.device, dtype: torch.dtype, task: str | None = None
):
    """(cache key, loader) for a ``checkpoint`` argument (table in the module docstring).

    ``task`` names a dense task's reward model; the simulator's own task counts as None (one cache entry).
    """
    if task is not None and get_task(scenario, task).native:
        task = None
    if task is not None and (isinstance(checkpoint, Mapping) or checkpoint == "debug"):
        raise ValueError(
            f"task={task!r} needs a reward model trained for it, which only a trained bundle holds; "
            "pass checkpoint=<bundle with that task> or leave task unset"
        )
    if isinstance(checkpoint, Mapping):
        missing = [k for k in _RELEASE_KEYS if k not in checkpoint]
        extra = sorted(set(checkpoint) - set(_RELEASE_KEYS))
        if missing or extra:
            raise ValueError(
                f"checkpoint dict must have exactly the keys {list(_RELEASE_KEYS)}; missing {missing}, unknown {extra}"
            )
        args = tuple(str(checkpoint[k]) for k in _RELEASE_KEYS)
        key = ("astra-release", *args, scenario, str(device), str(dtype))
        return key, lambda: release_bundle(*args, scenario=scenario, device=device, dtype=dtype)
    if checkpoint == "debug":
        return ("debug", scenario, str(device)), lambda: debug_bundle(scenario, device=device)
    path = _checkpoint_folder(checkpoint)
    key = ("bundle", str(path), scenario, str(device), str(dtype), task)
    return key, lambda: load_bundle(path, scenario, device=device, dtype=dtype, task=task)


def _checkpoint_folder(checkpoint: str | os.PathLike) -> Path:
    """The absolute folder of a bundled name or a bundle / world-model folder path."""
    if not isinstance(checkpoint, (str, os.PathLike)):
        raise TypeError(f"checkpoint must be a name, a folder path or a release dict, got {type(checkpoint).__name__}")
    path = Path(checkpoint)
    is_name = isinstance(checkpoint, str) and os.sep not in checkpoint and not path.exists()
    if is_name:
        path = bundled_model_path(checkpoint)
        if not (path / "bundle.json").is_file():
            raise _missing_bundled_model(checkpoint, path)
    return path.resolve()


def _manifest_entry(checkpoint: Any, scenario: str) -> dict[str, Any]:
    """The manifest entry of ``scenario`` in ``checkpoint``'s bundle (``{}`` for "debug" and release dicts)."""
    if isinstance(checkpoint, Mapping) or checkpoint == "debug":
        return {}
    return read_manifest(_checkpoint_folder(checkpoint)).get("scenarios", {}).get(scenario, {})


def model_sim_config(checkpoint: Any, scenario: str) -> dict[str, Any]:
    """The simulator config overrides the ``checkpoint``'s ``scenario`` model was trained with (its bundle's
    ``sim_config``, e.g. a FetchPush camera), read from the manifest without loading weights.

    Real starts, frame banks and the real simulator of agent benchmarks use them, so that real frames look
    like the model's training frames. ``{}`` (the simulator's defaults) for "debug", release dicts and
    bundles that record none.
    """
    return dict(_manifest_entry(checkpoint, scenario).get("sim_config") or {})


def model_frame_bank(checkpoint: Any, scenario: str) -> Path | None:
    """The start contexts ``checkpoint``'s bundle carries for ``scenario`` (``bundle --frame-bank``), or None."""
    return _manifest_entry(checkpoint, scenario).get("frame_bank")


def load_world_model(
    checkpoint: Any,
    scenario: str,
    device: str | torch.device = "auto",
    dtype: str | torch.dtype | None = None,
    task: str | None = None,
) -> WorldModelBundle:
    """The world model of ``checkpoint`` for ``scenario``, loaded once per process (cached).

    ``task`` picks the bundle's reward model of that agent task (:mod:`astra_gym.data.tasks`);
    None = the simulator's own reward.

    Raises:
        BundleError: A bundled model is not installed, or a bundle is incomplete (names the fix).
        ValueError: The model was trained for another scenario, or a malformed release dict.
    """
    device = resolve_device(device)
    dtype = resolve_dtype(dtype, device)
    key, loader = _checkpoint_loader(checkpoint, scenario, device, dtype, task)
    bundle = get_cached_model(key, loader)
    if bundle.scenario != scenario:
        raise ValueError(
            f"checkpoint {checkpoint!r} holds a {bundle.scenario!r} world model but this env's scenario is "
            f"{scenario!r}; use the matching variant or checkpoint"
        )
    return bundle


# ------------------------------------------------------------------------------------------------
# Start contexts
# ------------------------------------------------------------------------------------------------


def check_bank_matches(bank: FrameBank, scenario: str, sim_config: Mapping[str, Any]) -> None:
    """Raises a ValueError when ``bank`` was recorded with simulator settings other than the model's.

    Args:
        bank: The start contexts (synthetic banks always match).
        scenario: The env's scenario.
        sim_config: The model's simulator overrides (:func:`model_sim_config`); a key the bank's recording
            config lacks counts as a mismatch (the bank predates the setting, so it used the default).
    """
    if bank.scenario != scenario:
        return
    recorded = bank.sim_config
    for key, value in sim_config.items():
        if json.dumps(recorded.get(key), sort_keys=True) != json.dumps(value, sort_keys=True):
            raise ValueError(
                f"the world model was trained on {scenario} frames recorded with {key}={value!r}, but the frame "
                f"bank was recorded with {key}={recorded.get(key, 'the default')!r}, so its starts would look "
                f"unlike the model's data; build a matching bank with `python -m astra_gym.envs.frame_bank "
                f"--scenario {scenario} --checkpoint <the checkpoint> --out bank.npz` and pass frame_bank='bank.npz'"
            )


@dataclass(frozen=True)
class StartBatch:
    """New episodes for n rows.

    Attributes:
        frames: uint8 [n, T, H, W, 3] context frames (resized to the model's frame size).
        rows: float32 [n, L, d] action rows of the context latents (zeros where unknown).
        seeds: n torch seeds drawn from the rows' numpy generators.
        bank_index: [n] int64 bank context of each row (-1: the caller's frames).
        sim_seed: [n] int64 simulator seed of that context (-1: unknown).
    """

    frames: np.ndarray
    rows: np.ndarray
    seeds: list[int]
    bank_index: np.ndarray
    sim_seed: np.ndarray


@dataclass(frozen=True)
class StepBatch:
    """What one step produced for n rows (numpy, ready for the Gymnasium boundary).

    Attributes:
        frames: uint8 [n, P, H, W, 3] frames of the new chunk, oldest first.
        reward: float64 [n] predicted reward.
        terminated: bool [n] predicted termination (probability > 0.5).
        termination_prob: float64 [n].
        spread: float64 [n] the world model's disagreement at this step (``uncertainty_penalty`` > 0;
            else None): see :meth:`~astra_gym.rollout.engine.WorldModelRollout.disagreement`.
    """

    frames: np.ndarray
    reward: np.ndarray
    terminated: np.ndarray
    termination_prob: np.ndarray
    spread: np.ndarray | None = None


def _read_image(image: Any) -> np.ndarray:
    """uint8 [H, W, 3] from a path (any format Pillow reads) or an array (grayscale repeated, alpha dropped)."""
    if isinstance(image, (str, os.PathLike)):
        import imageio.v3 as iio

        try:
            image = iio.imread(image, plugin="pillow")
        except Exception as err:  # imageio raises many types for unreadable files
            raise ValueError(
                f"could not read image {str(image)!r}: {err}; pass a PNG/JPEG path or a uint8 array"
            ) from err
    image = np.asarray(image)
    if image.ndim == 2:
        image = np.repeat(image[..., None], 3, axis=-1)
    if image.ndim == 3 and image.shape[-1] == 4:
        image = image[..., :3]
    if image.dtype != np.uint8 or image.ndim != 3 or image.shape[-1] != 3:
        raise ValueError(f"image must be uint8 [H, W, 3] (or [H, W] / RGBA), got {image.dtype} {image.shape}")
    return image


def _user_frames(options: Mapping[str, Any], count: int) -> np.ndarray | None:
    """uint8 [count, T, H, W, 3] from ``options["frames"]`` / ``options["image"]``, or None."""
    unknown = sorted(set(options) - set(_RESET_OPTIONS) - {"reset_mask"})
    if unknown:
        raise ValueError(
            f"unknown reset option(s) {unknown}; supported: {list(_RESET_OPTIONS)} (and reset_mask for vector envs)"
        )
    if "frames" in options and "image" in options:
        raise ValueError("pass either options['frames'] or options['image'], not both")
    if "image" in options:
        frames = _read_image(options["image"])[None]  # [1, H, W, 3]
    elif "frames" in options:
        frames = np.asarray(options["frames"])
    else:
        return None
    if frames.dtype != np.uint8 or frames.ndim not in (4, 5) or frames.shape[-1] != 3 or 0 in frames.shape:
        raise ValueError(
            f"options['frames'] must be uint8 [T, H, W, 3] RGB frames (or [n, T, H, W, 3], one clip per reset env), "
            f"got {frames.dtype} {frames.shape}"
        )
    if frames.ndim == 4:
        return np.repeat(frames[None], count, axis=0)
    if len(frames) != count:
        raise ValueError(f"options['frames'] holds {len(frames)} clips for {count} envs being reset")
    return frames


def _fit_frames(frames: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """uint8 [..., H, W, 3] resized (squashed, antialiased bilinear) to ``size`` if needed."""
    if frames.shape[-3:-1] == tuple(size):
        return np.ascontiguousarray(frames)
    lead = frames.shape[:-3]
    images = torch.from_numpy(np.ascontiguousarray(frames)).reshape(-1, *frames.shape[-3:])
    images = images.permute(0, 3, 1, 2).float()  # [N, 3, H, W]
    resized = F.interpolate(images, size=tuple(size), mode="bilinear", antialias=True, align_corners=False)
    out = resized.round().clamp(0, 255).to(torch.uint8).permute(0, 2, 3, 1)  # [N, h, w, 3]
    return out.reshape(*lead, *size, 3).numpy()


# ------------------------------------------------------------------------------------------------
# The shared core
# ------------------------------------------------------------------------------------------------


class EnvCore:
    """The world model, spaces and start contexts of one env (single or vector).

    Args: see the parameter table of :class:`~astra_gym.envs.env.AstraEnv`.
    """

    def __init__(
        self,
        scenario: str,
        checkpoint: Any,
        frame_bank: str | os.PathLike | FrameBank,
        num_denoise_steps: int | None,
        guidance_scale: float | None,
        frames_per_step: int | None,
        device: str | torch.device,
        dtype: str | torch.dtype | None,
        rollout: WorldModelRollout | None,
        batch_invariant: bool | None = None,
        task: str | None = None,
        uncertainty_penalty: float = 0.0,
        rest_baseline: bool = False,
    ) -> None:
        self.scenario = scenario
        if rest_baseline:
            check_rest_scenario(scenario)
        self.rest_baseline = bool(rest_baseline)
        if not (math.isfinite(uncertainty_penalty) and uncertainty_penalty >= 0):
            raise ValueError(
                f"uncertainty_penalty={uncertainty_penalty!r} must be a finite number >= 0 "
                "(0 = off; the reward loses this many times the world model's disagreement per step)"
            )
        self.uncertainty_penalty = float(uncertainty_penalty)
        get_task(scenario, task)  # an unknown task raises here, listing the choices (also with rollout=)
        self.action_space = action_space(scenario)
        self.sim_config: dict[str, Any] = {}  # the model's recording settings (model_sim_config)
        own_bank, frame_size = None, None
        if rollout is None:
            bundle = load_world_model(checkpoint, scenario, device, dtype, task)
            entry = _manifest_entry(checkpoint, scenario)  # the model's recording settings and own starts
            self.sim_config, own_bank = dict(entry.get("sim_config") or {}), entry.get("frame_bank")
            overrides = {"num_denoise_steps": num_denoise_steps, "guidance_scale": guidance_scale}
            overrides["batch_invariant"] = batch_invariant
            overrides["chunk_latents"] = frames_per_step
            overrides = {k: v for k, v in overrides.items() if v is not None}
            compute_dtype = resolve_dtype(dtype, resolve_device(bundle.rollout.device))
            rollout = bundle.engine(**overrides, device=bundle.rollout.device, dtype=compute_dtype)
            frame_size = tuple(bundle.frame_size)
        if own_bank is not None and isinstance(frame_bank, str) and frame_bank in BUNDLED_BANKS:
            frame_bank = own_bank  # a bundled bank is a variant default: the model's own contexts come first
        self.bank = frame_bank if isinstance(frame_bank, FrameBank) else load_frame_bank(frame_bank)
        if self.bank.scenario not in (scenario, "synthetic"):
            raise ValueError(f"frame bank of scenario {self.bank.scenario!r} cannot start {scenario!r} episodes")
        check_bank_matches(self.bank, scenario, self.sim_config)
        self.frame_size = frame_size or tuple(self.bank.frames.shape[2:4])
        allowed = (scenario_modality(scenario), RELEASE_MODALITY.get(scenario))
        if rollout.config.modality not in allowed:
            raise ValueError(
                f"the rollout conditions on {rollout.config.modality!r} actions but {scenario!r} actions are "
                f"{allowed[0]!r} rows; use a rollout built for {scenario!r}"
            )
        self.engine = rollout
        self.observation_space = gym.spaces.Box(0, 255, (*self.frame_size, 3), np.uint8)

    # ---- episodes ------------------------------------------------------------------------------

    def start(self, rngs: Sequence[np.random.Generator], options: Mapping[str, Any] | None) -> StartBatch:
        """Chooses the start context of every row and draws its torch seed (in this order, per row).

        Args:
            rngs: One numpy generator per row being reset.
            options: Reset options (``frames`` / ``image``); None = contexts from the frame bank.
        """
        count = len(rngs)
        user = _user_frames(options or {}, count)
        user_actions = self._user_actions(options or {}, user)
        indices = np.full(count, -1, np.int64)
        if user is None:
            indices = np.array([int(rng.integers(len(self.bank))) for rng in rngs], np.int64)
        seeds = [derive_seed(rng) for rng in rngs]
        frames = _fit_frames(user if user is not None else self.bank.frames[indices], self.frame_size)
        rows = self._context_rows(indices, frames.shape[1], user_actions)
        return StartBatch(
            frames=frames,
            rows=rows,
            seeds=seeds,
            bank_index=indices,
            sim_seed=np.array([int(self.bank.seeds[i]) if i >= 0 else -1 for i in indices], np.int64),
        )

    def _user_actions(self, options: Mapping[str, Any], user: np.ndarray | None) -> np.ndarray | None:
        """Validated ``options["actions"]`` [n, T - 1, ...]: the actions that produced the caller's frames."""
        if "actions" not in options:
            return None
        if user is None:
            raise ValueError("options['actions'] describes options['frames']; pass both (bank contexts have theirs)")
        actions = np.asarray(options["actions"])
        steps = user.shape[1] - 1
        if actions.ndim == self.action_space.sample().ndim + 1:  # one sequence for every env
            actions = np.repeat(actions[None], len(user), axis=0)
        if actions.shape[:2] != (len(user), steps):
            raise ValueError(
                f"options['actions'] must hold the {steps} actions between the {steps + 1} context frames "
                f"(shape [{steps}, ...] or [{len(user)}, {steps}, ...]), got shape {actions.shape}"
            )
        return np.stack([self.check(seq, len(seq)) for seq in actions])

    def _context_rows(self, indices: np.ndarray, length: int, user_actions: np.ndarray | None = None) -> np.ndarray:
        """[n, L, d] latent action rows of each context (zeros where the actions are unknown)."""
        tf = self.engine.temporal_factor
        steps = (length - 1) // tf * tf  # actions that make whole latents
        rows = np.zeros((len(indices), 1 + steps // tf, self.engine.action_dim), np.float32)
        for row, index in enumerate(indices):
            if user_actions is not None:
                actions = user_actions[row]
            else:
                actions = self.bank.context_actions(index) if index >= 0 else None
            if actions is None or steps == 0:
                continue
            step_rows = action_rows(self.scenario, actions[len(actions) - steps :], self.engine.action_dim)
            rows[row] = align_to_latents(step_rows, tf, "mean")
        return rows

    def reset_state(self, start: StartBatch) -> RolloutState:
        """A fresh rollout state for the rows of ``start``."""
        return self.engine.reset(start.frames, start.seeds, context_actions=start.rows)

    # ---- steps ---------------------------------------------------------------------------------

    def check(self, actions: Any, batch: int | None) -> np.ndarray:
        """Validated float64 [n, ...] actions (see :func:`~astra_gym.envs.spaces.check_actions`)."""
        return check_actions(self.scenario, self.action_space, actions, batch)

    def advance(self, state: RolloutState, actions: np.ndarray) -> tuple[RolloutState, StepBatch]:
        """One step of every row of ``state`` with validated actions [n, ...]."""
        rows = held_rows(self.engine, self.scenario, actions)  # [n, F, d]
        start, (state, frames) = state, self.engine.step(state, rows)
        if self.engine.reward_model is None:
            reward = torch.zeros(len(rows))
            logit = torch.full((len(rows),), -torch.inf)
        else:
            reward, logit = self.engine.score(state, rows)
        if self.rest_baseline and self.engine.reward_model is not None:
            reward = reward - rest_reward(self.engine, self.scenario, start, actions)
        reward, spread = reward.double().cpu().numpy(), None
        if self.uncertainty_penalty > 0:
            spread = self.engine.disagreement(start, rows, state).double().cpu().numpy()
            reward = reward - self.uncertainty_penalty * spread
        batch = StepBatch(
            frames=frames.cpu().numpy(),
            reward=reward,
            terminated=(logit > 0).cpu().numpy(),
            termination_prob=torch.sigmoid(logit.double()).cpu().numpy(),
            spread=spread,
        )
        return state, batch


def held_rows(engine: WorldModelRollout, scenario: str, actions: np.ndarray) -> np.ndarray:
    """Validated native actions [n, ...] -> the engine's rows [n, F, d], each held for the chunk's F latents."""
    rows = action_rows(scenario, actions, engine.action_dim)  # [n, d]
    return np.repeat(rows[:, None], engine.config.chunk_latents, axis=1)


def rest_reward(engine: WorldModelRollout, scenario: str, start: RolloutState, actions: np.ndarray) -> torch.Tensor:
    """[n] reward that the step from ``start`` would have earned with the do-nothing command (``rest_baseline``).

    The rest branch continues ``start`` on the same noise as the real step (``step`` draws from
    copies of the state's generators), so what the two share, e.g. the model's drift, cancels.
    """
    rest = held_rows(engine, scenario, rest_actions(scenario, actions))
    return engine.score(engine.step(start, rest)[0], rest)[0]
