"""DIAMOND's loop as one command: collect real experience with the current agent, retrain the world
model and the reward model on everything collected, retrain the agent inside the new model, evaluate
it in the real simulator, repeat.

    python -m astra_gym.agents.dyna --env Astra-Drive-v0 --out runs/dyna               # CPU preset
    python -m astra_gym.agents.dyna --env Astra-Drive-v0 --out runs/dyna --preset gpu     # --device cuda
    python -m astra_gym.agents.dyna --help                                              # every flag

One iteration i, each stage skipped when its output exists (so a killed run resumes where it was):

==========  =====================================================================================
collect     ``--collect-episodes`` real episodes (unseen seeds) with the current agent, a random-hold
            segment with probability ``--epsilon`` at every switch (iteration 0: the recording policy
            mix, or the agent of ``--init-agent``) -> ``OUT/data/iter_i/``
encode      the new episodes into a latent cache with the start bundle's VAE (kept fixed)
wm          fine-tune the world model (from the previous iteration's) on every cache so far
distill     only when the start model is a distilled student (one forward, guidance baked in, e.g.
            ``drive-v5``): distil the fine-tuned model into a new student with the start model's
            distillation settings; the fine-tunes themselves stay guided teachers
reward      retrain the reward model (``--task``'s, when given) on every episode so far and the
            ``--reward-replay`` folders, on the VAE's reconstructions and on ``--reward-imagined-starts``
            pieces per episode re-imagined by this iteration's world model under the recorded actions
            (``OUT/imagine/iter_i``: that model with the start reward models); ``--reward-steps 0``
            keeps the start bundle's reward models
bundle      ``OUT/bundles/iter_i`` (world model stored in float16); usable as ``checkpoint=``
agent       PPO inside the new bundle for ``--agent-steps`` imagined steps, continuing the policy
evaluate    ``--eval-episodes`` real episodes on seeds never collected from -> ``OUT/curve.json``,
            ``OUT/curve.png`` (real return against the real steps used so far)
==========  =====================================================================================

A distilled start model is fine-tuned as the teacher it reproduces: with its teacher's sampler and
its teacher's recipe (the training record a student keeps, ``extra.teacher``). Iteration 0 starts
from the teacher's weights when ``--teacher`` gives them, otherwise from the student's (the teacher
is not shipped; the flow-matching loss turns them back into a guided model within the fine-tune);
later iterations continue the previous teacher.

``--replay`` adds the start model's own training caches to every fine-tune (``--replay-share`` of the
rows), as DIAMOND's replay buffer keeps all data: otherwise iteration 0 fine-tunes the whole model on
a few collected episodes.

Real steps counted: every collected step (the start bundle's own training data is not counted;
its model card says how much it used) and no evaluation step.
"""

from __future__ import annotations

import dataclasses
import json
import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from astra_gym.agents import train_sb3
from astra_gym.agents.plots import save_curves
from astra_gym.data.episodes import episode_filename, episode_paths, load_episode, save_episode
from astra_gym.data.generate import episode_seeds
from astra_gym.data.latent_cache import build_latent_cache
from astra_gym.data.policies import Policy, RandomHold, car_sampler, fetch_sampler, make_policy
from astra_gym.data.recorder import Recorder
from astra_gym.data.sims import make_simulator
from astra_gym.data.tasks import get_task
from astra_gym.envs.spaces import EXPLORE_BUTTONS
from astra_gym.envs.variants import bundle_folder, variant
from astra_gym.rollout.bundle import read_bundle
from astra_gym.training import train_reward, train_world_model
from astra_gym.training.bundle import make_bundle
from astra_gym.training.data import DatasetSpec
from astra_gym.training.distill import DistillConfig
from astra_gym.training.steps import StepConfig
from astra_gym.utils.atomic import atomic_write_text
from astra_gym.utils.cli_args import arg, parse_preset_config
from astra_gym.world_model.sampling import SamplerConfig

__all__ = ["DynaConfig", "PRESETS", "AgentPolicy", "run", "main"]

logger = logging.getLogger(__name__)
COLLECT_SEED = 50_000  # collection seeds derive from (COLLECT_SEED + seed, iteration, episode): unseen elsewhere


