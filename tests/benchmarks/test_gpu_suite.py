"""benchmarks/gpu/run.sh at tiny sizes on the CPU: every part runs and lands in one JSON."""

import json
import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def test_gpu_suite_runs_every_part_at_tiny_size(tmp_path):
    # The parts' time limits budget GPU minutes; on a shared CPU they would time the machine, not test the code.
    env = {**os.environ, "SUITE": "tiny", "DEVICE": "cpu", "INSTALL": "0", "PY": sys.executable,
           "OUT": str(tmp_path), "OMP_NUM_THREADS": "1", "LIMIT_SCALE": "20"}  # fmt: skip
    done = subprocess.run(["bash", "benchmarks/gpu/run.sh"], cwd=ROOT, env=env, capture_output=True, text=True)
    suite = json.loads((tmp_path / "gpu_suite.json").read_text())
    assert done.returncode == 0 and [p["status"] for p in suite["parts"]] == [0] * 7, done.stdout[-4000:]
    results = suite["results"]
    assert sorted(results) == sorted(
        ["dit", "rollout_small", "rollout_large", "env_Astra-Drive-v0", "env_Astra-Manipulation-v0", "train"]
    )
    assert all(row["fraction_of_peak"] > 0 for row in results["dit"]["results"])
    rollout = results["rollout_large"]["results"]
    assert [r["name"] for r in rollout] == ["faithful", "+few_steps"] and all(
        r["fraction_of_peak"] > 0 for r in rollout
    )
    assert [r["num_envs"] for r in results["env_Astra-Drive-v0"]["results"]] == [2, 4]
    assert [r["preset"] for r in results["train"]["results"]] == ["debug", "small-p4"]
    assert all(r["samples_per_s"] > 0 for r in results["train"]["results"])
    assert (tmp_path / "gpu_tests.xml").is_file() and (tmp_path / "log.txt").is_file()
    assert "=== dit (limit 800s)" in done.stdout  # LIMIT_SCALE multiplies dit's 40 s
