"""dtype names: "fast" picks bf16 only where the device computes it in hardware."""

import gymnasium as gym
import pytest
import torch

import astra_gym  # noqa: F401
from astra_gym.utils import device as device_utils
from astra_gym.utils.device import resolve_dtype

CPU = torch.device("cpu")


@pytest.mark.parametrize("native", [True, False])
def test_fast_is_bf16_only_on_cpus_with_native_bf16(monkeypatch, native):
    monkeypatch.setattr(device_utils, "cpu_has_native_bf16", lambda: native)
    assert resolve_dtype("fast", CPU) == (torch.bfloat16 if native else torch.float32)
    assert resolve_dtype("auto", CPU) == resolve_dtype(None, CPU) == torch.float32  # auto stays exact on CPUs
    assert resolve_dtype("bf16", CPU) == torch.bfloat16 and resolve_dtype(torch.float16, CPU) == torch.float16


def test_unknown_dtype_names_the_choices():
    with pytest.raises(ValueError, match="'fast'"):
        resolve_dtype("float8", CPU)


def test_drive_computes_in_the_fast_dtype_of_this_machine():
    env = gym.make("Astra-Drive-v0", device="cpu")
    try:
        expected = torch.bfloat16 if device_utils.cpu_has_native_bf16() else torch.float32
        assert env.unwrapped.core.engine.config.dtype == expected
    finally:
        env.close()