@dataclass(frozen=True)
class DynaConfig:
    """Flags of the loop (each field's help is its ``--help`` text)."""

    env: str = arg("Astra-Drive-v0", help="registered Astra id (its scenario's simulator is the real one)")
    out: str = arg("runs/dyna", help="output folder; re-running the same command resumes")
    start_bundle: str | None = arg(None, help="bundle to start from (name or folder); none = the variant's")
    init_agent: str | None = arg(None, help="saved SB3 model (.zip) to collect with and continue; none = fresh")
    teacher: str | None = arg(
        None,
        help="world-model folder of a distilled start model's teacher, fine-tuned in iteration 0 instead of "
        "the student's weights; none = the student's",
    )
    replay: tuple[str, ...] = arg(
        (),
        help="latent caches of the start model's own training data, replayed in every fine-tune with the "
        "collected ones (DIAMOND keeps all data); none = the collected data alone",
    )
    replay_share: float = arg(0.5, help="share of the fine-tuning rows drawn from --replay (the rest: the collected)")
    reward_replay: tuple[str, ...] = arg(
        (),
        help="episode folders (e.g. the start model's recorded data) the reward stage trains on with every "
        "collected episode; none = the collected episodes alone",
    )
    iterations: int = arg(4, help="loop iterations")
    collect_episodes: int = arg(8, help="real episodes collected per iteration")
    collect_steps: int = arg(250, help="steps per collected episode")
    epsilon: float = arg(0.25, help="share of random-hold segments while collecting with the agent")
    wm_steps: int = arg(1500, help="world-model fine-tuning steps per iteration")
    wm_batch: int = arg(8, help="world-model batch size")
    wm_lr: float = arg(1e-4, help="world-model fine-tuning learning rate")
    distill_steps: int = arg(
        1500, help="distillation steps per iteration if the start model is a distilled student (0: bundle the teacher)"
    )
    reward_steps: int = arg(
        1500, help="reward-model training steps per iteration (0: keep the start bundle's reward models)"
    )
    reward_imagined_starts: int = arg(
        4,
        help="pieces per training episode that the iteration's world model re-imagines under the recorded actions, "
        "with the real rewards, for the reward stage (train_reward --imagined): the reward model learns to read "
        "the frames the agent inside will show it; 0 = the VAE's reconstructions of the recorded frames only",
    )
    reward_imagined_horizon: int = arg(32, help="imagined steps per piece of --reward-imagined-starts")
    task: str | None = arg(
        None,
        help="the agent's task (astra_gym.data.tasks, e.g. progress on Manipulation): the reward it trains on "
        "inside and is evaluated on; the reward stage retrains that task's model; none = the simulator's reward",
    )
    agent_steps: int = arg(20_000, help="imagined PPO steps per iteration")
    num_envs: int = arg(16, help="imagined envs stepped in one batch")
    imagined_horizon: int = arg(50, help="steps per imagined episode")
    eval_episodes: int = arg(5, help="real evaluation episodes per iteration")
    eval_max_steps: int | None = arg(None, help="cap on evaluation episode length; none = the variant's")
    device: str = arg("cpu", help="torch device of every model: cpu, cuda[:N]")
    threads: int = arg(1, help="torch CPU threads")
    seed: int = arg(0, help="seed of collection, training and evaluation")


PRESETS: dict[str, DynaConfig] = {
    "debug": DynaConfig(iterations=1, collect_episodes=2, collect_steps=40, wm_steps=2, wm_batch=2, distill_steps=2,
                        reward_steps=2, reward_imagined_starts=1, reward_imagined_horizon=8,
                        agent_steps=32, num_envs=2, imagined_horizon=8, eval_episodes=1, eval_max_steps=20),
    "cpu": DynaConfig(),
    "gpu": DynaConfig(iterations=8, collect_episodes=32, wm_steps=4000, wm_batch=64, distill_steps=3000,
                      reward_steps=3000, agent_steps=100_000, num_envs=64, eval_episodes=10, device="cuda"),
}  # fmt: skip


