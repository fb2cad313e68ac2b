"""How well a bundle reads an agent task's reward from frames, per step and per episode.

On held-out recorded episodes (never trained on), every frame replaced by the bundle VAE's
reconstruction (the image domain the world model generates in), the task's true reward is
recomputed from the recorded poses (:func:`astra_gym.data.tasks.relabel`) and compared with each
*reader* the bundle can offer for the task:

* ``direct``: the task's own reward model (``reward/<scenario>-<task>``), if the bundle has one;
* ``potential``: for a potential-based task (e.g. Manipulation ``progress``), the change of its
  potential's reward model (``reward/<scenario>-<potential>``, read through
  :class:`~astra_gym.world_model.potential_reward.PotentialReward`), if the bundle has one.

Per reader: per-step MAE (next to always predicting the mean), the per-step correlation with the
truth, and per episode the error of the summed return and its correlation with the true return
(what an agent maximises).

With ``--imagined-horizon H`` the readers are also scored on what an agent inside shows them: the
bundle's world model re-imagines ``--imagined-starts`` pieces of H steps per episode under the
recorded actions (:mod:`astra_gym.training.imagined_data`), and each piece's imagined frames are
read against the rewards the simulator paid for those actions (block ``imagined``; its "episodes"
are the pieces).

    python -m benchmarks.reward_readers --env Astra-Manipulation-v0 --task progress \
        --checkpoint runs/bundles/small-v0-potential --episodes data/heldout/manipulation \
        --out benchmarks/results/reward_readers_manipulation_progress.json
"""

from __future__ import annotations

import dataclasses
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from astra_gym.data.action_codecs import INFERENCE_FEATURE
from astra_gym.data.episodes import episode_paths, load_episode
from astra_gym.data.tasks import get_task, relabel
from astra_gym.envs.variants import bundle_folder, variant
from astra_gym.rollout.bundle import load_bundle, read_bundle
from astra_gym.training.imagined_data import imagine_episodes
from astra_gym.training.normalization import ActionNormalizer
from astra_gym.training.train_reward import TransitionPool
from astra_gym.utils.cli_args import arg, parse_config
from astra_gym.world_model.potential_reward import PotentialReward
from astra_gym.world_model.reward_io import load_reward_model
from astra_gym.world_model.vae_io import load_vae, reconstruct_frames
from benchmarks.common import write_results


@dataclass(frozen=True)
class Args:
    env: str = arg("Astra-Manipulation-v0", "an Astra id (its scenario picks the task's scenario)")
    task: str = arg("progress", "the agent task (astra_gym.data.tasks)")
    checkpoint: str | None = arg(None, "model bundle (name or folder); none = the variant's")
    episodes: str = arg("data/heldout/manipulation", "held-out recorded episodes of the scenario")
    imagined_horizon: int = arg(
        0, "also read the bundle's own rollouts of the recorded actions: steps per piece (0 = off)"
    )
    imagined_starts: int = arg(6, "imagined pieces per episode (with --imagined-horizon)")
    threads: int = arg(1, "torch CPU threads")
    out: str = arg("benchmarks/results/reward_readers.json", "JSON written here")


def readers(folder: Path, scenario: str, task_name: str) -> dict[str, torch.nn.Module]:
    """The bundle's readers of the task: ``direct`` and/or ``potential`` (see the module docstring)."""
    task = get_task(scenario, task_name)
    found = read_bundle(folder)["scenarios"][scenario].get("task_reward_models", {})
    out: dict[str, torch.nn.Module] = {}
    if task_name in found:
        out["direct"] = load_reward_model(found[task_name])[0]
    if task.potential is not None and task.potential in found:
        out["potential"] = PotentialReward(load_reward_model(found[task.potential])[0], task.potential_scale).eval()
    if not out:
        raise SystemExit(f"{folder} has no reward model for the {scenario} task {task_name!r} or its potential")
    return out


