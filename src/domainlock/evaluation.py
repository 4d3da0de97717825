"""Accuracy of a classifier on domains, and a plain-text table of the results.
An image folder's classes meet a model's outputs through :func:`align_classes` (by card name, else sorted)."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import torch
from torch import nn

from .errors import DomainlockError
from .utils.layout import channels_last
from .utils.runtime import resolve_device

FOLDER_PREFIX = "folder:"
#: images per inference batch: on CPU a digitnet's per-image cost at one thread doubles from 128 to 512 images
#: (the activations fall out of cache; docs/bench/layout.md)
EVAL_BATCH = 128


def _model_device(model: nn.Module) -> torch.device:
    for t in model.parameters():
        return t.device
    for t in model.buffers():
        return t.device
    return torch.device("cpu")


@torch.no_grad()
def batched_outputs(model: nn.Module, x: torch.Tensor, per_batch: Callable[[torch.Tensor], torch.Tensor],
                    batch_size: int = EVAL_BATCH, device: str | torch.device | None = None) -> list[torch.Tensor]:
    """``per_batch(model(batch))`` on CPU for each batch of ``x``, in eval mode and channels-last (the model's
    mode and layout are restored afterwards); ``device`` defaults to where the model is."""
    dev = _model_device(model) if device is None else (
        resolve_device(device) if isinstance(device, str) else torch.device(device))
    was_training = model.training
    model.to(dev).eval()
    try:
        with channels_last(model):
            return [per_batch(model(x[i:i + batch_size].to(dev))).cpu() for i in range(0, len(x), batch_size)]
    finally:
        model.train(was_training)


def predict(model: nn.Module, x: torch.Tensor, batch_size: int = EVAL_BATCH,
            device: str | torch.device | None = None) -> torch.Tensor:
    """Predicted class per image (CPU int64 tensor); the model is put in eval mode and its mode restored."""
    out = batched_outputs(model, x, lambda logits: logits.argmax(1), batch_size, device)
    return torch.cat(out) if out else torch.empty(0, dtype=torch.long)


def accuracy(model: nn.Module, data: Any, batch_size: int = EVAL_BATCH,
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


def accuracy_on(model: nn.Module, x: torch.Tensor, y: torch.Tensor, device: str | torch.device | None = None
                ) -> float:
    """Top-1 accuracy on images ``x`` with labels ``y`` as an exact fraction (:func:`predict`; NaN when empty)."""
    if len(x) == 0:
        return float("nan")
    return int((predict(model, x, device=device) == y.cpu()).sum()) / len(x)


def _load(domain: Any, split: str, data_root: Any) -> Any:
    if not isinstance(domain, str):
        return domain  # an already-loaded DomainData
    from . import data as _data

    return _data.load_domain(domain, split=split, root=data_root)


def output_classes(model: Any) -> tuple[list[str] | None, int | None]:
    """``(class names, number of outputs)`` of an :class:`~domainlock.artifact.Artifact` (from its card) or
    a module (``None`` names; its ``num_classes`` if it has one)."""
    card = getattr(model, "card", None)
    if isinstance(card, dict):
        n = card.get("num_classes")
        return getattr(model, "classes", None), (n if isinstance(n, int) else None)
    n = getattr(model, "num_classes", None)
    return None, (n if isinstance(n, int) else None)


def _pairs(names: Sequence[str], mapping: Sequence[int], limit: int = 12) -> str:
    shown = [f"{c}->{i}" for c, i in zip(names, mapping, strict=True)]
    return ", ".join(shown[:limit]) + (f", ... ({len(shown)} classes)" if len(shown) > limit else "")


def class_mapping(model_classes: Sequence[str] | None, domain: Any, num_outputs: int | None = None
                  ) -> tuple[list[int], str]:
    """Which model output each class of ``domain`` (a folder domain: ``.name``, ``.classes`` in label order)
    is: ``(mapping, message)`` with ``mapping[label] = output``.

    With ``model_classes`` (the card's ``classes``) the folder's classes are matched by name, whatever their
    order; a folder class the model does not know is a one-line error naming it and the model's classes.
    Without them the folder's sorted order is used, and ``message`` says so; a folder with more classes than
    ``num_outputs`` is then an error.
    """
    name = getattr(domain, "name", "the folder")
    names = [str(c) for c in getattr(domain, "classes", None) or []]
    if model_classes:
        known = [str(c) for c in model_classes]
        unknown = [c for c in names if c not in known]
        if unknown:
            raise DomainlockError(
                f"{name} has class(es) {', '.join(map(repr, unknown[:5]))}{', ...' if len(unknown) > 5 else ''} "
                f"that the model does not output; its card's classes are: {', '.join(known)}")
        mapping = [known.index(c) for c in names]
        some = f" ({len(names)} of the model's {len(known)} classes)" if len(names) < len(known) else ""
        return mapping, f"{name} classes -> model outputs, by name from the artifact card{some}: " + \
            _pairs(names, mapping)
    if num_outputs is not None and len(names) > num_outputs:
        raise DomainlockError(f"{name} has {len(names)} classes but the model has {num_outputs} outputs; "
                              "use a folder with at most that many classes")
    mapping = list(range(len(names)))
    return mapping, (f"the model's card names no classes, so {name} classes -> model outputs in sorted order: "
                     + _pairs(names, mapping))


def align_classes(data: Any, model_classes: Sequence[str] | None, num_outputs: int | None = None, *,
                  every_class: bool = False) -> tuple[Any, str | None]:
    """``(data, message)``: a folder domain (name ``folder:...``) with its labels mapped to the model's outputs
    by :func:`class_mapping`, and the mapping in words; any other domain unchanged, with ``None``.

    A folder matched by name comes back with the model's ``classes`` and ``num_classes``. ``every_class``:
    refuse a folder that has only some of the model's classes (the fine-tuning attack samples each class).
    Idempotent.
    """
    if not str(getattr(data, "name", "")).startswith(FOLDER_PREFIX):
        return data, None
    mapping, message = class_mapping(model_classes, data, num_outputs)
    if not model_classes:
        return data, message
    known = [str(c) for c in model_classes]
    if every_class and len(set(mapping)) < len(known):
        missing = [c for i, c in enumerate(known) if i not in set(mapping)]
        raise DomainlockError(f"{data.name} has {len(set(mapping))} of the model's {len(known)} classes (missing "
                              f"{', '.join(map(repr, missing[:5]))}{', ...' if len(missing) > 5 else ''}); the "
                              "fine-tuning attack needs images of every class the model outputs")
    if mapping == list(range(len(known))):
        return data, message
    from .data import DomainData

    y = torch.tensor(mapping, dtype=torch.int64)[data.y]
    return DomainData(data.name, data.split, data.x, y, len(known), known), message


class ClassAligner:
    """A domain loader ``(name, split, root) -> DomainData`` whose folder domains come back mapped onto the
    model's outputs (:func:`align_classes`); ``notes`` collects each mapping message once."""

    def __init__(self, loader: Callable[..., Any], model_classes: Sequence[str] | None,
                 num_outputs: int | None = None, *, every_class: bool = False):
        self.loader, self.model_classes, self.num_outputs = loader, model_classes, num_outputs
        self.every_class = every_class
        self.notes: list[str] = []

    def __call__(self, name: Any, split: str = "train", root: Any = None) -> Any:
        data, note = align_classes(self.loader(name, split, root), self.model_classes, self.num_outputs,
                                   every_class=self.every_class)
        if note is not None and note not in self.notes:
            self.notes.append(note)
        return data


def evaluate(model: Any, domains: Sequence[Any], split: str = "test", data_root: Any = None,
             device: str | torch.device = "auto", batch_size: int = EVAL_BATCH, classes: Sequence[str] | None = None
             ) -> dict[str, dict[str, Any]]:
    """Accuracy per domain: ``{name: {"accuracy", "n", "chance", "split"}}`` (chance = 1 / num_classes).

    ``model``: a module or an :class:`~domainlock.artifact.Artifact` (whose card gives ``classes``).
    ``domains`` are names for ``domainlock.data.load_domain`` (split ``split``) or loaded ``DomainData``.
    ``classes``: the model's output names; a folder domain is mapped onto them (:func:`align_classes`) and its
    result adds ``class_mapping`` (folder class -> output) and ``note`` (the mapping in words).
    A model holding NaN/inf, a domain with fewer than 2 classes or fewer samples than classes is refused.
    """
    from .data import require_classes
    from .models import check_finite_weights

    card_classes, outputs = output_classes(model)
    classes = list(classes) if classes is not None else card_classes
    model = getattr(model, "model", model) if not isinstance(model, nn.Module) else model
    check_finite_weights(model)
    results: dict[str, dict[str, Any]] = {}
    for d in domains:
        data = require_classes(_load(d, split, data_root))
        name = d if isinstance(d, str) else str(getattr(data, "name", f"domain{len(results)}"))
        extra: dict[str, Any] = {}
        if str(getattr(data, "name", "")).startswith(FOLDER_PREFIX):
            mapping, note = class_mapping(classes, data, outputs)
            extra = {"class_mapping": dict(zip(map(str, data.classes), mapping, strict=True)), "note": note}
            data, _ = align_classes(data, classes, outputs)
        num_classes = int(getattr(data, "num_classes", 0) or (int(data.y.max()) + 1 if len(data.y) else 1))
        results[name] = {"accuracy": accuracy(model, data, batch_size, device), "n": int(len(data.y)),
                         "chance": 1.0 / num_classes, "split": str(getattr(data, "split", split)),
                         "shape": list(data.x.shape[1:]), **extra}
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