class AgentPolicy(Policy):
    """A trained SB3 agent as a recording policy, with epsilon random-hold segments for exploration.

    Args:
        model: SB3 model acting on the simulator's 64x64 frames.
        sim: The simulator (its ``frame`` is what the agent sees).
        random: Exploration policy of the scenario.
        epsilon: Probability that a segment (10-40 steps) is random.
    """

    def __init__(self, model: Any, sim: Any, random: Policy, epsilon: float) -> None:
        self.model, self.sim, self.random, self.epsilon = model, sim, random, epsilon
        self.name = f"agent+random({epsilon:.2f})"

    def reset(self, env, rng: np.random.Generator) -> None:
        super().reset(env, rng)
        self.random.reset(env, rng.spawn(1)[0])
        self._left, self._explore = 0, False

    def act(self, obs: Any, env) -> np.ndarray:
        if self._left <= 0:
            self._explore, self._left = bool(self.rng.random() < self.epsilon), int(self.rng.integers(10, 41))
        self._left -= 1
        if self._explore:
            return self.random.act(obs, env)
        action, _ = self.model.predict(self.sim.frame(env), deterministic=False)
        return np.asarray(action)


def _random_policy(scenario: str) -> Policy:
    if scenario == "drive":
        return RandomHold(car_sampler, hold=(4, 20))
    if scenario == "manipulation":
        return RandomHold(fetch_sampler, hold=(3, 15))
    return make_policy("random", scenario, EXPLORE_BUTTONS)


