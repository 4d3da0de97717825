"""Hyper-parameters of MAP (:class:`MAPConfig`, one CLI flag per field; :class:`PseudoSourceMAPConfig` for
the settings that learn the mask on a pseudo-source) and their validation.

Why the non-obvious defaults are what they are, one line each (the measurements and the commands that
regenerate them: ``docs/design/map.md``):

* ``target_loss = garbage``: label-free, and it drives a target to about chance whether or not the source
  model's guesses were right; ``uniform`` and ``feature-collapse`` leave mnistm -> mnist at 97%.
* ``optimizer = nsgd``: per-entry Adam prunes in one burst that collapses the source
  (:mod:`~domainlock.methods.map.mask_learning`).
* ``source_ce = 1``: unlike the KL it has a gradient at step 0, so it shields the weights the source needs.
* ``alpha = 0.3``, ``lr = 3e-3``, ``steps = 600``: a weaker target term given more steps lets the source term
  repair what the cut costs, so the hardest pair (mnistm -> mnist) passes the guard with its target cut
  instead of falling back to the unmasked model.
* ``early_stop = 0.98``: easy pairs stop after a fraction of the 600 steps, hard ones use them all.
* ``val_size = 512``: mnistm -> mnist sits at the edge of ``guard_tol``; a larger held-out set only moves
  which seed misses it.
* :class:`PseudoSourceMAPConfig` (``alpha = 1``, ``lr = 1e-3``, ``steps = 200``, no early stop): on a
  pseudo-source the guard only watches agreement with the source model, a weak stand-in for the real
  source, so sf-map and df-map cut less (with the sa-map defaults the real source can collapse unseen).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field, fields

from ...data.augment import AUGMENTS
from ...errors import DomainlockError, check_choice, check_finite, check_integer, check_range
from ...masking import INIT_MODES, SCOPES, MaskConfig
from ...synthesis.source_style import STARTS
from ...utils.precision import PRECISIONS
from .restyle import RESTYLE

TARGET_LOSSES = ("garbage", "uniform", "feature-collapse", "pseudo-kl")
SELECTS = ("guard", "last")
SCHEDULES = ("constant", "cosine")
OPTIMIZERS = ("adam", "nsgd", "layer-adam")

#: MAPConfig fields that are MaskConfig fields (same name, same meaning).
_MASK_FIELDS = ("threshold", "init_score", "init_mode", "layers", "include_bn", "include_bias", "include",
                "exclude", "exclude_first", "exclude_last", "scope", "max_sparsity", "l1")


@dataclass
class MAPConfig:
    """Hyper-parameters of MAP (flat, so every field is a CLI flag). Why the defaults are what they are:
    the module docstring."""

    # -- objective
    target_loss: str = field(default="garbage", metadata={
        "help": "target damage D_T: garbage (all target predictions to one class), uniform (toward the "
                "uniform distribution), feature-collapse (target features onto their mean), pseudo-kl "
                "(the paper's KL from the source model's pseudo-labels; can raise target accuracy)",
        "choices": TARGET_LOSSES})
    alpha: float = field(default=0.3, metadata={"help": "weight alpha of the target term"})
    beta: float = field(default=5.0, metadata={
        "help": "cap beta on the target damage D_T (binds only for pseudo-kl; must be > 0)"})
    garbage_class: int = field(default=-1, metadata={
        "help": "class the garbage loss sends target images to (-1: the class the source model predicts "
                "least often on the target training images; no labels used)"})
    soft_pseudo: bool = field(default=False, metadata={
        "help": "pseudo-kl: use the source model's soft prediction instead of its one-hot argmax"})
    use_target_labels: bool = field(default=False, metadata={
        "help": "pseudo-kl: use the TRUE target labels instead of pseudo-labels (reads target labels)"})
    temperature: float = field(default=1.0, metadata={"help": "softmax temperature of the source KL term"})
    source_ce: float = field(default=1.0, metadata={
        "help": "weight of an extra cross-entropy to the source model's hard predictions on x_s (unlike the "
                "KL it has a gradient at step 0, so it shields the weights the source needs from the start)"})
    keep_restyle: str = field(default="none", metadata={
        "help": "also distill the source model on target images whose BatchNorm inputs are re-normalized to the "
                "running statistics (first: the first BN layer; all: every one; none: off), so the mask "
                "separates source from target by style (domainlock.methods.map.restyle)",
        "choices": ["none", "first", "all"]})
    keep_restyle_weight: float = field(default=1.0, metadata={"help": "weight of the keep_restyle term"})
    # -- optimization
    steps: int = field(default=600, metadata={"help": "mask-learning steps (0 = return the source model)"})
    batch_size: int = field(default=64, metadata={"help": "source images per step"})
    target_batch_size: int = field(default=0, metadata={"help": "target images per step (0 = batch_size)"})
    optimizer: str = field(default="nsgd", metadata={
        "help": "optimizer on the scores: adam (moves every score by about lr per step, so pruning comes "
                "in one burst), nsgd (SGD with momentum 0.9 on per-tensor RMS-normalized gradients: the "
                "weights with the largest gradient are pruned first)", "choices": OPTIMIZERS})
    lr: float = field(default=3e-3, metadata={"help": "learning rate on the mask scores"})
    momentum: float = field(default=0.9, metadata={"help": "nsgd momentum / Adam beta1"})
    score_floor: float = field(default=0.0, metadata={
        "help": "keep scores >= threshold - score_floor after every step, so a pruned weight "
                "the source needs can come back within a few steps (0 = no clamp)"})
    warmup: float = field(default=0.0, metadata={
        "help": "linear lr warm-up, as a fraction of the steps (softens the pruning burst)"})
    schedule: str = field(default="constant", metadata={
        "help": "lr schedule after warm-up", "choices": SCHEDULES})
    cooldown: float = field(default=0.0, metadata={
        "help": "constant schedule: decay the lr linearly to 0 over this final fraction of the steps "
                "(freezes the mask instead of leaving it flipping at the threshold)"})
    source_augment: str = field(default="none", metadata={
        "help": "augmentation preset for the source batches (colour presets make the source look like "
                "colour targets: avoid)", "choices": list(AUGMENTS)})
    target_augment: str = field(default="none", metadata={
        "help": "augmentation preset for the target batches", "choices": list(AUGMENTS)})
    channels_last: bool = field(default=True, metadata={"help": "channels-last memory format (CPU speed)"})
    # -- monitoring and selection
    val_size: int = field(default=512, metadata={
        "help": "held-out source images (sa: source val split; sf/df: held-out pseudo-source) on which "
                "the source accuracy is measured during the run"})
    eval_every: int = field(default=20, metadata={"help": "measure the held-out source accuracy every N "
                                                           "steps (and at the end)"})
    select: str = field(default="guard", metadata={
        "help": "which mask to return: guard (the last evaluated mask whose held-out source accuracy is "
                "within guard_tol of the unmasked model's) or last", "choices": SELECTS})
    guard_tol: float = field(default=0.01, metadata={
        "help": "guard: allowed drop of held-out source accuracy (fraction, e.g. 0.01 = 1 point)"})
    early_stop: float = field(default=0.98, metadata={
        "help": "stop at an evaluation where the held-out source accuracy is within guard_tol and the mean "
                "capped target damage since the previous evaluation is at least this fraction of its "
                "largest value (garbage/uniform: min(ln C, beta); feature-collapse: min(1, beta); "
                "pseudo-kl: beta); 0 = always run every step"})
    # -- mask (MaskConfig, flattened)
    threshold: float = field(default=0.0, metadata={"help": "mask threshold tau (kept while score >= tau)"})
    init_score: float = field(default=1.0, metadata={"help": "initial score (> threshold: start = source)"})
    init_mode: str = field(default="constant", metadata={
        "help": "initial scores: constant, or magnitude (small weights reach tau first)",
        "choices": INIT_MODES})
    layers: str = field(default="conv,linear", metadata={
        "help": "comma-separated layer kinds to mask: conv, linear, bn, norm"})
    include_bn: bool = field(default=False, metadata={"help": "also mask BatchNorm gamma"})
    include_bias: bool = field(default=False, metadata={"help": "also mask biases of masked layers"})
    include: str = field(default="", metadata={"help": "fnmatch patterns of modules to mask (empty: all)"})
    exclude: str = field(default="", metadata={"help": "fnmatch patterns of modules to leave unmasked"})
    exclude_first: bool = field(default=False, metadata={"help": "leave the first conv/linear unmasked"})
    exclude_last: bool = field(default=False, metadata={"help": "leave the last conv/linear unmasked"})
    scope: str = field(default="global", metadata={
        "help": "max_sparsity/l1 pooling: global or per-layer", "choices": SCOPES})
    max_sparsity: float = field(default=1.0, metadata={
        "help": "at most this fraction of the masked weights may be pruned (1.0 = no cap)"})
    l1: float = field(default=0.0, metadata={"help": "L1 pull on the mask density (0 = off)"})
    # -- pseudo-source and neighbours (sf-map, df-map)
    pseudo_source_size: int = field(default=2048, metadata={
        "help": "sf/df: pseudo-source images synthesized from the model (val_size of them held out, "
                "capped at a quarter; sf: 0 = none, the restyled/recoloured target alone)"})
    keep_neighbours: float = field(default=0.0, metadata={
        "help": "sf: add this many (x batch_size) neighbour-domain copies of target images to every source "
                "batch, distilled from the source model, so only the target's own style is destroyed and "
                "other styles (e.g. the unseen real source) are kept (0 = off)"})
    pseudo_source: str = field(default="", metadata={
        "help": "sf/df: folder of a pseudo-source saved by domainlock.synthesis.save_pseudo_source "
                "for THIS model (used instead of synthesizing; it must agree with the model's predictions)"})
    synthesis_steps: int = field(default=0, metadata={
        "help": "sf/df: optimization steps per pseudo-source batch (0 = the synthesis module's default)"})
    synthesis_gray: bool = field(default=False, metadata={
        "help": "sf/df: synthesize grey pseudo-source images (for a source domain in greyscale)"})
    pseudo_source_restyled: int = field(default=0, metadata={
        "help": "sf: also move this many target training images into the source's style (model inversion "
                "started from them, their content kept: domainlock.synthesis.source_style) and add them to the "
                "pseudo-source (0 = off)"})
    restyle_start: str = field(default="target", metadata={
        "help": "sf: where the inversion of pseudo_source_restyled starts: the target images, or recoloured "
                "copies of them (random duotones; a colour source)", "choices": list(STARTS)})
    restyle_steps: int = field(default=200, metadata={
        "help": "sf: Adam steps of the pseudo_source_restyled inversion per batch"})
    restyle_precision: str = field(default="fp32", metadata={
        "help": "sf: precision of the restyle's forward (bf16 autocast, fp32, or auto: bf16 where native)",
        "choices": list(PRECISIONS)})
    pseudo_source_recoloured: int = field(default=0, metadata={
        "help": "sf: also add this many target training images recoloured (random duotones, saturation >= 0.3, "
                "not inverted) to the pseudo-source (a colour source; 0 = off)"})
    neighbour_copies: int = field(default=0, metadata={
        "help": "df: neighbour-domain copies made once of each pseudo-source training image (0 = fresh "
                "neighbours of every target batch at every step)"})

    def mask_config(self) -> MaskConfig:
        return MaskConfig(**{k: getattr(self, k) for k in _MASK_FIELDS})


_HELP = {f.name: f.metadata for f in fields(MAPConfig)}


@dataclass
class PseudoSourceMAPConfig(MAPConfig):
    """MAPConfig with the defaults of the settings that learn the mask on a *pseudo*-source (sf-map,
    df-map): a gentler schedule (alpha 1, lr 1e-3, 200 steps) and no early stop; why: the module docstring."""

    alpha: float = field(default=1.0, metadata=_HELP["alpha"])
    steps: int = field(default=200, metadata=_HELP["steps"])
    lr: float = field(default=1e-3, metadata=_HELP["lr"])
    early_stop: float = field(default=0.0, metadata=_HELP["early_stop"])


def validate_config(hp: MAPConfig) -> None:
    """Raise a one-line :class:`DomainlockError` naming the first bad value of ``hp``."""
    if not isinstance(hp, MAPConfig):
        raise DomainlockError(f"MAP hyper-parameters must be a MAPConfig, got {type(hp).__name__}")
    check_choice("target_loss", hp.target_loss, TARGET_LOSSES)
    check_choice("select", hp.select, SELECTS)
    check_choice("schedule", hp.schedule, SCHEDULES)
    check_choice("optimizer", hp.optimizer, OPTIMIZERS)
    check_choice("source_augment", hp.source_augment, AUGMENTS)
    check_choice("target_augment", hp.target_augment, AUGMENTS)
    check_range("alpha", check_finite("alpha", hp.alpha), 0.0, 1e6)
    check_range("beta", check_finite("beta", hp.beta), 0.0, 1e6, low_open=True)
    check_range("lr", check_finite("lr", hp.lr), 0.0, 1.0)
    check_range("warmup", check_finite("warmup", hp.warmup), 0.0, 1.0)
    check_range("momentum", check_finite("momentum", hp.momentum), 0.0, 1.0, high_open=True)
    check_range("score_floor", check_finite("score_floor", hp.score_floor), 0.0, 1e6)
    check_range("source_ce", check_finite("source_ce", hp.source_ce), 0.0, 1e6)
    check_choice("keep_restyle", hp.keep_restyle, RESTYLE)
    check_range("keep_restyle_weight", check_finite("keep_restyle_weight", hp.keep_restyle_weight), 0.0, 1e6)
    check_range("temperature", check_finite("temperature", hp.temperature), 0.0, 100.0, low_open=True)
    check_range("guard_tol", check_finite("guard_tol", hp.guard_tol), 0.0, 1.0)
    check_range("early_stop", check_finite("early_stop", hp.early_stop), 0.0, 1.0)
    check_range("max_sparsity", check_finite("max_sparsity", hp.max_sparsity), 0.0, 1.0)
    check_range("l1", check_finite("l1", hp.l1), 0.0, 1e6)
    check_integer("steps", hp.steps, 0, 10_000_000)
    check_integer("batch_size", hp.batch_size, 2, 1 << 20)
    check_integer("target_batch_size", hp.target_batch_size, 0, 1 << 20)
    if hp.target_batch_size == 1:
        raise DomainlockError("target_batch_size=1 is out of range; valid: 0 (= batch_size) or >= 2")
    check_range("keep_neighbours", check_finite("keep_neighbours", hp.keep_neighbours), 0.0, 16.0)
    check_range("cooldown", check_finite("cooldown", hp.cooldown), 0.0, 1.0)
    check_integer("val_size", hp.val_size, 0, 1 << 24)
    check_integer("eval_every", hp.eval_every, 1, math.inf)
    check_integer("garbage_class", hp.garbage_class, -1, math.inf)
    check_integer("pseudo_source_size", hp.pseudo_source_size, 0, 1 << 24)
    check_integer("synthesis_steps", hp.synthesis_steps, 0, 1 << 20)
    check_integer("pseudo_source_restyled", hp.pseudo_source_restyled, 0, 1 << 24)
    check_integer("pseudo_source_recoloured", hp.pseudo_source_recoloured, 0, 1 << 24)
    check_choice("restyle_start", hp.restyle_start, STARTS)
    check_integer("restyle_steps", hp.restyle_steps, 0, 1 << 20)
    check_choice("restyle_precision", hp.restyle_precision, PRECISIONS)
    kept = hp.pseudo_source_size + hp.pseudo_source_restyled + hp.pseudo_source_recoloured
    if kept < 8:
        raise DomainlockError(f"pseudo_source_size={hp.pseudo_source_size} (+ pseudo_source_restyled="
                              f"{hp.pseudo_source_restyled}, pseudo_source_recoloured={hp.pseudo_source_recoloured}) "
                              "leaves fewer than 8 images to keep; valid: at least 8 in all")
    if hp.pseudo_source and hp.pseudo_source_size == 0:
        raise DomainlockError(f"pseudo_source={hp.pseudo_source!r} with pseudo_source_size=0 would use none of it; "
                              "valid: pseudo_source_size >= 8 or no pseudo_source")
    if hp.synthesis_gray and (hp.pseudo_source_recoloured or hp.restyle_start == "recoloured"):
        raise DomainlockError("pseudo_source_recoloured and restyle_start='recoloured' need a colour source; with "
                              "synthesis_gray use pseudo_source_recoloured=0 and restyle_start='target'")
    check_integer("neighbour_copies", hp.neighbour_copies, 0, 1000)
    hp.mask_config()  # MaskConfig checks threshold/init_score/layers/... itself
