"""Numeric precision of a model's forward pass: float32, or bfloat16 autocast where the device runs it natively.

``precision`` is one of :data:`PRECISIONS`: ``fp32``; ``bf16`` (``torch.autocast`` with bfloat16 around the
model's forward, so convolutions and matrix products run in bf16 while the weights, their gradients, the
optimizer, the loss and the data stay float32); ``auto`` (bf16 where the device has it natively: CUDA with
bf16 support, or a CPU whose oneDNN runs bf16 — AVX512-BF16 or AMX — else fp32). :func:`resolve_bf16` decides,
:func:`forward_autocast` applies it.

Why only the forward: it is where the time goes, and it is all that needs lowering. With the whole training
step under autocast (data pipeline and optimizer included) digitnet trains far worse, while the forward alone
matches float32 (docs/bench/precision.md, its ``whole-step`` row).
"""

from __future__ import annotations

from contextlib import AbstractContextManager, nullcontext

import torch

from ..errors import check_choice

PRECISIONS = ("auto", "fp32", "bf16")


def resolve_bf16(precision: str, device: torch.device) -> bool:
    """Whether ``precision`` means a bf16 forward on ``device`` (``auto``: where it runs natively)."""
    check_choice("precision", precision, PRECISIONS)
    if precision != "auto":
        return precision == "bf16"
    if device.type == "cuda":
        return bool(torch.cuda.is_available() and torch.cuda.is_bf16_supported())
    if device.type == "cpu":
        try:
            return bool(torch.backends.mkldnn.is_available() and torch.ops.mkldnn._is_mkldnn_bf16_supported())
        except (AttributeError, RuntimeError):
            return False
    return False


def forward_autocast(bf16: bool, device: torch.device) -> AbstractContextManager:
    """The context to run a model's forward in: bf16 autocast on ``device`` when ``bf16``, else nothing."""
    return torch.autocast(device.type, dtype=torch.bfloat16) if bf16 else nullcontext()
