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

import argparse
import itertools
import resource
import time

import gymnasium as gym
import torch

import astra_gym  # noqa: F401  (registers the ids)
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


def _env_kwargs(
    checkpoint: str | None, dtype: str | None, device: str | None, batch_invariant: str | None = None
) -> dict:
    """The env kwargs of one measured configuration (none given = the variant's defaults)."""
    kwargs = {k: v for k, v in (("checkpoint", checkpoint), ("dtype", dtype), ("device", device)) if v}
    if batch_invariant is not None:
        kwargs["batch_invariant"] = batch_invariant == "true"
    return kwargs


def main(argv: list[str] | None = None) -> dict:
    """Runs the benchmark, prints a table and writes JSON."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--env", default="Astra-Drive-v0", help="registered Astra env id")
    parser.add_argument(
        "--checkpoint",
        nargs="+",
        default=[None],
        help="override the variant's checkpoint (e.g. debug); several are measured in turn, in one run",
    )
    parser.add_argument("--num-envs", nargs="+", type=int, default=[1, 4, 16, 64])
    parser.add_argument(
        "--denoise-steps", nargs="+", type=int, default=[1, 2, 4, 8], help="0 = the checkpoint's own sampler"
    )
    parser.add_argument(
        "--dtype",
        nargs="+",
        default=[None],
        help="env compute dtypes (float32, bfloat16, float16), measured in turn; none = the env's default",
    )
    parser.add_argument(
        "--batch-invariant",
        nargs="+",
        choices=["true", "false"],
        default=[None],
        help="CPU kernels whose rows equal batch-1 envs bit for bit (true, the default) or faster ones (false)",
    )
    parser.add_argument("--device", default=None, help="env device (cpu, cuda); none = the env's default")
    parser.add_argument("--steps", type=int, default=10, help="timed vector steps per configuration")
    parser.add_argument("--warmup", type=int, default=2, help="untimed vector steps first")
    parser.add_argument("--memory-steps", type=int, default=0, help="steps of the memory probe (0 = skip)")
    parser.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's choice)")
    parser.add_argument("--out", default="results/env_throughput.json", help="JSON output path")
    args = parser.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    rows = []
    variants = itertools.product(args.checkpoint, args.dtype, args.batch_invariant, args.denoise_steps, args.num_envs)
    for checkpoint, dtype, batch_invariant, denoise_steps, num_envs in variants:
        kwargs = _env_kwargs(checkpoint, dtype, args.device, batch_invariant)
        row = measure_throughput(args.env, num_envs, denoise_steps, args.steps, args.warmup, kwargs)
        rows.append(row)
        print(
            f"{args.env} {checkpoint or 'default'} {dtype or 'default'} batch_invariant={row['batch_invariant']} "
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
    config = vars(args) | {"torch_threads": torch.get_num_threads()}
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
