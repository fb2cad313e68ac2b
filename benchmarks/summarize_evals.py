"""One markdown table from several ``eval_world_model`` result files (ablations, sampler variants).

    python -m benchmarks.summarize_evals results/ablation_abl-*_drive.json [--out results/ablations.json]

Each row is one file: scenario, model, context frames, steps, guidance (``model's`` = the
model's own sampler defaults, in files written before the effective settings were recorded),
PSNR at chunk 1 and the last chunk, mean SSIM, ΔPSNR at the last chunk and mean, and the IDM's
balanced accuracy on generated video and on the VAE's reconstruction of the real video (with
chance; n/a in files written before that score existed). ``--out`` also writes the rows as JSON.
Rows keep the order of the arguments.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from astra_gym.utils.atomic import atomic_write_text
from astra_gym.utils.cli_args import arg, parse_config

HEADER = (
    "| scenario | model | context | steps | guidance | PSNR chunk 1 / last (dB) | SSIM | ΔPSNR last chunk (dB) "
    "| ΔPSNR mean (dB) | IDM bal. acc. generated / VAE recon. (chance) |"
)
SEPARATOR = "|---|---|---:|---:|---:|---:|---:|---:|---:|---:|"


def summarize(path: str | Path) -> dict[str, Any]:
    """The headline numbers of one ``eval_world_model`` JSON file.

    Args:
        path: The file.

    Returns:
        A flat dict (the row of the table).
    """
    data = json.loads(Path(path).read_text(encoding="utf-8"))
    if data.get("benchmark") != "eval_world_model":
        raise ValueError(f"{path} is not an eval_world_model result (benchmark={data.get('benchmark')!r})")
    config, chunks, summary = data["config"], data["per_chunk"], data["summary"]
    sampler = data.get("model", {}).get("sampler") or {}  # the effective settings (newer files)
    idm = (summary.get("idm") or {}).get("generated") or {}
    return {
        "file": str(path),
        "scenario": config["scenario"],
        "model": config["checkpoint"],
        "context": data["plan"]["context"],
        "steps": sampler.get("num_denoise_steps", config["denoise_steps"]),
        "guidance": sampler.get("guidance_scale", config["guidance"]),
        "psnr_first": chunks[0]["psnr"],
        "psnr_last": chunks[-1]["psnr"],
        "ssim": summary["ssim"]["mean"],
        "delta_psnr_last": chunks[-1]["delta_psnr"],
        "delta_psnr_mean": summary["delta_psnr"]["mean"],
        "idm_generated": idm.get("balanced_accuracy"),
        "idm_chance": idm.get("balanced_chance"),
        "idm_vae_recon": ((summary.get("idm") or {}).get("vae_recon") or {}).get("balanced_accuracy"),
    }


def markdown(rows: Sequence[dict[str, Any]]) -> str:
    """The markdown table of :func:`summarize` rows."""
    lines = [HEADER, SEPARATOR]

    def setting(value: Any) -> str:
        return "model's" if value is None else f"{value:g}"

    for r in rows:
        recon = "n/a" if r["idm_vae_recon"] is None else f"{r['idm_vae_recon']:.3f}"
        idm = "n/a" if r["idm_generated"] is None else f"{r['idm_generated']:.3f} / {recon} ({r['idm_chance']:.3f})"
        lines.append(
            f"| {r['scenario']} | {r['model']} | {r['context']} | {setting(r['steps'])} | {setting(r['guidance'])} | "
            f"{r['psnr_first']:.2f} / {r['psnr_last']:.2f} | {r['ssim']:.3f} | {r['delta_psnr_last']:+.2f} | "
            f"{r['delta_psnr_mean']:+.2f} | {idm} |"
        )
    return "\n".join(lines)


@dataclass(frozen=True)
class Args:
    """Arguments of ``summarize_evals`` (each field's help is its ``--help`` text)."""

    files: tuple[str, ...] = arg(help="eval_world_model JSON files", positional=True)
    out: str | None = arg(None, help="also write the rows as JSON here")


def main(argv: Sequence[str] | None = None) -> None:
    """CLI entry point (see the module docstring)."""
    args = parse_config(Args, argv, __doc__)
    rows = [summarize(f) for f in args.files]
    print(markdown(rows))
    if args.out:
        atomic_write_text(args.out, json.dumps({"benchmark": "summarize_evals", "rows": rows}, indent=2))


if __name__ == "__main__":
    main()
