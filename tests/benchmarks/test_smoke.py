"""Every benchmark script runs end to end at tiny size and writes valid JSON."""

import json

from benchmarks import env_throughput, model_speed


def test_model_speed_runs(tmp_path):
    out = tmp_path / "model_speed.json"
    rows = model_speed.main(["--presets", "debug", "--batch-sizes", "1", "2", "--repeats", "1", "--out", str(out)])
    payload = json.loads(out.read_text())
    assert payload["benchmark"] == "model_speed"
    assert [r["batch"] for r in payload["results"]] == [1, 2] == [r["batch"] for r in rows]
    for row in rows:
        assert row["forward_ms"] > 0 and row["afg_batched_ms"] > 0
        # 20 history latents at 8x8 (patch 2): 4x -> 4 tokens, 2x -> 4 tokens, 1x -> 2 x 16; target 16.
        assert row["tokens_per_sample"] == 4 + 4 + 32 + 16


def test_env_throughput_runs(tmp_path):
    out = tmp_path / "env.json"
    result = env_throughput.main(
        ["--env", "Astra-Debug-v0", "--num-envs", "1", "2", "--denoise-steps", "1", "--steps", "2", "--warmup", "1",
         "--memory-steps", "3", "--out", str(out)]
    )
    payload = json.loads(out.read_text())
    assert payload["benchmark"] == "env_throughput"
    rates = [r["env_frames_per_s"] for r in result["throughput"]]
    assert len(rates) == 2 and all(rate > 0 for rate in rates)
    assert result["memory"]["probes"].keys() == {3}


def test_env_throughput_compares_checkpoints_with_their_own_samplers(tmp_path):
    result = env_throughput.main(
        ["--env", "Astra-Debug-v0", "--checkpoint", "debug", "debug", "--num-envs", "2", "--denoise-steps", "0", "3",
         "--steps", "1", "--warmup", "0", "--dtype", "bfloat16", "--out", str(tmp_path / "env.json")]
    )  # fmt: skip
    rows = result["throughput"]
    assert [(r["checkpoint"], r["denoise_steps"]) for r in rows] == [("debug", 0), ("debug", 3)] * 2
    assert rows[1]["effective_denoise_steps"] == 3 and rows[0]["effective_denoise_steps"] >= 1
    assert all(r["guidance_scale"] is not None and r["dtype"] == "bfloat16" for r in rows)
