"""Source fine-tuning (NTLBench "SourceFT", METHODS.md §4.3): does target ability come back when someone
who holds labelled *source* data fine-tunes the protected model on it?

The attacker (an owner-side insider, a licensee) holds a stratified fraction ``p`` of the labelled source
train split and fine-tunes with one of the four strategies of the fine-tuning attack (:mod:`.finetune`,
whose training loop it reuses with the source subset as its data): it minimizes

    L(θ) = E_{(x, y) ~ p·D_S} CE(f_θ(x), y)

and is scored, like every attack, on the *target* test split (and the source one). It never sees a target
label: its checkpoint is the best epoch on its own held-out share of the source samples (NTLBench picks by
target validation accuracy, an oracle not copied here).

Why the defaults (NTLBench's protocol unless said otherwise):

* ``p = 0.1``: NTLBench's SourceFT fraction.
* SGD, ``lr_pretrained = 1e-4``, momentum 0.9, weight decay 1e-4, batch 32, constant rate: NTLBench's
  optimizer (the library's SGD is Nesterov; the difference is negligible at this rate).
* ``lr = 0.01``, used only by a re-initialized head: at 1e-4 a random head would barely leave its init.
* ``epochs = 30``, ``steps = 300``: 30 passes over 10 % of a digits source (~700 images) are ~500 steps,
  about half the source model's own training; ``steps`` keeps a smaller ``p`` from getting a few dozen.
* ``augment = none``, ``strategy = all``: NTLBench fine-tunes every layer on plain images.
* ``select = holdout`` (20 % per class): the attacker's own model selection, never target labels.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch

from ..data.augment import AUGMENTS
from ..errors import check_choice, check_range
from ..training.loop import SCHEDULES
from .base import Attack, AttackOutcome, ThreatModel
from .finetune import SELECTIONS, STRATEGIES, AttackProtocol, finetune_attack
from .registry import register_attack


@dataclass
class SourceFTParams(AttackProtocol):
    """Source fine-tuning: a fraction ``p`` of the labelled source train split, a strategy, the protocol."""

    steps: int = field(default=300, metadata={"help": "minimum optimizer steps"})
    epochs: int = field(default=30, metadata={"help": "minimum passes over the attacker's source samples"})
    lr: float = field(default=0.01, metadata={"help": "learning rate of a re-initialized head (fresh weights)"})
    lr_pretrained: float = field(default=1e-4, metadata={
        "help": "learning rate of the weights inherited from the attacked model (NTLBench: 1e-4)"})
    weight_decay: float = field(default=1e-4, metadata={"help": "weight decay (NTLBench: 1e-4)"})
    schedule: str = field(default="constant", metadata={"help": "learning-rate schedule (per step)",
                                                        "choices": list(SCHEDULES)})
    augment: str = field(default="none", metadata={"help": "augmentation preset of the attacker",
                                                   "choices": list(AUGMENTS)})
    select: str = field(default="holdout", metadata={
        "help": "checkpoint the attacker keeps: the best epoch on its held-out share of the source samples, or "
                "the last step", "choices": list(SELECTIONS)})
    p: float = field(default=0.1, metadata={"help": "fraction of the labelled source train split the attacker "
                                                    "holds (stratified, in (0, 1])"})
    strategy: str = field(default="all", metadata={"help": "what the attacker trains", "choices": list(STRATEGIES)})

    def __post_init__(self) -> None:
        super().__post_init__()
        check_range("p", self.p, 0.0, 1.0, low_open=True)
        check_choice("strategy", self.strategy, STRATEGIES)


@register_attack
class SourceFT(Attack):
    name = "source-ft"
    summary = "fine-tune on a fraction p of the labelled source data (NTLBench SourceFT); does the target return?"
    example = "domainlock attack source-ft --model runs/sa-map --source mnist --target syn --p 0.1"
    Params = SourceFTParams

    def threat(self, params: SourceFTParams) -> ThreatModel:
        return ThreatModel(source_fraction=params.p)

    def run(self, model, access, params, ctx):
        data = access.source_labelled()
        r = finetune_attack(model, data, len(data), params.strategy, False, params.protocol(), ctx.seed,
                            device=ctx.device, sample=torch.arange(len(data)), progress=ctx.progress)
        info = {k: v for k, v in r.as_dict().items() if k not in ("accuracy", "n", "masked", "from_scratch")}
        return AttackOutcome(r.model, {"p": params.p, "source_samples": len(data), **info})
