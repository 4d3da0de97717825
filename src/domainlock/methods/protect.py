"""``protect()``: run any registered method under the contract and write a standard artifact.

It evaluates the model before and after on the source, the target and any extra domains (test splits,
true labels: the evaluation is the toolkit's, not the method's, and never feeds back into it), computes
ST-D, the sparsity of the result and the wall time, and records what data the method was allowed to read
and what the target was used for (``target_use``: "evaluation only" when the setting or the method's
hyper-parameters keep the method from reading it, see :meth:`~domainlock.methods.base.Method.reads_target`).
"""

from __future__ import annotations

import copy
import math
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from torch import nn

from ..errors import DomainlockError
from .base import SETTINGS, DataAccess, RunContext, hparams_dict
from .registry import get_method


@dataclass
class Protected:
    model: nn.Module
    card: dict[str, Any]
    path: Path | None = None
    notices: list[str] = field(default_factory=list)   # for the user: weights converted, folder class mapping
    extras: dict[str, Any] = field(default_factory=dict)   # the method's by-products (MethodResult.extras)


def weight_sparsity(model: nn.Module) -> dict[str, Any]:
    """Fraction of exactly-zero weights in conv and linear layers, per layer and global."""
    layers, zeros, total = {}, 0, 0
    for name, mod in model.named_modules():
        if isinstance(mod, nn.Conv1d | nn.Conv2d | nn.Conv3d | nn.Linear):
            w = mod.weight.detach()
            z = int((w == 0).sum())
            layers[name] = {"numel": w.numel(), "zeros": z, "sparsity": z / w.numel()}
            zeros, total = zeros + z, total + w.numel()
    return {"global": zeros / total if total else 0.0, "layers": layers}


