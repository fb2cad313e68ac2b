"""Transformer forward speed per preset, batch size and guidance batching.

One "forward" is one denoising step of one chunk with a full FramePack history (20 history latents:
start + 16 @4x + 2 @2x + 1 @1x), actions on every row, as the environments run it. Action-free
guidance (AFG) needs a conditional and an unconditional prediction per step; it is timed both as
one forward at batch 2B ("batched") and as two forwards at batch B ("separate").

Usage::

    python -m benchmarks.model_speed                       # CPU: debug + small presets
    python -m benchmarks.model_speed --presets small --batch-sizes 1 4 16 --out results/model_speed.json
    python -m benchmarks.model_speed --device cuda --presets wan2.1-1.3b --dtype bf16   # GPU: 352x640, 480x832
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass

import torch

from astra_gym.utils.cli_args import arg, parse_config
from astra_gym.utils.device import resolve_device, resolve_dtype
from astra_gym.world_model.conditioning import ActionInput
from astra_gym.world_model.config import get_preset
from astra_gym.world_model.framepack import FramePackHistory, FramePackLayout, pack
from astra_gym.world_model.sampling import cat_actions, cat_frame_packs
from astra_gym.world_model.transformer import AstraTransformer
from benchmarks.common import count_flops, matmul_peak_tflops, time_call, write_results

HISTORY_LATENTS = 20


@dataclass(frozen=True)
class Scenario:
    """One measured configuration."""

    preset: str
    latent_hw: tuple[int, int]
    chunk: int
    label: str


SCENARIOS = {
    "debug": [Scenario("debug", (8, 8), 1, "64x64 px, 1 latent/chunk")],
    "small": [
        Scenario("small", (8, 8), 1, "64x64 px, 1 latent/chunk"),
        Scenario("small", (8, 8), 4, "64x64 px, 4 latents/chunk"),
    ],
    # Wan's VAE compresses 8x spatially: 352x640 px -> 44x80 latents; 480x832 px -> 60x104 (the release).
    "wan2.1-1.3b": [
        Scenario("wan2.1-1.3b", (44, 80), 8, "352x640 px, 8 latents/chunk"),
        Scenario("wan2.1-1.3b", (60, 104), 8, "480x832 px, 8 latents/chunk"),
    ],
}


def build_inputs(model: AstraTransformer, scenario: Scenario, batch: int, generator: torch.Generator, device, dtype):
    """Random latents, a 20-latent FramePack history and camera/first-modality actions."""
    cfg = model.config
    height, width = scenario.latent_hw
    spec = cfg.modalities[0]
    history_latents = torch.randn(batch, cfg.in_channels, HISTORY_LATENTS, height, width, generator=generator)
    history_actions = torch.randn(batch, HISTORY_LATENTS, spec.dim, generator=generator)
    history = FramePackHistory.from_latents(history_latents.to(device, dtype), history_actions.to(device))
    target_actions = torch.randn(batch, scenario.chunk, spec.dim, generator=generator).to(device)
    frame_pack, values = pack(history, target_actions, FramePackLayout())
    actions = ActionInput(values=values, modality=torch.zeros(batch, dtype=torch.long, device=device))
    noisy = torch.randn(batch, cfg.in_channels, scenario.chunk, height, width, generator=generator).to(device, dtype)
    timestep = torch.full((batch,), 500.0, device=device)
    context = torch.zeros(batch, 1, cfg.text_dim, device=device, dtype=dtype)
    return noisy, timestep, context, frame_pack, actions


def _double(inputs):
    """Stacks the inputs twice along the batch (conditional + unconditional in one forward)."""
    noisy, timestep, context, frame_pack, actions = inputs
    twice = lambda x: torch.cat([x, x])  # noqa: E731
    packed = cat_frame_packs([frame_pack, frame_pack])
    return twice(noisy), twice(timestep), twice(context), packed, cat_actions([actions, actions])


def measure(scenario: Scenario, batch: int, device, dtype, repeats: int, peak_tflops: float | None = None) -> dict:
    """Times single, AFG-batched and AFG-separate forwards for one scenario and batch size.

    ``peak_tflops`` (the measured matmul peak, :func:`~benchmarks.common.matmul_peak_tflops`)
    adds the AFG-batched forward's share of it.
    """
    generator = torch.Generator().manual_seed(0)
    with torch.device(device):  # build in place: the full preset is 1.5B parameters
        model = AstraTransformer(get_preset(scenario.preset))
    model = model.to(dtype=dtype).eval()
    inputs = build_inputs(model, scenario, batch, generator, device, dtype)
    doubled = _double(inputs)
    with torch.inference_mode():
        single = time_call(lambda: model(*inputs), device, repeats=repeats)
        batched = time_call(lambda: model(*doubled), device, repeats=repeats)
        flops = count_flops(lambda: model(*doubled))
    tflops = flops / (batched["median_ms"] * 1e-3) / 1e12
    separate_ms = 2 * single["median_ms"]
    tokens = _count_tokens(model, inputs)
    return {
        "preset": scenario.preset,
        "scenario": scenario.label,
        "batch": batch,
        "tokens_per_sample": tokens,
        "dtype": str(dtype).removeprefix("torch."),
        "forward_ms": single["median_ms"],
        "afg_batched_ms": batched["median_ms"],
        "afg_separate_ms": separate_ms,
        "afg_batched_speedup": separate_ms / batched["median_ms"],
        "samples_per_s_afg_batched": batch / batched["median_ms"] * 1e3,
        "afg_batched_gflop": flops / 1e9,
        "afg_batched_tflops": tflops,
        "peak_tflops": peak_tflops,
        "fraction_of_peak": tflops / peak_tflops if peak_tflops else None,
    }


def _count_tokens(model: AstraTransformer, inputs) -> int:
    noisy, _, _, frame_pack, _ = inputs
    ph, pw = model.config.patch_size[1:]
    total = noisy.shape[2] * (noisy.shape[3] // ph) * (noisy.shape[4] // pw)
    for group in frame_pack.history:
        _, _, t, h, w = group.latents.shape
        s = group.scale
        total += (t // s) * (h // (s * ph)) * (w // (s * pw))
    return total


@dataclass(frozen=True)
class Args:
    """Flags of ``model_speed`` (each field's help is its ``--help`` text)."""

    presets: tuple[str, ...] = arg(("debug", "small"), help=f"model presets, of {sorted(SCENARIOS)}")
    batch_sizes: tuple[int, ...] = arg((1, 4, 16), help="batch sizes")
    device: str = arg("cpu", help="cpu, cuda or auto")
    dtype: str = arg("float32", help="float32 or bf16")
    repeats: int = arg(5, help="timed repetitions after 2 warm-ups")
    peak_size: int = arg(0, help="measure the matmul peak at this size first (0 = skip; GPU: 8192)")
    out: str = arg("results/model_speed.json", help="where to write the JSON results")


def main(argv: list[str] | None = None) -> list[dict]:
    """Runs the benchmark and writes JSON; returns the result rows."""
    args = parse_config(Args, argv, __doc__)
    unknown = sorted(set(args.presets) - set(SCENARIOS))
    if unknown:
        raise SystemExit(f"--presets: unknown {unknown}; choose from {sorted(SCENARIOS)}")
    device = resolve_device(args.device)
    dtype = resolve_dtype(args.dtype, device)
    peak = matmul_peak_tflops(device, dtype, args.peak_size) if args.peak_size else None
    if peak:
        print(f"measured {args.dtype} matmul peak at {args.peak_size}^3: {peak:.1f} TFLOP/s", flush=True)
    rows = []
    for preset in args.presets:
        for scenario in SCENARIOS[preset]:
            for batch in args.batch_sizes:
                row = measure(scenario, batch, device, dtype, args.repeats, peak)
                rows.append(row)
                print(
                    f"{row['preset']:>12} {row['scenario']:<28} B={batch:<3} tokens={row['tokens_per_sample']:<6} "
                    f"fwd {row['forward_ms']:8.1f} ms | AFG batched {row['afg_batched_ms']:8.1f} ms "
                    f"vs separate {row['afg_separate_ms']:8.1f} ms (x{row['afg_batched_speedup']:.2f}) "
                    f"{row['afg_batched_tflops']:.3f} TFLOP/s",
                    flush=True,
                )
    path = write_results(args.out, "model_speed", dataclasses.asdict(args), rows, device)
    print(f"wrote {path}")
    return rows


if __name__ == "__main__":
    main()
