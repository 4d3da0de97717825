"""Attacks on a protected model (METHODS.md §4) behind one contract (:mod:`.base`: threat models and the
attacker's data door), a registry (:mod:`.registry`) and :func:`run_attack` (:mod:`.run`); the fine-tuning
attack and its SLC-AUC learning curves (:mod:`.finetune`, :mod:`.slc`) and its family: source fine-tuning
(:mod:`.source_ft`), mask and rescale removal (:mod:`.mask_reset`), the attacker's own search
(:mod:`.finetune_search`), TransNTL's corruption-consistency recovery from source data with adaptive SAM
(:mod:`.transntl`, :mod:`.sam`); source-free domain adaptation on unlabelled target images (:mod:`.sfda`: SHOT,
NRC, AaD); model stealing by black-box distillation (:mod:`.distill`); test-time input disguising, weights
untouched (:mod:`.disguise`, JailNTL)."""

from .base import Attack, AttackAccess, AttackAccessError, AttackContext, AttackOutcome, QueryOnly, ThreatModel
from .finetune import (
    BN_MODES,
    SELECTIONS,
    STRATEGIES,
    AttackProtocol,
    FinetuneResult,
    check_classes,
    check_split,
    finetune_attack,
    recalibrate_bn,
    scratch_like,
)
from .registry import attack_names, get_attack, get_attack_class, register_attack
from .run import AttackReport, run_attack
from .sampling import SampleCountError, sample_per_class, split_holdout, stratified_fraction

__all__ = [
    "BN_MODES", "SELECTIONS", "STRATEGIES", "Attack", "AttackAccess", "AttackAccessError", "AttackContext",
    "AttackOutcome", "AttackProtocol", "AttackReport", "FinetuneResult", "QueryOnly", "SampleCountError",
    "ThreatModel", "attack_names", "check_classes", "check_split", "finetune_attack", "get_attack",
    "get_attack_class", "recalibrate_bn", "register_attack", "run_attack", "sample_per_class", "scratch_like",
    "split_holdout", "stratified_fraction",
]