def protect(model: Any, method: str, *, source: str, target: str | None = None, setting: str | None = None,
            hparams: Any = None, eval_domains: list[str] | None = None, data_root=None, device: str = "auto",
            seed: int = 0, progress: bool = True, out: str | Path | None = None, overwrite: bool = False,
            loader=None) -> Protected:
    """Protect ``model`` (a module, an :class:`~domainlock.artifact.Artifact` or an artifact path).

    ``eval_domains`` are extra domains to report (e.g. the unseen digit domains). ``loader`` replaces the
    data loader (tests use it to prove what a method reads). A folder domain's classes are mapped to the
    model's outputs (:func:`~domainlock.evaluation.align_classes`; the mapping is in ``notices``), and a model
    holding NaN/inf is refused.
    """
    from ..artifact import Artifact, load_artifact, save_artifact
    from ..evaluation import ClassAligner, output_classes
    from ..metrics import st_d
    from ..models import check_finite_weights
    from ..utils.io import check_output_path
    from ..utils.runtime import resolve_device, seed_everything

    m = get_method(method)
    setting = setting or m.settings[0]
    if setting not in SETTINGS:
        from ..errors import UnknownChoiceError
        raise UnknownChoiceError("setting", setting, SETTINGS)
    if setting not in m.settings:
        raise DomainlockError(f"method {method!r} does not support setting {setting!r}; "
                              f"valid: {', '.join(m.settings)}")
    if target is not None and target.strip() == source.strip():
        raise DomainlockError(f"target {target!r} equals source {source!r}: nothing to protect against")
    hp = hparams if hparams is not None else m.Hparams()
    m.validate(hp, setting)
    reads_target = setting != "data-free" and m.reads_target(hp)
    if m.needs_target and reads_target and target is None:
        raise DomainlockError(f"method {method!r} in setting {setting!r} needs --target")
    if out is not None:
        check_output_path(out, overwrite)   # fail before any work

    source_card: dict[str, Any] = {}
    if isinstance(model, str | Path):
        model = load_artifact(model)
    notices = list(getattr(model, "notices", None) or [])
    classes, outputs = output_classes(model)
    if isinstance(model, Artifact):
        source_card = {"path": str(model.path), "sha256": model.card.get("sha256"),
                       "arch": model.card.get("arch"), "domain": model.card.get("domain")}
        card_base = {k: model.card[k] for k in ("arch", "arch_kwargs", "num_classes", "normalization", "classes")
                     if k in model.card}
        model = model.model
    else:
        card_base = {k: getattr(model, k) for k in ("arch", "arch_kwargs") if hasattr(model, k)}
    check_finite_weights(model)
    dev = resolve_device(device)
    model = model.to(dev).eval()

    domains = [source] + ([target] if target else []) + [d for d in (eval_domains or [])
                                                         if d not in (source, target)]
    if loader is None:
        from ..data import load_domain as loader
    loader = ClassAligner(loader, classes, outputs)
    tests = {d: loader(d, "test", data_root) for d in domains}
    _check_image_size(tests)
    before = _accuracies(model, tests, dev)

    seed_everything(seed)
    ctx = RunContext(device=dev, seed=seed, progress=progress)
    refusal = None
    if not reads_target and setting != "data-free":
        refusal = m.target_refusal(hp) + (f"; the target domain {target!r} is used for evaluation only"
                                          if target is not None else "")
    access = DataAccess(setting, source, target, data_root, loader=loader, target_refusal=refusal)
    work = copy.deepcopy(model)
    t0 = time.perf_counter()
    result = m.run(work, access, hp, ctx)
    wall = time.perf_counter() - t0
    protected = result.model.to(dev).eval()
    for p in protected.parameters():   # a plain module, trainable like one loaded from its artifact
        p.requires_grad_(True)
    after = _accuracies(protected, tests, dev)

    acc = {d: {"before": before[d], "after": after[d]} for d in domains}
    std = None
    if target is not None:
        r = st_d(before[source], after[source], before[target], after[target],
                 chance=1.0 / tests[target].num_classes)
        std = {"st_d": None if math.isnan(r.st_d) else r.st_d, "retain_s": r.retain_s,
               "drop_t": None if math.isnan(r.drop_t) else r.drop_t, "trivial": r.trivial}
    card = {
        **card_base,
        "domain": source,
        "protection": {
            "method": method, "setting": setting, "source": source, "target": target,
            "hparams": hparams_dict(hp), "seed": seed, "wall_time_s": wall, "device": str(dev),
            "data_read": sorted(set(access.reads)),
            "target_use": _target_use(target, access),
            "accuracy_test": acc, "st_d": std, "sparsity": weight_sparsity(protected)["global"],
            "info": {**ctx.log, **result.info},
            "source_model": source_card,
        },
        "metrics": {"accuracy": dict(after)},
    }
    path = None
    if out is not None:
        from ..artifact import read_card

        path = save_artifact(out, protected.cpu(), card, overwrite=overwrite)
        card = read_card(path)
        protected.to(dev)
    return Protected(protected, card, path, notices + loader.notes, dict(result.extras))


def _target_use(target: str | None, access: DataAccess) -> str | None:
    """What the target domain was used for, in words (``None`` without a target)."""
    if target is None:
        return None
    if not access.target_allowed:
        return "evaluation only"
    if any(r.startswith("target:") for r in access.reads):
        return "method and evaluation"
    return "evaluation only (the method was allowed to read it but did not)"


def _accuracies(model: nn.Module, tests: dict, device) -> dict[str, float]:
    from ..evaluation import accuracy

    return {d: accuracy(model, data, device=device) for d, data in tests.items()}


def _check_image_size(tests: dict) -> None:
    shapes = {d: tuple(data.x.shape[1:]) for d, data in tests.items()}
    if len(set(shapes.values())) > 1:
        raise DomainlockError("domains have different image sizes: " +
                              ", ".join(f"{d}={'x'.join(map(str, s))}" for d, s in shapes.items()) +
                              "; resize them to the source model's input size")
