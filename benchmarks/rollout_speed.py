"""Frames per second of one chunk rollout: the faithful Astra sampler and each optimisation on top.

One "rollout" is one call of :func:`~astra_gym.world_model.sampling.sample_chunk`: denoising one
chunk of latents given a full FramePack history (20 history latents), actions on every row, as the
environments run it. Variants, each adding one change to the previous one, all in one run so the
ratios are comparable on a shared machine:

a. ``faithful``: release-like: 50 Euler steps, action-free guidance (AFG) scale 2 with separate
   conditional/unconditional forwards, no cache, batch 1 (full attention, the release path).
b. ``+batched_afg``: both AFG branches as one forward of batch 2B.
c. ``+history_cache``: a ``history_attention="causal"`` model (same weights; must be trained that
   way for real use), history keys/values computed once per chunk.
d. ``+few_steps``: 4 Euler steps instead of 50.
e. ``+batch_envs``: 16 environments per call (aggregate frames/s).
f. ``+bf16_autocast``: the same under bf16 autocast (reported whether or not it helps).
g. ``+distilled`` (with ``--student``): the few-step student of ``training/distill.py``: its own
   steps (1), guidance baked in (one forward per step, no AFG branch), 16 envs, bf16. The student
   has full attention, so no cache (with one step and no AFG a history cache saves nothing).
h. ``+torch_compile`` (with ``--compile``): the previous setting with ``torch.compile`` (inductor);
   compilation happens in the untimed warm-up call and its seconds are reported as ``compile_s``.

Frames are latent frames (``chunk`` per row per call). Weights are random unless ``--checkpoint``
names a trained model (a bundle name such as ``small-v0``, a bundle folder or a save_pretrained
folder); speed does not depend on them, but this measures the shipped model's exact shapes. With a
trained full-attention model, ``+history_cache`` runs the same weights in the causal formulation:
its speed is real, its samples are not (the cache needs a model trained with causal history).

Usage::

    python -m benchmarks.rollout_speed                                  # small preset, 8x8 latents, CPU
    python -m benchmarks.rollout_speed --preset debug --steps 2 --few-steps 1 --envs 2 --repeats 1
    python -m benchmarks.rollout_speed --device cuda --preset wan2.1-1.3b --latent-hw 60 104 --chunk 8
    python -m benchmarks.rollout_speed --checkpoint small-v0 --guidance 3 --student runs/small-v0-fast
"""

from __future__ import annotations

import contextlib
import dataclasses
import time
from dataclasses import dataclass
from typing import Literal

import torch

from astra_gym.utils.cli_args import arg, parse_config
from astra_gym.utils.device import resolve_device
from astra_gym.world_model.config import get_preset
from astra_gym.world_model.sampling import SamplerConfig, sample_chunk
from astra_gym.world_model.transformer import AstraTransformer
from benchmarks.common import count_flops, matmul_peak_tflops, time_call, write_results
from benchmarks.model_speed import Scenario, build_inputs


@dataclass(frozen=True)
class Variant:
    """One measured sampler setting (cumulative over the previous variants)."""

    name: str
    steps: int
    batched_afg: bool
    cache: bool
    batch: int
    bf16: bool
    guidance: float
    model: str = "full"  # which weights: "full", "causal" (same weights) or "student"
    compiled: bool = False


def variants(args: Args) -> list[Variant]:
    """The cumulative chain a..f of the module docstring (with ``--dtype bf16`` every variant runs
    under bf16 autocast and f is left out), restricted to ``--only`` if given."""
    bf16 = args.dtype == "bf16"
    faithful = Variant("faithful", args.steps, False, cache=False, batch=1, bf16=bf16, guidance=args.guidance)
    chain = [faithful]
    changes = [
        ("+batched_afg", {"batched_afg": True}),
        ("+history_cache", {"cache": True, "model": "causal"}),
        ("+few_steps", {"steps": args.few_steps}),
        ("+batch_envs", {"batch": args.envs}),
    ]
    if not bf16:
        changes.append(("+bf16_autocast", {"bf16": True}))
    if args.student:
        changes.append(
            ("+distilled", {"steps": args.student_steps, "guidance": 1.0, "cache": False, "model": "student"})
        )
    if args.compile:
        changes.append(("+torch_compile", {"compiled": True}))
    for name, change in changes:
        chain.append(Variant(**{**vars(chain[-1]), "name": name, **change}))
    unknown = sorted(set(args.only or ()) - {v.name for v in chain})
    if unknown:
        raise SystemExit(f"--only {unknown}: not variants of this run; choose from {[v.name for v in chain]}")
    return [v for v in chain if not args.only or v.name in args.only]


