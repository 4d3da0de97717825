"""Hyper-parameters of the learnable weight masks (MAP, METHODS.md section 1).

Every field carries ``metadata['help']`` so :func:`domainlock.utils.hparams.add_dataclass_args` turns
it into a CLI flag. Fields are plain ``float``/``bool``/``str`` (no ``Optional``) so they map onto
flags one to one: "off" is spelled with a neutral value (``max_sparsity=1.0``, ``l1=0.0``, ``""``).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

from domainlock.errors import DomainlockError, check_choice, check_range

#: Layer kinds that can be masked. ``conv``: every ``nn.Conv*``/``nn.ConvTranspose*``;
#: ``linear``: ``nn.Linear`` (incl. initialized lazy ones); ``bn``: the affine weight of every
#: ``nn.BatchNorm*``/``SyncBatchNorm``; ``norm``: the affine weight of GroupNorm, LayerNorm and
#: InstanceNorm layers.
LAYER_KINDS = ("conv", "linear", "bn", "norm")
SCOPES = ("global", "per-layer")
INIT_MODES = ("constant", "magnitude")


def _split(value: object) -> tuple[str, ...]:
    """``"a, b"`` or ``["a", "b"]`` -> ``("a", "b")`` (empty items dropped)."""
    if isinstance(value, str):
        items = value.split(",")
    else:
        items = [str(v) for v in value]  # type: ignore[union-attr]
    return tuple(s.strip() for s in items if s.strip())


@dataclass
class MaskConfig:
    """How :class:`~domainlock.masking.MaskedModel` masks a frozen model.

    The mask of a weight tensor W with score tensor s is ``m = 1[s >= threshold]`` (optionally capped by
    ``max_sparsity``); the forward pass uses ``W * m`` and the backward pass hands ``dL/dm`` straight
    to ``s`` (straight-through estimator).

    Defaults and why (reconstructed details, METHODS.md section 1): ``threshold=0`` and
    ``init_score=1`` give every score a margin of 1 above the threshold, so the masked model equals the
    source model exactly at step 0. With Adam each score moves by roughly ``lr`` per step, so the first
    weights can be pruned only after about ``(init_score - threshold) / lr`` steps (100 steps at
    ``lr=1e-2``) and then many go at once (the "burst" METHODS.md warns about). A larger margin delays
    the burst; ``init_mode="magnitude"`` spreads the initial scores so small weights reach the threshold
    first and the burst is smoothed.

    ``scope`` says how the two optional sparsity controls pool layers:

    * ``max_sparsity`` (budget, 1.0 = off): at most this fraction of the masked weights may be pruned.
      ``global``: counted over all masked tensors together (some layers may be pruned much more than
      others); ``per-layer``: each tensor separately. When more scores than the budget are below the
      threshold, the highest of them are kept. Adds one ``kthvalue`` over the scores per forward pass.
    * ``l1`` (0.0 = off): :meth:`MaskedModel.score_penalty` returns ``l1 * density`` of the mask
      (fraction of weights kept); through the straight-through estimator it pushes every score down at
      the same rate. ``global``: density over all masked weights (large layers dominate);
      ``per-layer``: the mean of the per-tensor densities (every layer counts the same).

    ``scope`` has no effect when both are off.
    """

    threshold: float = field(default=0.0, metadata={"help": "mask threshold tau: a weight is kept while "
                                                     "its score s >= tau"})
    init_score: float = field(default=1.0, metadata={
        "help": "initial score (must be > threshold so the masked model starts equal to the source); "
                "Adam needs about (init_score - threshold)/lr steps before the first weight is pruned"})
    init_mode: str = field(default="constant", metadata={
        "help": "constant: every score starts at init_score; magnitude: tau + (init_score - tau) * "
                "|W| / mean|W| per tensor, so small weights reach tau first", "choices": INIT_MODES})
    layers: str = field(default="conv,linear", metadata={
        "help": f"comma-separated layer kinds whose weight is masked, from {','.join(LAYER_KINDS)}"})
    include_bn: bool = field(default=False, metadata={
        "help": "also mask the affine weight (gamma) of BatchNorm layers (same as adding 'bn' to layers)"})
    include_bias: bool = field(default=False, metadata={"help": "also mask the biases of masked layers"})
    include: str = field(default="", metadata={
        "help": "comma-separated fnmatch patterns on module names (e.g. 'encoder.*'): when given, only "
                "matching modules are masked"})
    exclude: str = field(default="", metadata={
        "help": "comma-separated fnmatch patterns on module names to leave unmasked (e.g. 'head,head.*')"})
    exclude_first: bool = field(default=False, metadata={
        "help": "leave the first Conv/Linear layer (registration order; usually the stem conv) unmasked"})
    exclude_last: bool = field(default=False, metadata={
        "help": "leave the last Conv/Linear layer (registration order; usually the classifier) unmasked"})
    scope: str = field(default="global", metadata={
        "help": "how max_sparsity and l1 pool layers: global (all masked weights together) or "
                "per-layer (each tensor separately)", "choices": SCOPES})
    max_sparsity: float = field(default=1.0, metadata={
        "help": "budget: at most this fraction of masked weights may be pruned (1.0 = no cap)"})
    l1: float = field(default=0.0, metadata={
        "help": "coefficient of the L1 pull on the mask (score_penalty() = l1 * mask density; 0 = off)"})

    def __post_init__(self) -> None:
        for name in ("threshold", "init_score", "max_sparsity", "l1"):
            v = getattr(self, name)
            if not isinstance(v, int | float) or isinstance(v, bool) or not math.isfinite(v):
                raise DomainlockError(f"{name}={v!r} must be a finite number")
        if not self.init_score > self.threshold:
            raise DomainlockError(
                f"init_score={self.init_score!r} must be above threshold={self.threshold!r} so the masked "
                "model equals the source model at step 0")
        check_choice("mask init mode", self.init_mode, INIT_MODES)
        check_choice("mask scope", self.scope, SCOPES)
        check_range("max_sparsity", self.max_sparsity, 0.0, 1.0)
        check_range("l1", self.l1, 0.0, math.inf)
        # Normalize list-valued fields given as sequences from Python code.
        for name in ("layers", "include", "exclude"):
            setattr(self, name, ",".join(_split(getattr(self, name))))
        for kind in self.layer_kinds:
            check_choice("layer kind", kind, LAYER_KINDS)
        if not self.layer_kinds:
            raise DomainlockError(f"layers={self.layers!r} names no layer kind; choose from "
                                  f"{', '.join(LAYER_KINDS)}")

    @property
    def layer_kinds(self) -> tuple[str, ...]:
        """The layer kinds to mask, ``include_bn`` folded in."""
        kinds = _split(self.layers)
        if self.include_bn and "bn" not in kinds:
            kinds = (*kinds, "bn")
        return kinds

    @property
    def include_patterns(self) -> tuple[str, ...]:
        return _split(self.include)

    @property
    def exclude_patterns(self) -> tuple[str, ...]:
        return _split(self.exclude)
