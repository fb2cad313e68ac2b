"""The rollout-speed benchmark runs end to end at tiny size and writes valid JSON."""

import json

import pytest

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


def test_rollout_speed_with_trained_weights_and_a_student(tmp_path):
    import torch

    from astra_gym.world_model.checkpoints import save_pretrained
    from astra_gym.world_model.config import get_preset
    from astra_gym.world_model.transformer import AstraTransformer

    torch.manual_seed(0)
    teacher = save_pretrained(AstraTransformer(get_preset("debug")), tmp_path / "teacher")
    student = save_pretrained(AstraTransformer(get_preset("debug")), tmp_path / "student")
    argv = ["--preset", "debug", "--steps", "2", "--few-steps", "1", "--envs", "2", "--warmup", "0",
            "--repeats", "1", "--guidance", "3", "--checkpoint", str(teacher), "--student", str(student),
            "--out", str(tmp_path / "o.json")]  # fmt: skip
    rows = rollout_speed.main(argv)
    last = rows[-1]
    assert last["name"] == "+distilled" and last["model"] == "student"
    assert (last["steps"], last["guidance"], last["cache"], last["batch"], last["bf16"]) == (1, 1.0, False, 2, True)
    assert rows[0]["guidance"] == 3.0 and rows[2]["model"] == "causal"
    payload = json.loads((tmp_path / "o.json").read_text())
    assert payload["config"]["checkpoint"] == str(teacher)
    with pytest.raises(SystemExit, match="no such folder or bundled model name"):
        rollout_speed.main([*argv[:-4], "--checkpoint", str(tmp_path / "missing"), "--out", str(tmp_path / "x.json")])


def test_compile_variant_is_last_and_compiles_the_previous_setting():
    from argparse import Namespace

    args = Namespace(
        steps=50,
        few_steps=4,
        envs=16,
        guidance=2.0,
        student="s",
        student_steps=1,
        compile=True,
        dtype="float32",
        only=None,
    )
    chain = rollout_speed.variants(args)
    assert [v.name for v in chain][-2:] == ["+distilled", "+torch_compile"]
    assert chain[-1].compiled and not chain[-2].compiled
    assert {k: v for k, v in vars(chain[-1]).items() if k not in ("name", "compiled")} == {
        k: v for k, v in vars(chain[-2]).items() if k not in ("name", "compiled")
    }
    bf16 = rollout_speed.variants(Namespace(**{**vars(args), "dtype": "bf16", "only": ["faithful", "+few_steps"]}))
    assert [v.name for v in bf16] == ["faithful", "+few_steps"] and all(v.bf16 for v in bf16)
    assert bf16[1].cache and bf16[1].steps == 4  # the few-step path includes the history cache
    with pytest.raises(SystemExit, match="not variants of this run"):
        rollout_speed.variants(Namespace(**{**vars(args), "only": ["+bf16"]}))
