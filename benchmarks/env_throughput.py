"""Environment throughput: env frames/s vs number of envs and denoising steps, and memory over time.

Each configuration builds ``gym.make_vec(env_id, num_envs=N, ...)`` (the native batched
``AstraVectorEnv``), resets it, warms up, then times ``--steps`` vector steps with random actions.
"Env frames/s" counts every frame every env produced (N x frames per step x steps / seconds). The
memory probe runs one env for ``--memory-steps`` steps and records the resident set size and the
rollout state's bytes (``RolloutState.nbytes``) at the start and the end (flat memory = bounded history).

Usage::

    python -m benchmarks.env_throughput --env Astra-Drive-v0 --num-envs 1 4 16 64 --denoise-steps 1 2 4 8
    python -m benchmarks.env_throughput --env Astra-Debug-v0 --num-envs 1 4 --denoise-steps 2 --steps 3
"""

from __future__ import annotations

import dataclasses
import itertools
import resource
import time
from dataclasses import dataclass

import gymnasium as gym
import torch

import astra_gym  # noqa: F401  (registers the ids)
from astra_gym.utils.cli_args import arg, parse_config
from benchmarks.common import write_results


def _rss_mib() -> float:
    with open("/proc/self/statm") as statm:
        pages = int(statm.read().split()[1])
    return pages * resource.getpagesize() / 2**20


def measure_throughput(env_id: str, num_envs: int, denoise_steps: int, steps: int, warmup: int, kwargs: dict) -> dict:
    """Times ``steps`` vector steps of ``num_envs`` envs after ``warmup`` steps.

    ``denoise_steps`` 0 keeps the checkpoint's own sampler (its steps and guidance).
    """
    steps_kwarg = {"num_denoise_steps": denoise_steps} if denoise_steps else {}
    envs = gym.make_vec(env_id, num_envs=num_envs, **steps_kwarg, **kwargs)
    engine = envs.unwrapped.engine if hasattr(envs.unwrapped, "engine") else None
    envs.action_space.seed(0)
    envs.reset(seed=0)
    frames_per_step = None
    for _ in range(warmup):
        _, _, _, _, info = envs.step(envs.action_space.sample())
        frames_per_step = info["frames"].shape[1] if "frames" in info else 1
    start = time.perf_counter()
    for _ in range(steps):
        _, _, _, _, info = envs.step(envs.action_space.sample())
        frames_per_step = info["frames"].shape[1] if "frames" in info else 1
    seconds = time.perf_counter() - start
    envs.close()
    return {
        "env": env_id,
        "num_envs": num_envs,
        "checkpoint": kwargs.get("checkpoint"),
        "dtype": kwargs.get("dtype", "default"),
        "batch_invariant": None if engine is None else engine.config.batch_invariant,
        "device": kwargs.get("device", "default"),
        "denoise_steps": denoise_steps,
        "effective_denoise_steps": None if engine is None else engine.config.num_denoise_steps,
        "guidance_scale": None if engine is None else engine.config.guidance_scale,
        "frames_per_step": frames_per_step,
        "vector_steps": steps,
        "seconds": seconds,
        "env_steps_per_s": num_envs * steps / seconds,
        "env_frames_per_s": num_envs * steps * frames_per_step / seconds,
    }


def measure_memory(env_id: str, steps: int, denoise_steps: int, kwargs: dict) -> dict:
    """RSS and rollout-state bytes after a few steps and after ``steps`` steps of one env."""
    env = gym.make(env_id, max_episode_steps=steps + 1, num_denoise_steps=denoise_steps, **kwargs)
    env.action_space.seed(0)
    env.reset(seed=0)
    probes = {}
    for step in range(1, steps + 1):
        env.step(env.action_space.sample())
        if step in (min(100, steps), steps):
            probes[step] = {"rss_mib": _rss_mib(), "state_bytes": env.unwrapped.get_state().rollout.nbytes()}
    env.close()
    first, last = probes[min(probes)], probes[max(probes)]
    growth = last["rss_mib"] - first["rss_mib"]
    return {"env": env_id, "steps": steps, "denoise_steps": denoise_steps, "probes": probes, "rss_growth_mib": growth}


