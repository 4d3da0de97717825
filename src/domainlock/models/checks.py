"""Checks on a model's tensors shared by every entry point that takes a model (artifact loading,
:func:`~domainlock.evaluation.evaluate`, :func:`~domainlock.methods.protect`)."""

from __future__ import annotations

import torch
from torch import nn

from ..errors import NonFiniteWeightsError

#: what the error says when an in-memory module holds NaN/inf
IN_MEMORY_CAUSE = "the model is corrupt or its training diverged"
#: what it says for a loaded artifact
ARTIFACT_CAUSE = "the artifact is corrupt or its training diverged"


def check_finite_weights(model: nn.Module, cause: str = IN_MEMORY_CAUSE) -> nn.Module:
    """Return ``model`` if every floating-point parameter and buffer is finite; otherwise raise a one-line
    :class:`~domainlock.errors.NonFiniteWeightsError` naming the first bad tensor and its NaN / inf counts
    (and how many other tensors are bad), followed by ``cause``."""
    bad: list[tuple[str, str, int, int]] = []
    for kind, items in (("weight", model.named_parameters()), ("buffer", model.named_buffers())):
        for name, t in items:
            if not (t.is_floating_point() or t.is_complex()) or t.device.type == "meta":
                continue
            t = t.detach()
            finite = torch.isfinite(t)
            if bool(finite.all()):
                continue
            nan = int(torch.isnan(t).sum())
            bad.append((kind, name, nan, int(t.numel() - int(finite.sum()) - nan)))
    if bad:
        kind, name, nan, inf = bad[0]
        more = f" (and {len(bad) - 1} more tensor{'s' if len(bad) > 2 else ''})" if len(bad) > 1 else ""
        raise NonFiniteWeightsError(f"model {kind} {name!r} holds {nan} NaN / {inf} inf values{more}; {cause}")
    return model
