"""Few-step distillation on the debug preset: the loss is exactly the student-teacher gap, it falls,
and the trainer's --distill-from mode exports a working student."""

from __future__ import annotations

import copy

import pytest
import torch

from astra_gym.training import train_world_model
from astra_gym.training.checkpointing import step_generator
from astra_gym.training.distill import DistillConfig, distill_step
from astra_gym.world_model.checkpoints import load_pretrained, read_pretrained_config
from astra_gym.world_model.sampling import SamplerConfig, sample_chunk
from tests.training.test_training import _data, _model, _run_config
from tests.training.test_training import cache as cache  # noqa: F401 - the module-scoped fixture


def _perturbed(seed: int = 0):
    model = _model(seed)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(0.05 * torch.randn_like(p))
    return model.eval()


def test_student_equal_to_teacher_has_zero_loss(cache):
    teacher = _perturbed()
    student = copy.deepcopy(teacher)
    batch = _data(cache).batch(4, step_generator(0, "data", 0))
    cfg = DistillConfig(teacher_steps=2, teacher_guidance=1.0, student_steps=2)
    loss, logs = distill_step(student, teacher, batch, cfg, 0.0, 0.0, step_generator(0, "noise", 0))
    assert float(logs["mse"]) < 1e-10 and loss.requires_grad
    # With guidance the one-step student starts away from the target: the loss sees the gap.
    cfg = DistillConfig(teacher_steps=2, teacher_guidance=3.0, student_steps=1)
    _, logs = distill_step(student, teacher, batch, cfg, 0.0, 0.0, step_generator(0, "noise", 0))
    assert float(logs["mse"]) > 1e-4


def test_distillation_reduces_the_gap_to_the_guided_teacher(cache):
    teacher = _perturbed()
    student = copy.deepcopy(teacher).train()
    batch = _data(cache).batch(4, step_generator(0, "data", 0))
    cfg = DistillConfig(teacher_steps=4, teacher_guidance=3.0, student_steps=1)
    optimizer = torch.optim.AdamW(student.parameters(), lr=1e-3)
    losses = []
    for _ in range(15):
        loss, logs = distill_step(student, teacher, batch, cfg, 0.0, 0.0, step_generator(0, "noise", 0))
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        losses.append(float(logs["mse"]))
    assert losses[-1] < 0.5 * losses[0], losses
    assert all(p.grad is None for p in teacher.parameters())


def test_dropped_rows_are_distilled_towards_the_unconditional_sample(cache):
    teacher = _perturbed()
    batch = _data(cache).batch(4, step_generator(0, "data", 0))
    cfg = DistillConfig(teacher_steps=2, teacher_guidance=3.0, student_steps=2)
    # Dropping every row: guidance has nothing to amplify, so a copy of the teacher is exact.
    _, logs = distill_step(copy.deepcopy(teacher), teacher, batch, cfg, 1.0, 0.0, step_generator(0, "noise", 0))
    assert float(logs["actions_dropped"]) == 1.0 and float(logs["mse"]) < 1e-10


def test_trainer_distill_mode_exports_a_one_step_student(cache, tmp_path):
    teacher_run = train_world_model.train(_run_config(cache, tmp_path / "teacher", total_steps=2, checkpoint_every=2))
    teacher = str(teacher_run.final)
    student_cfg = _run_config(
        cache,
        tmp_path / "student",
        init_from=teacher,
        distill_from=teacher,
        distill=DistillConfig(teacher_steps=2, teacher_guidance=3.0, student_steps=1),
        total_steps=3,
        checkpoint_every=3,
        sampler_steps=1,
        sampler_guidance=1.0,
    )
    result = train_world_model.train(student_cfg)
    assert result.step == 3 and all("train/mse" in r for r in result.rows if "train/loss" in r)
    _, extra = read_pretrained_config(result.final)
    assert extra["sampler"]["num_denoise_steps"] == 1 and extra["sampler"]["guidance_scale"] == 1.0
    student = load_pretrained(result.final)
    batch = _data(cache).batch(2, step_generator(0, "data", 0))
    out = sample_chunk(
        student,
        batch.target.shape,
        context=None,
        frame_pack=batch.frame_pack,
        actions=batch.actions,
        config=SamplerConfig(num_steps=1, shift=1.0),
        generator=torch.Generator().manual_seed(0),
    )
    assert torch.isfinite(out).all()
    from astra_gym.training import bundle

    card = bundle._model_card("s", student.config, extra, {}, {})
    assert f"distilled from {teacher} (teacher: 2 steps, guidance 3.0; student: 1 step(s))" in card


def test_teacher_with_other_inputs_is_rejected(cache, tmp_path):
    teacher_run = train_world_model.train(
        _run_config(cache, tmp_path / "teacher", total_steps=1, checkpoint_every=1, num_experts=0)
    )
    other = load_pretrained(teacher_run.final)
    other.config = other.config.replace(history_scales=(1, 2))
    with pytest.raises(ValueError, match="differ in \\['history_scales'\\]"):
        train_world_model._load_teacher(
            _run_config(cache, tmp_path / "s", distill_from=str(teacher_run.final)), other.config, torch.device("cpu")
        )