@torch.inference_mode()
def score(reader: torch.nn.Module, pool: TransitionPool, batch: int = 256) -> np.ndarray:
    """The reader's reward of every transition of ``pool`` (float64 [N])."""
    out = []
    for start in range(0, len(pool), batch):
        frames, rows, *_ = pool.gather(torch.arange(start, min(start + batch, len(pool))))
        out.append(reader(frames, rows)[0].double())
    return torch.cat(out).numpy()


def summary(pred: np.ndarray, truth: np.ndarray, episode: np.ndarray) -> dict[str, float]:
    """Per-step and per-episode agreement of predicted and true rewards."""
    ids = np.unique(episode)
    returns = np.array([truth[episode == i].sum() for i in ids])
    predicted = np.array([pred[episode == i].sum() for i in ids])
    return {
        "step_mae": float(np.abs(pred - truth).mean()),
        "step_corr": _corr(pred, truth),
        "return_mae": float(np.abs(predicted - returns).mean()),
        "return_corr": _corr(predicted, returns),
        "predicted_returns": predicted.round(4).tolist(),
    }


def _corr(a: np.ndarray, b: np.ndarray) -> float:
    """Pearson correlation; nan when either side is constant."""
    if len(a) < 2 or a.std() == 0 or b.std() == 0:
        return float("nan")
    return float(np.corrcoef(a, b)[0, 1])


def read_all(
    found: dict[str, torch.nn.Module], episodes: list, feature: str, normalizer: ActionNormalizer
) -> dict[str, dict]:
    """The truth of ``episodes`` and every reader's :func:`summary` on them."""
    pool = TransitionPool(episodes, feature, normalizer, num_frames=1)
    truth = pool.rewards.double().numpy()
    ids = np.unique(pool.episode)
    results: dict[str, dict] = {
        "truth": {
            "transitions": len(pool),
            "episodes": len(ids),
            "step_mae_of_the_mean": float(np.abs(truth - truth.mean()).mean()),
            "returns": [float(truth[pool.episode == i].sum()) for i in ids],
        }
    }
    for kind, reader in found.items():
        pool.num_frames = reader.config.num_frames  # the frames this reader sees per transition
        results[kind] = summary(score(reader, pool), truth, pool.episode)
    return results


def main(argv: list[str] | None = None) -> dict:
    """Runs the comparison and writes ``--out``."""
    args = parse_config(Args, argv, __doc__)
    torch.set_num_threads(args.threads)
    spec = variant(args.env)
    scenario = spec.scenario
    folder = bundle_folder(args.checkpoint or spec.checkpoint)
    manifest = read_bundle(folder)
    found = readers(folder, scenario, args.task)
    task = get_task(scenario, args.task)
    vae = load_vae(manifest["vae"], "cpu")
    started = time.perf_counter()
    real = []
    for path in episode_paths(args.episodes):
        ep = load_episode(path)
        real.append(dataclasses.replace(ep, rewards=relabel(ep.poses, ep.rewards, task).astype(np.float32)))
    episodes = [dataclasses.replace(ep, frames=reconstruct_frames(vae, ep.frames)) for ep in real]
    feature = INFERENCE_FEATURE[scenario]
    normalizer = ActionNormalizer.from_dict(manifest["scenarios"][scenario]["action_normalization"])
    results = read_all(found, episodes, feature, normalizer)
    if args.imagined_horizon:
        engine = load_bundle(folder, scenario).engine()
        pieces = imagine_episodes(real, engine, args.imagined_horizon, args.imagined_starts)
        results["imagined"] = read_all(found, pieces, feature, normalizer)
    config = {**dataclasses.asdict(args), "checkpoint": str(folder), "seconds": time.perf_counter() - started}
    write_results(args.out, "reward_readers", config, [results], torch.device("cpu"))
    for block, name in ((results, "recorded"), (results.get("imagined"), "imagined")):
        for kind in found if block else ():
            r = block[kind]
            print(
                f"{name} {kind}: step MAE {r['step_mae']:.4f} (mean: {block['truth']['step_mae_of_the_mean']:.4f}), "
                f"step corr {r['step_corr']:+.2f}; return MAE {r['return_mae']:.3f}, "
                f"return corr {r['return_corr']:+.2f}"
            )
    return results


if __name__ == "__main__":
    main()