def _load(checkpoint: str, device: torch.device) -> AstraTransformer:
    """A trained transformer from a bundle name, a bundle folder or a save_pretrained folder."""
    from astra_gym.envs.variants import bundle_folder
    from astra_gym.rollout.bundle import read_bundle
    from astra_gym.world_model.checkpoints import load_pretrained

    folder = bundle_folder(checkpoint)
    if (folder / "bundle.json").is_file():
        folder = read_bundle(folder)["world_model"]
    if not folder.is_dir():
        raise SystemExit(f"--checkpoint/--student {checkpoint!r}: no such folder or bundled model name")
    return load_pretrained(folder, device=device, dtype=torch.float32).eval()


def _models(args: Args, device: torch.device) -> dict[str, AstraTransformer]:
    """The full-attention (release path) model, a causal-history model with the same weights and
    the student (if any)."""
    torch.manual_seed(0)
    if args.checkpoint:
        full = _load(args.checkpoint, device)
    else:
        with torch.device(device):
            full = AstraTransformer(get_preset(args.preset)).eval()
    with torch.device(device):
        causal = AstraTransformer(full.config.replace(history_attention="causal")).eval()
    causal.load_state_dict(full.state_dict())
    models = {"full": full, "causal": causal}
    if args.student:
        models["student"] = _load(args.student, device)
    return models


def measure(
    variant: Variant, models: dict[str, AstraTransformer], args: Args, device, peak_tflops: float | None
) -> dict:
    """Times one variant; returns its result row (``peak_tflops``: the measured matmul peak, or None)."""
    model = models[variant.model]
    if variant.compiled:
        model = torch.compile(model, dynamic=False)
    scenario = Scenario(args.preset, tuple(args.latent_hw), args.chunk, "rollout")
    generator = torch.Generator().manual_seed(0)
    noise, _, context, frame_pack, actions = build_inputs(
        model, scenario, variant.batch, generator, device, torch.float32
    )
    config = SamplerConfig(
        num_steps=variant.steps, guidance_scale=variant.guidance, batch_guidance=variant.batched_afg
    )
    autocast = torch.autocast(device.type, dtype=torch.bfloat16) if variant.bf16 else contextlib.nullcontext()

    def rollout() -> torch.Tensor:
        with autocast:
            return sample_chunk(
                model,
                noise,
                context=context,
                frame_pack=frame_pack,
                actions=actions,
                config=config,
                use_history_cache=variant.cache,
            )

    start = time.perf_counter()
    if variant.compiled:
        rollout()  # compiles
    compile_s = time.perf_counter() - start if variant.compiled else 0.0
    flops = count_flops(rollout)  # also the first warm-up call
    timing = time_call(rollout, device, warmup=max(args.warmup - 1, 0), repeats=args.repeats)
    frames = variant.batch * args.chunk
    tflops = flops / (timing["median_ms"] * 1e-3) / 1e12
    return {
        **vars(variant),
        "history_attention": model.config.history_attention,
        "chunk_ms": timing["median_ms"],
        "chunk_min_ms": timing["min_ms"],
        "frames_per_s": frames / timing["median_ms"] * 1e3,
        "compile_s": compile_s,
        "gflop_per_call": flops / 1e9,
        "tflops": tflops,
        "fraction_of_peak": tflops / peak_tflops if peak_tflops else None,
    }