class Loop:
    """The paths and stages of one loop run (see the module docstring)."""

    def __init__(self, cfg: DynaConfig) -> None:
        self.cfg = cfg
        self.out = Path(cfg.out)
        self.scenario = variant(cfg.env).scenario
        start = cfg.start_bundle or variant(cfg.env).checkpoint
        self.start = bundle_folder(start)
        self.manifest = read_bundle(self.start)
        self.start_saved = json.loads((self.start / self.manifest["world_model"] / "config.json").read_text())
        training = self.start_saved["extra"].get("training", {})
        config = training.get("config", {})
        self.distill = DistillConfig(**config["distill"]) if config.get("distill_from") else None  # if a student
        self.recipe = self.start_saved["extra"].get("teacher", training) if self.distill else training
        # the sampler the start bundle runs (``bundle --guidance`` may differ from its world model's training one)
        self.sampler = _sampler(self.manifest.get("sampler") or self.start_saved["extra"]["sampler"])
        _check_inputs(cfg, self.distill is not None)
        self.entry = entry = self.manifest["scenarios"][self.scenario]  # recording settings, starts, reward models
        folders = {None: entry.get("reward_model"), **(entry.get("task_reward_models") or {})}
        # the start bundle's reward-model folders of the scenario, by task (None: the simulator's reward)
        self.start_rewards = {task: self.start / folder for task, folder in folders.items() if folder is not None}
        # the reward model the loop keeps or retrains: the task's own, else the potential it is the change of
        # (as the env reads it, rollout.bundle), else the simulator's (None)
        self.reward_task = None
        if cfg.task is not None:
            spec = get_task(self.scenario, cfg.task)  # an unknown task raises, listing the scenario's tasks
            own = cfg.task in self.start_rewards or spec.potential is None or spec.potential not in self.start_rewards
            self.reward_task = cfg.task if own else spec.potential
            if cfg.reward_steps == 0 and self.reward_task not in self.start_rewards:
                raise ValueError(
                    f"--task {cfg.task}: the start bundle {self.start} has no reward model of that task to keep; "
                    "give --reward-steps N to train one in every iteration"
                )

    def _dir(self, kind: str, i: int) -> Path:
        return self.out / kind / f"iter_{i:03d}"

    def agent_zip(self, i: int) -> Path | None:
        """The agent after iteration i (or the initial one for i = -1)."""
        if i < 0:
            return Path(self.cfg.init_agent) if self.cfg.init_agent else None
        return self._dir("agent", i) / "final_model.zip"

    # ---- stages --------------------------------------------------------------------------------

    def collect(self, i: int) -> int:
        """Records this iteration's episodes (resumes per episode); returns the real steps they hold."""
        folder = self._dir("data", i)
        folder.mkdir(parents=True, exist_ok=True)
        sim = make_simulator(self.scenario, **self.entry.get("sim_config", {}))
        agent = self.agent_zip(i - 1)
        if agent is None:
            policy = make_policy("mix", self.scenario, EXPLORE_BUTTONS if self.scenario == "explore" else ())
        else:
            model = train_sb3.ALGOS["ppo"].load(str(agent), device=self.cfg.device)
            policy = AgentPolicy(model, sim, _random_policy(self.scenario), self.cfg.epsilon)
        with Recorder(sim, policy) as recorder:
            for k in range(self.cfg.collect_episodes):
                path = folder / episode_filename(k)
                if not path.exists():
                    sim_seed, policy_seed = episode_seeds(COLLECT_SEED + self.cfg.seed, i * 10_000 + k)
                    save_episode(recorder.record(sim_seed, self.cfg.collect_steps, policy_seed), path)
        return _steps(folder)

    def encode(self, i: int) -> Path:
        from astra_gym.data.latent_cache import load_vae

        cache = self._dir("cache", i)
        if not (cache / "index.json").exists() or not json.loads((cache / "index.json").read_text())["complete"]:
            vae_dir = self.start / self.manifest["vae"]
            preset = json.loads((vae_dir / "config.json").read_text())["preset"]
            vae = load_vae(preset, str(vae_dir / "vae.safetensors"), self.cfg.device)
            episodes = ((str(p), load_episode(p)) for p in episode_paths(self._dir("data", i)))
            build_latent_cache(episodes, vae, cache, overwrite=True)
        return cache

    def world_model(self, i: int) -> Path:
        run_dir = self._dir("wm", i)
        if (run_dir / "final" / "config.json").exists():
            return run_dir / "final"
        previous = self._dir("wm", i - 1) / "final" if i > 0 else self._first_init()
        sampler = self.distill.teacher_sampler if self.distill else self.sampler
        cfg = self._train_config(i, run_dir, previous, self.cfg.wm_steps, sampler)
        return train_world_model.train(cfg).final

    def _first_init(self) -> Path:
        """The weights iteration 0 fine-tunes: the start model's, or its teacher's when ``--teacher`` gives them."""
        return Path(self.cfg.teacher) if self.cfg.teacher else self.start / self.manifest["world_model"]

    def student(self, i: int, teacher: Path) -> Path:
        """The fine-tuned ``teacher`` distilled as the start model was; the teacher itself when it was not."""
        if self.distill is None or self.cfg.distill_steps == 0:
            return teacher
        run_dir = self._dir("distill", i)
        if (run_dir / "final" / "config.json").exists():
            return run_dir / "final"
        logger.info("iteration %d: distil the world model", i)
        cfg = self._train_config(i, run_dir, teacher, self.cfg.distill_steps, self.sampler)
        cfg = dataclasses.replace(cfg, distill_from=str(teacher), distill=self.distill)
        return train_world_model.train(cfg).final

    def _train_config(self, i: int, run_dir: Path, init: Path, steps: int, sampler: SamplerConfig):
        """A fine-tune of ``init`` on every cache so far (and the replayed ones), exporting ``sampler`` as its
        recommended one."""
        datasets = _datasets(self.scenario, [self._dir("cache", j) for j in range(i + 1)], self.cfg)
        return dataclasses.replace(
            train_world_model.PRESETS["small-gpu" if self.cfg.device.startswith("cuda") else "small-cpu"],
            datasets=datasets,
            init_from=str(init),
            batch_size=self.cfg.wm_batch,
            total_steps=steps,
            warmup_steps=max(1, steps // 20),
            lr=self.cfg.wm_lr,
            run_dir=str(run_dir),
            vae=str(self.start / self.manifest["vae"]),
            preview_every=0,
            tensorboard=False,
            progress=True,
            checkpoint_every=max(1, steps // 4),
            sampler_steps=sampler.num_steps,
            sampler_guidance=sampler.guidance_scale,
            sampler_shift=sampler.shift,
            **_recipe_flags(self.recipe),
        )

    def reward(self, i: int, world_model: Path, student: Path) -> Path | None:
        """This iteration's retrained reward model (``--task``'s when given), trained with the imagined pieces
        of ``student`` (the model the agent will train in); None with ``--reward-steps 0``."""
        if self.cfg.reward_steps == 0:
            return None
        out = self._dir("reward", i)
        if (out / "final" / "config.json").exists():
            return out / "final"
        imagined = {}
        if self.cfg.reward_imagined_starts > 0:
            imagined = dict(
                imagined=str(self.bundle(i, student, None, kind="imagine")),
                imagined_starts=self.cfg.reward_imagined_starts,
                imagined_horizon=self.cfg.reward_imagined_horizon,
                imagined_cache=str(self._dir("imagined", i)),  # a killed stage resumes without imagining again
            )
        cfg = dataclasses.replace(
            train_reward.PRESETS["small"],
            episodes=(*self.cfg.reward_replay, *(str(self._dir("data", j)) for j in range(i + 1))),
            task=self.reward_task,
            num_frames=_reward_frames(self.start_rewards.get(self.reward_task) or self.start_rewards[None]),
            action_norm=str(world_model),
            vae=str(self.start / self.manifest["vae"]),
            total_steps=self.cfg.reward_steps,
            device=self.cfg.device,
            out=str(out),
            tensorboard=False,
            **imagined,
        )
        return train_reward.train_reward(cfg)

    def bundle(self, i: int, world_model: Path, reward: Path | None, kind: str = "bundles") -> Path:
        """The iteration's bundle (in ``OUT/kind``): the new world model with the retrained reward model in
        place of the start bundle's one for ``--task`` (every start reward model when ``reward`` is None)."""
        out = self._dir(kind, i)
        if not (out / "bundle.json").exists():
            rewards = dict(self.start_rewards)
            if reward is not None:
                rewards[self.reward_task] = reward
            vae = self.start / self.manifest["vae"]
            banks = [self.entry["frame_bank"]] if self.entry.get("frame_bank") else []
            make_bundle(
                f"dyna-iter{i}", world_model, vae, list(rewards.values()), out, weights_dtype="float16",
                sim_config=self.entry.get("sim_config"), frame_banks=banks,
            )  # fmt: skip
        return out

    def agent(self, i: int, bundle: Path) -> dict:
        run_dir = self._dir("agent", i)
        summary = run_dir / "summary.json"
        if summary.exists():
            return json.loads(summary.read_text())
        previous = self.agent_zip(i - 1)
        args = train_sb3.Args(
            env=self.cfg.env,
            task=self.cfg.task,
            checkpoint=str(bundle),
            init_model=str(previous) if previous is not None else None,
            total_timesteps=self.cfg.agent_steps,
            num_envs=self.cfg.num_envs,
            imagined_horizon=self.cfg.imagined_horizon,
            eval_freq=0,
            eval_episodes=self.cfg.eval_episodes,
            eval_max_steps=self.cfg.eval_max_steps,
            save_freq=0,
            progress_bar=False,
            out=str(run_dir.parent),
            run_name=run_dir.name,
            device=self.cfg.device,
            threads=self.cfg.threads,
            seed=self.cfg.seed,
        )
        return train_sb3.train(args)[1]


def _check_inputs(cfg: DynaConfig, distilled_start: bool) -> None:
    """Clear errors for a teacher or replayed cache the loop cannot use, before any stage runs."""
    if cfg.teacher is not None:
        if not distilled_start:
            raise ValueError(f"--teacher {cfg.teacher}: the start model is not a distilled student; drop the flag")
        if not (Path(cfg.teacher) / "config.json").exists():
            raise ValueError(f"--teacher {cfg.teacher}: no config.json there; give an exported world-model folder")
    for cache in cfg.replay:
        if not (Path(cache) / "index.json").exists():
            raise ValueError(
                f"--replay {cache}: not a latent cache (no index.json); build one with python -m "
                "astra_gym.data.latent_cache --episodes DIR --vae PRESET --vae-weights <the start bundle's VAE>"
            )
    for folder in cfg.reward_replay:
        if not episode_paths(folder):
            raise ValueError(f"--reward-replay {folder}: no recorded episodes (*.hdf5) there; give an episode folder")
    if cfg.reward_replay and cfg.reward_steps == 0:
        raise ValueError("--reward-replay with --reward-steps 0: no reward model is trained; drop one of the two")
    if cfg.reward_imagined_starts < 0 or cfg.reward_imagined_horizon < 1:
        raise ValueError(
            f"--reward-imagined-starts {cfg.reward_imagined_starts} / --reward-imagined-horizon "
            f"{cfg.reward_imagined_horizon}: give starts >= 0 (0 = no imagined pieces) and a horizon >= 1"
        )
    if cfg.replay and not 0 < cfg.replay_share < 1:
        raise ValueError(f"--replay-share {cfg.replay_share}: give a share strictly between 0 and 1")


def _datasets(scenario: str, collected: list[Path], cfg: DynaConfig) -> tuple[DatasetSpec, ...]:
    """Row sampling over the caches: ``--replay-share`` spread over the replayed ones, the rest over the
    collected ones, each share split evenly between its caches."""
    replay = cfg.replay_share if cfg.replay else 0.0
    specs = [
        DatasetSpec(root=str(c), scenario=scenario, weight=(1 - replay) / len(collected), name=f"iter{j}")
        for j, c in enumerate(collected)
    ]
    specs += [
        DatasetSpec(root=str(r), scenario=scenario, weight=replay / len(cfg.replay), name=f"replay{j}")
        for j, r in enumerate(cfg.replay)
    ]
    return tuple(specs)


def _steps(folder: Path) -> int:
    """Actions recorded in a folder of episodes."""
    return sum(load_episode(p).num_steps for p in episode_paths(folder))


def _reward_frames(folder: Path) -> int:
    return int(json.loads((folder / "config.json").read_text())["config"]["num_frames"])


def _sampler(sampler: dict) -> SamplerConfig:
    """A bundle's or model folder's ``sampler`` entry, so the loop's models and bundles recommend the same."""
    return SamplerConfig(int(sampler["num_denoise_steps"]), float(sampler["shift"]), float(sampler["guidance_scale"]))


def _recipe_flags(record: dict) -> dict:
    """The per-step recipe and row sampling of a training record (``extra.training`` of a model folder, or a
    student's ``extra.teacher``), so fine-tuning continues it.

    Without them the preset's release defaults (timestep shift 5, the release's loss weighting,
    noise-as-mask p 0.8) would retrain a model made with other settings (Drive's: shift 1, no
    weighting, p 0.3, reset rows 0.25). A model exported without a training config keeps the preset's.
    """
    training = record.get("config", {})
    flags = {}
    if "step" in training:
        names = {f.name for f in dataclasses.fields(StepConfig)}
        step = {k: tuple(v) if isinstance(v, list) else v for k, v in training["step"].items() if k in names}
        flags["step"] = StepConfig(**step)
    if "episode_start_p" in training:
        flags["episode_start_p"] = float(training["episode_start_p"])
    return flags


def _plot(curve: list[dict], path: Path) -> None:
    steps = [row["real_steps"] for row in curve]
    mean = [row["real_return_mean"] for row in curve]
    std = [row["real_return_std"] for row in curve]
    save_curves(
        {"agent trained inside, real return": (steps, mean, std)},
        path,
        "real simulator steps used (collection)",
        "real return",
        "dyna loop: agent trained inside the world model",
    )


def run(cfg: DynaConfig) -> list[dict]:
    """Runs (or resumes) the loop; returns the learning curve (one row per finished iteration)."""
    torch.set_num_threads(cfg.threads)
    loop = Loop(cfg)
    loop.out.mkdir(parents=True, exist_ok=True)
    atomic_write_text(loop.out / "config.json", json.dumps(dataclasses.asdict(cfg), indent=2))
    curve_path = loop.out / "curve.json"
    curve = json.loads(curve_path.read_text()) if curve_path.exists() else []
    real_steps = 0
    for i in range(cfg.iterations):
        logger.info("iteration %d: collect", i)
        real_steps += loop.collect(i)
        if i < len(curve):
            continue  # finished in an earlier invocation
        loop.encode(i)
        logger.info("iteration %d: world model", i)
        world_model = loop.world_model(i)
        student = loop.student(i, world_model)
        logger.info("iteration %d: reward model", i)
        reward = loop.reward(i, world_model, student)
        bundle = loop.bundle(i, student, reward)
        logger.info("iteration %d: agent inside %s", i, bundle)
        summary = loop.agent(i, bundle)
        final = summary["final_eval"] or {}
        curve.append({
            "iteration": i, "real_steps": real_steps, "bundle": str(bundle),
            "real_return_mean": final.get("mean_return"), "real_return_std": final.get("std_return"),
            "imagined_steps": summary["env_steps"],
        })  # fmt: skip
        atomic_write_text(curve_path, json.dumps(curve, indent=2))
        if all(row["real_return_mean"] is not None for row in curve):
            _plot(curve, loop.out / "curve.png")
        logger.info("iteration %d: real return %s after %d real steps", i, final.get("mean_return"), real_steps)
    return curve


def config_from_args(argv: list[str] | None = None) -> DynaConfig:
    """The ``--preset`` (cpu; gpu sets ``--device cuda``) with every given flag on top; ``--print-config``
    prints it and exits."""
    return parse_preset_config(DynaConfig, PRESETS, "cpu", argv, __doc__)


def main(argv: list[str] | None = None) -> list[dict]:
    """CLI entry point (see the module docstring)."""
    cfg = config_from_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    curve = run(cfg)
    for row in curve:
        print(json.dumps(row))
    return curve


if __name__ == "__main__":
    main()
