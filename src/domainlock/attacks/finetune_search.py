"""The attacker's own hyper-parameters (METHODS.md §4.9): the fine-tuning attack with a learning rate and an
optimizer the attacker picks for itself, so that a protection is scored at the attacker's choice and not at
the protocol most favourable to the defence.

The attacker holds ``n`` labelled target samples and nothing else. It holds out a share of them per class
(:func:`~.sampling.split_holdout`), fine-tunes a copy of the model on the rest at every grid point ``g =
(optimizer, lr, lr_pretrained)`` with the fine-tuning attack (:mod:`.finetune`) and picks

    g* = argmax_g  acc(f_g, H)   (ties: the lower cross-entropy on H, then the earlier grid point)

on its held-out share ``H``. A grid point whose loss diverges is out. Then (``select = last``, default) it
fine-tunes again on all ``n`` samples at ``g*`` and keeps the last step; with ``select = holdout`` it keeps
the pick's own model, trained on the rest. Target test labels are never read; the pick and every grid
point's held-out score are reported in ``info``.

The grid: the protocol's own point (``optimizer``, ``lr``, ``lr_pretrained``) first, then every optimizer
in ``optimizers`` at every rate of its list (``lrs`` for SGD, ``adam_lrs`` for Adam/AdamW), each rate being
that of freshly initialized weights, the inherited ones getting ``rate · lr_pretrained / lr``.

Why the defaults:

* ``lrs = 0.003,0.01,0.05`` (SGD) and ``adam_lrs = 0.0003,0.001,0.003``: around the protocol's 0.05 and
  a decade below; Adam moves every weight by about its rate per step, so it needs ten times less.
* Inherited weights keep the protocol's ratio (0.003 / 0.05): a uniform high rate wipes inherited features
  (measured in :class:`~.finetune.AttackProtocol`).
* Retrain on all ``n`` after the pick: at small ``n`` a 20 % held-out share is too much data to give up.
* ``holdout = 0.2`` per class (at least one sample): the search needs ``n >= 2 C``.
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass, field
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from ..errors import DomainlockError, TrainingDivergedError, check_choice
from ..training.loop import OPTIMIZERS
from .base import Attack, AttackOutcome, ThreatModel
from .finetune import SELECTIONS, FinetuneParams, check_split, finetune_attack
from .registry import register_attack
from .sampling import split_holdout


def parse_rates(name: str, text: str) -> list[float]:
    """``"0.003,0.01"`` -> ``[0.003, 0.01]``; a one-line error naming ``name`` unless every entry is a positive
    finite number and there is at least one."""
    try:
        rates = [float(t) for t in str(text).split(",") if t.strip()]
    except ValueError:
        rates = []
    if not rates or not all(math.isfinite(r) and r > 0 for r in rates):
        raise DomainlockError(f"{name}={text!r} must be a comma-separated list of positive learning rates, "
                              "e.g. '0.003,0.01,0.05'")
    return rates


def parse_optimizers(text: str) -> list[str]:
    names = [t.strip() for t in str(text).split(",") if t.strip()]
    if not names:
        raise DomainlockError(f"optimizers={text!r} must name at least one of: {', '.join(OPTIMIZERS)}")
    return [check_choice("optimizer", o, OPTIMIZERS) for o in names]


@dataclass
class FinetuneSearchParams(FinetuneParams):
    """The fine-tuning attack whose learning rate and optimizer the attacker picks on its own held-out share."""

    select: str = field(default="last", metadata={
        "help": "after the pick: retrain on all n samples and keep the last step (last), or keep the pick's own "
                "model, trained on the samples not held out (holdout)", "choices": list(SELECTIONS)})
    holdout: float = field(default=0.2, metadata={"help": "share of each class's samples held out for the pick"})
    optimizers: str = field(default="sgd,adam", metadata={
        "help": f"optimizers the attacker tries (comma-separated; of {', '.join(OPTIMIZERS)})"})
    lrs: str = field(default="0.003,0.01,0.05", metadata={
        "help": "SGD learning rates of fresh weights to try (comma-separated); inherited weights get "
                "rate * lr_pretrained / lr"})
    adam_lrs: str = field(default="0.0003,0.001,0.003", metadata={
        "help": "Adam/AdamW learning rates of fresh weights to try (comma-separated)"})

    def __post_init__(self) -> None:
        super().__post_init__()
        self.grid()

    def grid(self) -> list[tuple[str, float, float]]:
        """``(optimizer, lr, lr_pretrained)`` points in search order, the protocol's own point first."""
        ratio = self.lr_pretrained / self.lr
        sgd, adam = parse_rates("lrs", self.lrs), parse_rates("adam_lrs", self.adam_lrs)
        points = [(self.optimizer, self.lr, self.lr_pretrained)]
        for opt in parse_optimizers(self.optimizers):
            points += [(opt, r, r * ratio) for r in (sgd if opt == "sgd" else adam)]
        out: list[tuple[str, float, float]] = []
        for opt, lr, lrp in points:
            key = (opt, float(f"{lr:.6g}"), float(f"{lrp:.6g}"))
            if key not in out:
                out.append(key)
        return out