def _print_table(rows: list[dict]) -> None:
    """One line per variant with its ratio to the faithful path."""
    print(
        f"{'variant':<16} {'steps':>5} {'AFG':>8} {'cache':>5} {'batch':>5} {'bf16':>5} "
        f"{'ms/call':>10} {'frames/s':>10} {'x faithful':>10}"
    )
    for row in rows:
        afg = "off" if row["guidance"] == 1.0 else "batched" if row["batched_afg"] else "separate"
        print(
            f"{row['name']:<16} {row['steps']:>5} {afg:>8} {str(row['cache']):>5} {row['batch']:>5} "
            f"{str(row['bf16']):>5} {row['chunk_ms']:>10.1f} {row['frames_per_s']:>10.2f} "
            f"{row['speedup_vs_faithful'] or float('nan'):>10.2f}"
        )


@dataclass(frozen=True)
class Args:
    """Flags of ``rollout_speed`` (each field's help is its ``--help`` text)."""

    preset: str = arg("small", help="transformer preset (debug, small, wan2.1-1.3b)")
    latent_hw: tuple[int, int] = arg((8, 8), help="latent height and width (8 8 = 64x64 px)", metavar="N")
    chunk: int = arg(1, help="latents generated per call")
    device: str = arg("cpu", help="cpu, cuda or auto")
    steps: int = arg(50, help="Euler steps of the faithful path (release 50)")
    few_steps: int = arg(4, help="Euler steps of the few-step variant")
    envs: int = arg(16, help="environments per call of the batched variant")
    guidance: float = arg(2.0, help="AFG scale (release 2.0)")
    warmup: int = arg(1, help="untimed calls per variant")
    repeats: int = arg(3, help="timed calls per variant (median reported)")
    checkpoint: str | None = arg(
        None, help="trained weights (bundle name/folder or save_pretrained folder); none = random"
    )
    student: str | None = arg(None, help="a distilled few-step student: adds the +distilled variant")
    student_steps: int = arg(1, help="Euler steps of the student")
    compile: bool = arg(False, help="add the +torch_compile variant (slow to compile)")
    dtype: Literal["float32", "bf16"] = arg("float32", help="bf16: every variant under bf16 autocast")
    only: tuple[str, ...] | None = arg(None, help="measure only these variants (e.g. faithful); none = all")
    peak_size: int = arg(0, help="measure the matmul peak at this size first (0 = skip; GPU: 8192)")
    out: str = arg("results/rollout_speed.json", help="where to write the JSON results")


def main(argv: list[str] | None = None) -> list[dict]:
    """Runs every variant, prints the table, writes JSON; returns the result rows."""
    args = parse_config(Args, argv, __doc__)
    device = resolve_device(args.device)
    peak_dtype = torch.bfloat16 if args.dtype == "bf16" else torch.float32
    peak_tflops = matmul_peak_tflops(device, peak_dtype, args.peak_size) if args.peak_size else None
    models = _models(args, device)
    rows = []
    with torch.inference_mode():
        for variant in variants(args):
            rows.append(measure(variant, models, args, device, peak_tflops))
            print(f"  measured {variant.name}: {rows[-1]['frames_per_s']:.2f} frames/s", flush=True)
    by_name = {row["name"]: row for row in rows}
    for row in rows:
        faithful = by_name.get("faithful")
        row["speedup_vs_faithful"] = row["frames_per_s"] / faithful["frames_per_s"] if faithful else None
    _print_table(rows)
    if "+bf16_autocast" in by_name and "+batch_envs" in by_name:
        bf16, before = by_name["+bf16_autocast"], by_name["+batch_envs"]
        verdict = "helps" if bf16["frames_per_s"] > before["frames_per_s"] else "does NOT help"
        print(
            f"bf16 autocast on {device.type} {verdict}: x{bf16['frames_per_s'] / before['frames_per_s']:.2f} "
            "vs the same setting in float32"
        )
    config = dataclasses.asdict(args) | {"peak_tflops": peak_tflops}
    path = write_results(args.out, "rollout_speed", config, rows, device)
    print(f"wrote {path}")
    return rows


if __name__ == "__main__":
    main()