DEFAULT = "default"  # the variant's own setting


def _env_kwargs(checkpoint: str, dtype: str, device: str | None, batch_invariant: str = DEFAULT) -> dict:
    """The env kwargs of one measured configuration (``default`` = the variant's)."""
    kwargs = {k: v for k, v in (("checkpoint", checkpoint), ("dtype", dtype)) if v != DEFAULT}
    if device:
        kwargs["device"] = device
    if batch_invariant != DEFAULT:
        kwargs["batch_invariant"] = batch_invariant == "true"
    return kwargs


@dataclass(frozen=True)
class Args:
    """Flags of ``env_throughput`` (each field's help is its ``--help`` text)."""

    env: str = arg("Astra-Drive-v0", help="registered Astra env id")
    checkpoint: tuple[str, ...] = arg(
        (DEFAULT,), help="checkpoints measured in turn, in one run (e.g. debug; default = the variant's)"
    )
    num_envs: tuple[int, ...] = arg((1, 4, 16, 64), help="numbers of envs")
    denoise_steps: tuple[int, ...] = arg((1, 2, 4, 8), help="Euler steps per step (0 = the checkpoint's own sampler)")
    dtype: tuple[str, ...] = arg(
        (DEFAULT,), help="compute dtypes measured in turn (float32, bfloat16, float16; default = the env's)"
    )
    batch_invariant: tuple[str, ...] = arg(
        (DEFAULT,), help="CPU kernels measured in turn: true (rows bit-equal to batch-1 envs), false (faster), default"
    )
    device: str | None = arg(None, help="env device (cpu, cuda); none = the env's default")
    steps: int = arg(10, help="timed vector steps per configuration")
    warmup: int = arg(2, help="untimed vector steps first")
    memory_steps: int = arg(0, help="steps of the memory probe (0 = skip)")
    threads: int | None = arg(None, help="torch threads (none: torch's choice)")
    out: str = arg("results/env_throughput.json", help="JSON output path")


def main(argv: list[str] | None = None) -> dict:
    """Runs the benchmark, prints a table and writes JSON."""
    args = parse_config(Args, argv, __doc__)
    if not set(args.batch_invariant) <= {"true", "false", DEFAULT}:
        raise SystemExit(f"--batch-invariant takes true, false or {DEFAULT}, got {' '.join(args.batch_invariant)}")
    if args.threads:
        torch.set_num_threads(args.threads)
    rows = []
    variants = itertools.product(args.checkpoint, args.dtype, args.batch_invariant, args.denoise_steps, args.num_envs)
    for checkpoint, dtype, batch_invariant, denoise_steps, num_envs in variants:
        kwargs = _env_kwargs(checkpoint, dtype, args.device, batch_invariant)
        row = measure_throughput(args.env, num_envs, denoise_steps, args.steps, args.warmup, kwargs)
        rows.append(row)
        print(
            f"{args.env} {checkpoint} {dtype} batch_invariant={row['batch_invariant']} "
            f"N={num_envs:<3} K={row['effective_denoise_steps']} g={row['guidance_scale']} "
            f"{row['env_steps_per_s']:8.1f} env steps/s {row['env_frames_per_s']:8.1f} env frames/s",
            flush=True,
        )
    kwargs = _env_kwargs(args.checkpoint[0], args.dtype[0], args.device)
    memory = None
    if args.memory_steps:
        memory = measure_memory(args.env, args.memory_steps, min(args.denoise_steps) or 1, kwargs)
    if memory:
        print(
            f"memory over {args.memory_steps} steps: {memory['probes']} "
            f"(RSS growth {memory['rss_growth_mib']:.1f} MiB)"
        )
    config = dataclasses.asdict(args) | {"torch_threads": torch.get_num_threads()}
    path = write_results(
        args.out,
        "env_throughput",
        config,
        rows + ([{"memory": memory}] if memory else []),
        torch.device(args.device or "cpu"),
    )
    print(f"wrote {path}")
    return {"throughput": rows, "memory": memory}


if __name__ == "__main__":
    main()