@torch.no_grad()
def _score(model: nn.Module, data: Any, device: torch.device, batch: int = 512) -> tuple[float, float]:
    """``(accuracy, mean cross-entropy)`` of ``model`` on ``data`` (eval mode)."""
    model.eval()
    correct, loss = 0, 0.0
    for i in range(0, len(data.y), batch):
        logits = model(data.x[i:i + batch].to(device)).float()
        y = data.y[i:i + batch].to(device)
        correct += int((logits.argmax(1) == y).sum())
        loss += float(F.cross_entropy(logits, y, reduction="sum"))
    return correct / len(data.y), loss / len(data.y)


@register_attack
class FinetuneSearch(Attack):
    name = "finetune-search"
    summary = "fine-tune on n target samples at the learning rate and optimizer the attacker picks on its own " \
              "held-out share"
    example = "domainlock attack finetune-search --model runs/sa-map --target syn --n 100 --optimizers sgd,adam"
    Params = FinetuneSearchParams

    def threat(self, params: FinetuneSearchParams) -> ThreatModel:
        return ThreatModel(target_labelled=params.n)

    def run(self, model, access, params, ctx):
        check_split(model)
        data = access.target_labelled()
        split = split_holdout(data.y, params.holdout, ctx.seed)
        if split is None:
            k = int(getattr(data, "num_classes", 0) or int(data.y.max()) + 1)
            raise DomainlockError(f"n={params.n} leaves a class with 1 sample; the search holds some out, so it "
                                  f"needs at least 2 per class (n >= {2 * k})")
        train, hold = data.subset(split[0]), data.subset(split[1])
        base = dataclasses.replace(params.protocol(), select="last")
        rows, best, best_model = [], None, None
        for opt, lr, lrp in params.grid():
            proto = dataclasses.replace(base, optimizer=opt, lr=lr, lr_pretrained=lrp)
            row: dict[str, Any] = {"optimizer": opt, "lr": lr, "lr_pretrained": lrp}
            try:
                r = finetune_attack(model, train, len(train), params.strategy, params.masked, proto, ctx.seed,
                                    device=ctx.device, sample=torch.arange(len(train)), progress=ctx.progress)
                acc, loss = _score(r.model, hold, ctx.device)
            except TrainingDivergedError:
                acc, loss = None, math.inf
            row.update(holdout_acc=acc, holdout_loss=round(loss, 5) if math.isfinite(loss) else None,
                       diverged=acc is None or not math.isfinite(loss))
            rows.append(row)
            if not row["diverged"] and (best is None or (acc, -loss) > (best[0], -best[1])):
                best, best_model = (acc, loss, proto, len(rows) - 1), r.model
        if best is None:
            raise DomainlockError(f"every grid point diverged ({len(rows)} tried); lower lrs={params.lrs!r} / "
                                  f"adam_lrs={params.adam_lrs!r}")
        pick = {k: rows[best[3]][k] for k in ("optimizer", "lr", "lr_pretrained", "holdout_acc")}
        if params.select == "last":
            r = finetune_attack(model, data, len(data), params.strategy, params.masked, best[2], ctx.seed,
                                device=ctx.device, sample=torch.arange(len(data)), progress=ctx.progress)
            out_model, final = r.model, {k: v for k, v in r.as_dict().items() if k != "accuracy"}
        else:
            out_model, final = best_model, {"n": len(data), "n_train": len(train)}
        info = {"pick": pick, "grid": rows, "search_train": len(train), "search_holdout": len(hold),
                "kept": "retrained on all n" if params.select == "last" else "the pick's model", **final}
        return AttackOutcome(out_model, info)
