"""The rollout-speed benchmark runs end to end at tiny size and writes valid JSON."""

import json

from benchmarks import rollout_speed


def test_rollout_speed_runs(tmp_path):
    out = tmp_path / "rollout_speed.json"
    rows = rollout_speed.main(
        [
            "--preset",
            "debug",
            "--steps",
            "2",
            "--few-steps",
            "1",
            "--envs",
            "2",
            "--warmup",
            "0",
            "--repeats",
            "1",
            "--out",
            str(out),
        ]
    )
    payload = json.loads(out.read_text())
    assert payload["benchmark"] == "rollout_speed"
    names = [r["name"] for r in payload["results"]]
    assert names == ["faithful", "+batched_afg", "+history_cache", "+few_steps", "+batch_envs", "+bf16_autocast"]
    assert [r["name"] for r in rows] == names
    assert rows[0]["speedup_vs_faithful"] == 1.0 and rows[0]["history_attention"] == "full"
    assert rows[2]["history_attention"] == "causal" and rows[2]["cache"]
    assert rows[4]["batch"] == 2 and rows[3]["steps"] == 1
    assert all(r["frames_per_s"] > 0 for r in rows)
