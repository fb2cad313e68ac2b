"""CPU kernels whose per-sample results do not depend on the batch size.

A vector env promises that its row i evolves exactly like a single env seeded the same way. With
per-row generators the noise already agrees, but three kinds of PyTorch CPU kernels do not: their
code path depends on the batch size, so a sample's float32 result differs in the last bits (1e-7
relative, enough to flip a uint8 pixel and to grow over a long rollout) depending on how many
other samples share the call. Measured on this project's CPUs (torch 2.13, MKL, AVX-512):

===============================  ========================================  ==================================
kernel                           when it changes with the batch            what :func:`batch_invariant_cpu` does
===============================  ========================================  ==================================
convolution (oneDNN; NNPACK for  oneDNN picks its algorithm by batch size  runs ``F.conv1d/2d/3d`` one sample
batches of 16 or more)           (e.g. the VAE decoder's 8x8 and 16x16     at a time: every sample takes the
                                 stages)                                   batch-1 path of a single env
MKL sgemm (``F.linear``)         fewer than 4 rows (1 thread) or fewer     computes linears with few rows per
                                 than 12 rows that are not a multiple of   sample as a batched matmul, one
                                 4 (2 threads): per-sample vectors such    small GEMM per sample
                                 as the timestep MLP, the text token's
                                 cross-attention keys, the reward head
SIMD activations (``F.silu``,    ATen evaluates elements in SIMD blocks    pads each row of the input to a
``F.gelu``)                      of 32 floats and the leftover tail of a   multiple of :data:`SIMD_BLOCK`
                                 tensor with scalar code (another exp      elements, so no element of any row
                                 approximation); a row narrower than, or   falls in a tail
                                 not a multiple of, 32 lands in the tail
                                 alone but not in a batch (the debug
                                 preset's width-48 timestep MLP)
===============================  ========================================  ==================================

Token-level linears (hundreds of rows per sample), CPU ``scaled_dot_product_attention``, ``exp``
and ``rsqrt`` were measured batch-invariant and are left alone; widths that are multiples of 64
(the ``small`` and release presets) need no activation padding. Element-wise kernels split large
tensors between threads at ``numel / threads``; with rows padded to 64 elements that split is
block-aligned for 1 or 2 threads (the CPU machines), not necessarily for more. Convolution inputs
must be contiguous (a channels-last view takes yet another kernel); the engine makes them so.

Cost, measured with one thread: per-sample convolutions decode a batch of 16 with the ``small``
VAE in 467 ms instead of 374 ms (turning oneDNN off instead would take 1208 ms); the mode's
dispatch adds a few microseconds per torch call. CUDA kernels are not covered (compare GPU
rollouts with a tolerance).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor
from torch.overrides import TorchFunctionMode

__all__ = ["batch_invariant_cpu", "BatchInvariantMode", "FEW_ROWS", "SIMD_BLOCK"]

# A linear whose input has fewer rows than this per sample is computed sample by sample.
FEW_ROWS = 16
# Activation inputs are padded to rows of a multiple of this many elements (2 x 16 AVX-512 lanes,
# doubled so that a two-thread split of the padded tensor is block-aligned too).
SIMD_BLOCK = 64


def _rowwise_linear(x: Tensor, weight: Tensor, bias: Tensor | None) -> Tensor:
    """``F.linear`` as one GEMM per leading index: [N, K] or [N, L, K] (L < FEW_ROWS) -> [..., out]."""
    rows = x[:, None] if x.ndim == 2 else x.flatten(1, -2)  # [N, L, K]
    out = torch.bmm(rows, weight.t().expand(rows.shape[0], -1, -1))  # [N, L, out]
    if bias is not None:
        out = out + bias
    return out[:, 0] if x.ndim == 2 else out.unflatten(1, x.shape[1:-1])


# Batched convolutions and their spatial dimensions.
_CONVOLUTIONS = {F.conv1d: 1, F.conv2d: 2, F.conv3d: 3}


def _padded_activation(func, x: Tensor, inplace: bool, **kwargs) -> Tensor:
    """``func(x)`` computed on rows padded to a multiple of :data:`SIMD_BLOCK` elements."""
    width = x.shape[-1] if x.ndim else 1
    pad = -width % SIMD_BLOCK
    if pad == 0:
        out = func(x, **kwargs)
    else:
        rows = F.pad(x.reshape(-1, width), (0, pad))  # [R, width + pad]
        out = func(rows, **kwargs)[:, :width].reshape(x.shape)
    return x.copy_(out) if inplace else out


class BatchInvariantMode(TorchFunctionMode):
    """Within this mode, the calls of the module table whose per-sample result depends on the
    batch size are computed in a batch-independent way; every other call passes through.

    * ``F.linear`` (and ``nn.Linear``) on a 2-D input [N, K] (every row its own sample) or on
      [N, ..., K] with fewer than :data:`FEW_ROWS` rows per leading index: one GEMM per sample.
    * ``F.silu`` and ``F.gelu`` (``nn.SiLU``, ``nn.GELU``): on rows padded to :data:`SIMD_BLOCK`.
    * ``F.conv1d``, ``F.conv2d``, ``F.conv3d`` (``nn.Conv*d``): one sample at a time.
    """

    def __torch_function__(self, func, types, args=(), kwargs=None):
        kwargs = dict(kwargs or {})
        if func is F.linear:
            x, weight = args[0], args[1]
            bias = args[2] if len(args) > 2 else kwargs.get("bias")
            if x.ndim == 2 or (x.ndim >= 3 and x.shape[1:-1].numel() < FEW_ROWS):
                return _rowwise_linear(x, weight, bias)
        elif func is F.silu:
            inplace = args[1] if len(args) > 1 else kwargs.get("inplace", False)
            return _padded_activation(F.silu, args[0], inplace)
        elif func is F.gelu:
            approximate = args[1] if len(args) > 1 else kwargs.get("approximate", "none")
            return _padded_activation(F.gelu, args[0], False, approximate=approximate)
        elif func in _CONVOLUTIONS and args[0].ndim == _CONVOLUTIONS[func] + 2 and args[0].shape[0] > 1:
            return torch.cat([func(sample, *args[1:], **kwargs) for sample in args[0].split(1)])
        return func(*args, **kwargs)


def batch_invariant_cpu() -> BatchInvariantMode:
    """Context manager running the block with the batch-invariant CPU kernels of the module table."""
    return BatchInvariantMode()
