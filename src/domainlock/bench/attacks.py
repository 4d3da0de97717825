"""The attacks a suite can run, as the benchmark engine sees them.

An attack kind turns one starting model (the protected one, the unprotected source model, or, when the attack
needs a reference, the same architecture from random initialization: ``scratch``) into a result, one node of
the benchmark graph each; :meth:`AttackKind.cell` combines the protected, unprotected and reference results of
one (method, pair, seed) into the row's figures, whose headline is
:func:`~domainlock.metrics.recovery.recovery`.
"""

from __future__ import annotations

import dataclasses
from abc import ABC, abstractmethod
from dataclasses import dataclass, field
from typing import Any, ClassVar

from ..errors import DomainlockError
from ..metrics.recovery import recovery
from ..utils.hparams import dataclass_from_dict


class AttackKind(ABC):
    """One kind of attack: its parameters, what one start yields, and how a row is assembled."""

    kind: ClassVar[str]
    Params: ClassVar[type]
    needs_scratch: ClassVar[bool] = False
    reads_source: ClassVar[bool] = False    #: its nodes name the pair's source domain (in their key too)

    def parse_params(self, obj: Any, where: str) -> Any:
        return dataclass_from_dict(self.Params, obj, where)

    @abstractmethod
    def run(self, model: Any, target: str, seed: int, params: Any, *, source: str | None, from_scratch: bool,
            data_root: Any, device: str, cache_dir: Any, other: str | None = None) -> dict[str, Any]:
        """Attack one start (``from_scratch``: a random-init copy of ``model``); return JSON-able figures."""

    @abstractmethod
    def cell(self, protected: dict[str, Any], unprotected: dict[str, Any], scratch: dict[str, Any] | None,
             direct: dict[str, float], params: Any) -> dict[str, Any]:
        """The row's figures. ``direct``: target test accuracy without attack, keys ``protected`` and
        ``unprotected``."""


@dataclass
class FinetuneParams:
    """The fine-tuning attack with ``n`` labelled target samples at every ``n`` in ``shots`` (METHODS.md §4.2)."""

    strategy: str = field(default="reinit-head+all", metadata={"help": "what the attacker trains"})
    masked: bool = field(default=False, metadata={"help": "hold exactly-zero weights at zero"})
    shots: list = field(default_factory=lambda: [10, 20, 50, 100, 200, 500, 1000],
                        metadata={"help": "strictly increasing sample counts"})
    report_n: int = field(default=0, metadata={
        "help": "n whose accuracy is the row's 'after attack' figure (0: the largest n <= 100 in shots)"})
    protocol: dict = field(default_factory=dict, metadata={"help": "AttackProtocol overrides"})

    def __post_init__(self) -> None:
        from ..attacks import STRATEGIES
        from ..errors import check_choice
        from ..metrics import check_shots

        check_choice("strategy", self.strategy, STRATEGIES)
        self.shots = check_shots(self.shots)
        if self.report_n == 0:
            self.report_n = max([n for n in self.shots if n <= 100] or self.shots[:1])
        if self.report_n not in self.shots:
            raise DomainlockError(f"report_n={self.report_n} is not one of shots {self.shots}")


class Finetune(AttackKind):
    """Learning curves of :func:`~domainlock.attacks.finetune.finetune_attack` and their SLC-AUC."""

    kind = "finetune"
    Params = FinetuneParams
    needs_scratch = True

    def parse_params(self, obj: Any, where: str) -> FinetuneParams:
        from ..attacks import AttackProtocol

        params = dataclass_from_dict(FinetuneParams, obj, where)
        protocol = dataclass_from_dict(AttackProtocol, params.protocol, f"{where}.protocol")
        params.protocol = dataclasses.asdict(protocol)
        return params

    def run(self, model, target, seed, params, *, source, from_scratch, data_root, device, cache_dir, other=None):
        from ..attacks import AttackProtocol
        from ..attacks.slc import PointCache, learning_curve
        from ..data import load_domain

        train, test = load_domain(target, "train", data_root), load_domain(target, "test", data_root)
        curve = learning_curve(model, train, test, params.shots, strategy=params.strategy, masked=params.masked,
                               protocol=AttackProtocol(**params.protocol), seeds=(seed,),
                               from_scratch=from_scratch, target_name=target, device=device,
                               cache=PointCache(cache_dir) if cache_dir else None)
        return {"shots": curve.shots, "accuracy": curve.accuracy,
                "points": [{k: p[k] for k in ("n", "accuracy", "steps", "zeros_before", "zeros_after", "wall_s")
                            if k in p} for p in curve.points]}

    def cell(self, protected, unprotected, scratch, direct, params):
        from ..metrics.slc_auc import slc_auc

        assert scratch is not None
        shots = protected["shots"]
        i = shots.index(params.report_n)
        score = slc_auc(shots, protected["accuracy"], scratch["accuracy"])
        ref = slc_auc(shots, unprotected["accuracy"], scratch["accuracy"])
        after = protected["accuracy"][i]
        return {"target_acc_after_attack": after, "report_n": params.report_n,
                "recovery": recovery(after, direct["protected"], direct["unprotected"]),
                "slc_auc": score.normalized, "slc_auc_raw": score.raw, "unprotected_slc_auc": ref.normalized,
                "curves": {"shots": shots, "protected": protected["accuracy"], "scratch": scratch["accuracy"],
                           "unprotected": unprotected["accuracy"]},
                "zeros_before": protected["points"][0].get("zeros_before") if protected["points"] else None}


class Registered(AttackKind):
    """Any registered attack (:mod:`domainlock.attacks.registry`) but ``finetune``: one run per start, scored by
    :func:`~domainlock.attacks.run_attack` on the target and source test splits."""

    reads_source = True

    def __init__(self, name: str):
        from ..attacks import get_attack_class

        self.kind = name
        self.Params = get_attack_class(name).Params

    def run(self, model, target, seed, params, *, source, from_scratch, data_root, device, cache_dir, other=None):
        from ..attacks import run_attack

        rep = run_attack(model, self.kind, target=target, source=source, other=other, params=params,
                         data_root=data_root, device=device, seed=seed)
        return {"target_acc": rep.target_acc, "source_acc": rep.source_acc, "reads": rep.reads,
                "threat": rep.threat, "info": rep.info}

    def cell(self, protected, unprotected, scratch, direct, params):
        after = protected["target_acc"]
        return {"target_acc_after_attack": after, "source_acc_after": protected["source_acc"],
                "recovery": recovery(after, direct["protected"], direct["unprotected"]),
                "unprotected_acc_after_attack": unprotected["target_acc"], "threat": protected["threat"]}


#: the fine-tuning attack's learning curves; every other registered attack runs through :class:`Registered`
ATTACK_KINDS: dict[str, type[AttackKind]] = {Finetune.kind: Finetune}


def attack_kinds() -> list[str]:
    """Every ``kind`` a suite's attack may name."""
    from ..attacks import attack_names

    return sorted(set(ATTACK_KINDS) | set(attack_names()))


def attack_kind(kind: str) -> AttackKind:
    from ..errors import check_choice

    check_choice("attack", kind, attack_kinds())
    return ATTACK_KINDS[kind]() if kind in ATTACK_KINDS else Registered(kind)
