"""Accuracy of a classifier on domains, and a plain-text table of the results."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import torch
from torch import nn

from .utils.runtime import resolve_device


def _model_device(model: nn.Module) -> torch.device:
    for t in model.parameters():
        return t.device
    for t in model.buffers():
        return t.device
    return torch.device("cpu")


@torch.no_grad()
def batched_outputs(model: nn.Module, x: torch.Tensor, per_batch: Callable[[torch.Tensor], torch.Tensor],
                    batch_size: int = 512, device: str | torch.device | None = None) -> list[torch.Tensor]:
    """``per_batch(model(batch))`` on CPU for each batch of ``x``, in eval mode (the model's mode is restored
    afterwards); ``device`` defaults to where the model is."""
    dev = _model_device(model) if device is None else (
        resolve_device(device) if isinstance(device, str) else torch.device(device))
    was_training = model.training
    model.to(dev).eval()
    try:
        return [per_batch(model(x[i:i + batch_size].to(dev))).cpu() for i in range(0, len(x), batch_size)]
    finally:
        model.train(was_training)


def predict(model: nn.Module, x: torch.Tensor, batch_size: int = 512,
            device: str | torch.device | None = None) -> torch.Tensor:
    """Predicted class per image (CPU int64 tensor); the model is put in eval mode and its mode restored."""
    out = batched_outputs(model, x, lambda logits: logits.argmax(1), batch_size, device)
    return torch.cat(out) if out else torch.empty(0, dtype=torch.long)


def accuracy(model: nn.Module, data: Any, batch_size: int = 512,
             device: str | torch.device | None = None) -> float:
    """Top-1 accuracy of ``model`` on ``data`` (anything with ``.x`` and ``.y``, e.g. ``DomainData``).

    Runs in eval mode under ``no_grad`` (the model's train/eval mode is restored). ``device``: ``None`` keeps
    the model where it is; a name such as ``"auto"`` moves it there.
    """
    y = data.y
    if len(y) == 0:
        return float("nan")
    pred = predict(model, data.x, batch_size, device)
    return float((pred == y.cpu()).float().mean())


def _load(domain: Any, split: str, data_root: Any) -> Any:
    if not isinstance(domain, str):
        return domain  # an already-loaded DomainData
    from . import data as _data

    return _data.load_domain(domain, split=split, root=data_root)


def evaluate(model: nn.Module, domains: Sequence[Any], split: str = "test", data_root: Any = None,
             device: str | torch.device = "auto", batch_size: int = 512) -> dict[str, dict[str, Any]]:
    """Accuracy per domain: ``{name: {"accuracy", "n", "chance", "split"}}`` (chance = 1 / num_classes).

    ``domains`` are names for ``domainlock.data.load_domain`` (split ``split``) or loaded ``DomainData``.
    """
    results: dict[str, dict[str, Any]] = {}
    for d in domains:
        data = _load(d, split, data_root)
        name = d if isinstance(d, str) else str(getattr(data, "name", f"domain{len(results)}"))
        num_classes = int(getattr(data, "num_classes", 0) or (int(data.y.max()) + 1 if len(data.y) else 1))
        results[name] = {"accuracy": accuracy(model, data, batch_size, device), "n": int(len(data.y)),
                         "chance": 1.0 / num_classes, "split": str(getattr(data, "split", split)),
                         "shape": list(data.x.shape[1:])}
    return results


def format_table(results: dict[str, dict[str, Any]], title: str | None = None) -> str:
    """Plain-text table of :func:`evaluate` results (accuracy and chance in percent)."""
    rows = [("domain", "split", "n", "accuracy", "chance")]
    for name, r in results.items():
        acc = r.get("accuracy", float("nan"))
        rows.append((name, str(r.get("split", "")), str(r.get("n", "")), f"{100 * acc:.2f}%",
                     f"{100 * r.get('chance', float('nan')):.1f}%"))
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
    align = ["<", "<", ">", ">", ">"]
    lines = ["  ".join(f"{c:{a}{w}}" for c, a, w in zip(row, align, widths, strict=True)) for row in rows]
    lines.insert(1, "  ".join("-" * w for w in widths))
    if title:
        lines.insert(0, title)
    return "\n".join(lines)
