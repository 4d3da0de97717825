"""Run a registered attack on a model and score what it recovers.

:func:`run_attack` builds the attacker's :class:`~domainlock.attacks.base.AttackAccess` from the attack's threat
model, hands the attack a private copy of the model (or, for a black-box attacker, a query-only view), and
then — as the evaluator, not the attacker — measures the attacked model's accuracy on the target and source
*test* splits.
"""

from __future__ import annotations

import copy
import dataclasses
import time
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn

from ..utils.layout import to_channels_last, to_contiguous
from .base import AttackAccess, AttackContext, QueryOnly
from .registry import get_attack


@dataclass
class AttackReport:
    """One attack on one model: the attacked model, its target (and source) test accuracy, what it read."""

    attack: str
    model: nn.Module
    target: str
    target_acc: float
    source: str | None
    source_acc: float | None
    threat: str
    reads: list[str]
    params: dict[str, Any]
    wall_s: float
    info: dict[str, Any] = field(default_factory=dict)

    def as_dict(self) -> dict[str, Any]:
        return {f.name: getattr(self, f.name) for f in dataclasses.fields(self) if f.name != "model"}


def run_attack(model: Any, attack: str, *, target: str, source: str | None = None, other: str | None = None,
               params: Any = None, data_root: Any = None, device: str | torch.device = "auto", seed: int = 0,
               loader=None, progress: bool = False) -> AttackReport:
    """Attack ``model`` (a module, an artifact or its path) with the registered ``attack``; see the module
    docstring. ``params``: the attack's ``Params`` dataclass (defaults when ``None``). ``loader`` replaces the
    data loader of the attacker's door (tests use it to prove what an attack reads)."""
    from ..artifact import model_of
    from ..evaluation import accuracy
    from ..utils.runtime import resolve_device, seed_everything

    att = get_attack(attack)
    params = params if params is not None else att.Params()
    threat = att.threat(params)
    access = AttackAccess(threat, target=target, source=source, other=other, data_root=data_root, seed=seed,
                          loader=loader)
    dev = resolve_device(device) if isinstance(device, str) else torch.device(device)
    victim = to_channels_last(copy.deepcopy(model_of(model)).to(dev).eval())   # a private copy: faster convolutions
    seed_everything(seed)
    t0 = time.perf_counter()
    out = att.run(victim if threat.white_box else QueryOnly(victim, dev), access, params,
                  AttackContext(dev, seed, progress))
    wall = time.perf_counter() - t0
    if loader is None:
        from ..data import load_domain as loader
    attacked = out.model.to(dev).eval()
    to_contiguous(attacked)
    t_acc = accuracy(attacked, loader(target, "test", data_root), device=dev)
    s_acc = accuracy(attacked, loader(source, "test", data_root), device=dev) if source is not None else None
    return AttackReport(attack, attacked, target, t_acc, source, s_acc, threat.describe(), list(access.reads),
                        dataclasses.asdict(params), round(wall, 3), out.info)
