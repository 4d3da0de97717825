"""Hyper-parameters of NTP (:class:`NTPConfig`, one CLI flag per field) and their validation.

The objective they parametrize is in :mod:`domainlock.methods.ntp.admm`. Why the non-obvious defaults are
what they are, one line each (the measurements and the commands that regenerate them: ``docs/design/ntp.md``):

* ``cap = 0`` means ``c = ln C``, the CE of a uniform prediction: pushing further would make ``h_T``
  confidently wrong, which keeps the class information (only permuted) for a fresh attacker head.
* ``head_mode = refit``: against a fixed head the encoder moves each target class into another class's
  region (CE up, class information intact); ``online`` leaves more for a fresh linear probe than ``refit``.
* ``target_bn = batch``: the fine-tuning attacker's network normalizes with batch statistics.
* ``sim_weight = 3`` with 40 attacker steps and 5 x 60 W-steps: without the simulated attack a dense
  fine-tuning attacker undoes the collapse within ~100 samples; it costs ~10x plain NTP.
* ``sim_every = 3``: the simulated attack is ~85% of NTP's cost; run every 3rd W-step (its gradient reused
  in between) NTP costs 0.4x as much (< 1 source training) at the same n = 100 attack results; 5 lets them up.
* ``weight_scale = bn_scale = 1`` (the rescale off): an attacker undoes the rescale exactly with
  :func:`~domainlock.methods.ntp.rescale.normalize_scales`.
* ``recalibrate = 2048``: BatchNorm running averages lag behind weights that moved fast.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from ...data.augment import AUGMENTS
from ...errors import DomainlockError, check_choice, check_finite, check_integer, check_range

ZSTEPS = ("topk", "soft")
SCHEDULES = ("cubic", "linear", "constant")
FINETUNE_OBJECTIVES = ("source", "ntp")
HEAD_MODES = ("fixed", "refit", "online")
TARGET_BNS = ("batch", "running")


@dataclass
class NTPConfig:
    """Hyper-parameters of NTP (flat, so every field is a CLI flag). Defaults: see the module docstring."""

    sparsity: float = field(default=0.9, metadata={
        "help": "fraction of the encoder's conv/linear weights to prune, in (0, 1)"})
    # -- objective
    alpha: float = field(default=1.0, metadata={"help": "weight alpha of the capped target cross-entropy"})
    cap: float = field(default=0.0, metadata={
        "help": "cap c on the per-image target cross-entropy (0 = ln C, the CE of a uniform prediction)"})
    fisher: float = field(default=1.0, metadata={
        "help": "weight lambda of the Fisher ratio R_F = S_B/S_W of the target features (0 = off)"})
    fisher_at: str = field(default="", metadata={
        "help": "comma-separated fnmatch patterns of encoder submodule names whose outputs also get R_F "
                "(e.g. '4,8,12' = digitnet's three pooling outputs; empty = the encoder output only)"})
    rho: float = field(default=1e-2, metadata={"help": "ADMM penalty rho"})
    # -- ADMM
    zstep: str = field(default="topk", metadata={
        "help": "Z-step: topk (projection onto the k largest magnitudes) or soft (L1 prox, "
                "soft-thresholding by delta/rho)", "choices": ZSTEPS})
    delta: float = field(default=0.0, metadata={
        "help": "soft: L1 weight delta (threshold delta/rho); 0 = threshold chosen to meet the schedule"})
    prune_schedule: str = field(default="cubic", metadata={
        "help": "sparsity of the Z-step over the iterations (topk, and soft with delta=0)",
        "choices": SCHEDULES})
    iterations: int = field(default=5, metadata={"help": "ADMM outer iterations (at most)"})
    steps_per_iter: int = field(default=60, metadata={"help": "Adam steps of each W-step"})
    lr: float = field(default=1e-3, metadata={"help": "Adam learning rate of the W-step"})
    tol: float = field(default=1e-3, metadata={
        "help": "stop early once the sparsity is reached and ||W - Z|| / ||Z|| < tol"})
    batch_size: int = field(default=64, metadata={"help": "source images per step"})
    target_batch_size: int = field(default=0, metadata={"help": "target images per step (0 = batch_size)"})
    train_head: bool = field(default=True, metadata={
        "help": "also train the source head h_S (in the W-step and the final fine-tune)"})
    source_augment: str = field(default="none", metadata={
        "help": "augmentation preset of the source batches", "choices": list(AUGMENTS)})
    target_augment: str = field(default="none", metadata={
        "help": "augmentation preset of the target batches", "choices": list(AUGMENTS)})
    target_bn: str = field(default="batch", metadata={
        "help": "BatchNorm statistics of the target forward passes: batch (the target batch's own, as a "
                "fine-tuning attacker's network sees them; running statistics untouched) or running (the "
                "source's running statistics, as direct use of the model sees them)", "choices": TARGET_BNS})
    # -- target head
    head_steps: int = field(default=100, metadata={"help": "Adam steps training h_T on frozen target features"})
    head_lr: float = field(default=1e-2, metadata={"help": "learning rate of h_T"})
    head_mode: str = field(default="refit", metadata={
        "help": "the target head h_T: fixed (trained once, as the spec), refit (re-initialized and re-trained "
                "on the current features before every W-step: an attacker that adapts its head), online (one "
                "Adam step on the current target batch before every encoder step: adversarial training)",
        "choices": HEAD_MODES})
    head_size: int = field(default=1000, metadata={"help": "target images h_T is trained (and re-trained) on"})
    # -- after ADMM
    finetune_steps: int = field(default=60, metadata={
        "help": "steps of the final fine-tune of the surviving weights with the mask fixed (0 = none)"})
    finetune_lr: float = field(default=1e-3, metadata={"help": "Adam learning rate of the final fine-tune"})
    finetune_objective: str = field(default="source", metadata={
        "help": "final fine-tune loss: source (CE on the source only, as the spec) or ntp (the W-step "
                "loss without the ADMM term)", "choices": FINETUNE_OBJECTIVES})
    recalibrate: int = field(default=2048, metadata={
        "help": "re-estimate the BatchNorm running statistics on this many source training images at the end "
                "(their running averages lag behind weights that moved fast; 0 = off)"})
    weight_scale: float = field(default=1.0, metadata={
        "help": "multiply every surviving encoder weight that feeds a BatchNorm by this (an exact "
                "reparameterization: the function is unchanged, fine-tuning moves the weights 1/scale "
                "as fast); 1 = off"})
    bn_scale: float = field(default=1.0, metadata={
        "help": "multiply the affine parameters of every BatchNorm whose output only feeds such layers by "
                "this (exact, like weight_scale; the last BatchNorm, which makes the features, is left); 1 = off"})
    val_size: int = field(default=500, metadata={
        "help": "source val images for the held-out source accuracy logged per iteration (0 = none)"})
    # -- simulated fine-tuning attack (the project's own extension)
    sim_weight: float = field(default=3.0, metadata={
        "help": "weight of the simulated-attack term: -sim_weight * min(CE, c) of a copy of the encoder "
                "fine-tuned for sim_steps with a fresh head on target samples, first-order (0 = off)"})
    sim_steps: int = field(default=40, metadata={"help": "simulated attack: SGD steps of the attacker copy"})
    sim_lr: float = field(default=0.01, metadata={
        "help": "simulated attack: learning rate of the inherited (encoder) weights"})
    sim_head_lr: float = field(default=0.05, metadata={"help": "simulated attack: learning rate of the fresh head"})
    sim_shots: int = field(default=200, metadata={
        "help": "simulated attack: target samples the attacker copy trains on (drawn anew each time)"})
    sim_every: int = field(default=3, metadata={
        "help": "simulated attack: run it every N W-steps; the W-steps in between apply its last gradient again"})


def validate_config(hp: NTPConfig) -> None:
    """Raise a one-line :class:`DomainlockError` naming the first bad value of ``hp``."""
    if not isinstance(hp, NTPConfig):
        raise DomainlockError(f"NTP hyper-parameters must be an NTPConfig, got {type(hp).__name__}")
    check_range("sparsity", check_finite("sparsity", hp.sparsity), 0.0, 1.0, low_open=True, high_open=True)
    check_choice("zstep", hp.zstep, ZSTEPS)
    check_choice("prune_schedule", hp.prune_schedule, SCHEDULES)
    check_choice("finetune_objective", hp.finetune_objective, FINETUNE_OBJECTIVES)
    check_choice("head_mode", hp.head_mode, HEAD_MODES)
    check_choice("target_bn", hp.target_bn, TARGET_BNS)
    check_choice("source_augment", hp.source_augment, AUGMENTS)
    check_choice("target_augment", hp.target_augment, AUGMENTS)
    check_range("alpha", check_finite("alpha", hp.alpha), 0.0, 1e6)
    check_range("cap", check_finite("cap", hp.cap), 0.0, 1e6)
    check_range("fisher", check_finite("fisher", hp.fisher), 0.0, 1e6)
    check_range("rho", check_finite("rho", hp.rho), 0.0, 1e6, low_open=True)
    check_range("delta", check_finite("delta", hp.delta), 0.0, 1e6)
    check_range("lr", check_finite("lr", hp.lr), 0.0, 1.0, low_open=True)
    check_range("head_lr", check_finite("head_lr", hp.head_lr), 0.0, 10.0, low_open=True)
    check_range("finetune_lr", check_finite("finetune_lr", hp.finetune_lr), 0.0, 1.0, low_open=True)
    check_range("tol", check_finite("tol", hp.tol), 0.0, 1e6)
    check_range("weight_scale", check_finite("weight_scale", hp.weight_scale), 1.0, 1e4)
    check_range("bn_scale", check_finite("bn_scale", hp.bn_scale), 1.0, 1e4)
    check_integer("iterations", hp.iterations, 1, 100_000)
    check_integer("steps_per_iter", hp.steps_per_iter, 0, 10_000_000)
    check_integer("batch_size", hp.batch_size, 2, 1 << 20)
    check_integer("target_batch_size", hp.target_batch_size, 0, 1 << 20)
    if hp.target_batch_size == 1:
        raise DomainlockError("target_batch_size=1 is out of range; valid: 0 (= batch_size) or >= 2")
    check_integer("head_steps", hp.head_steps, 0, 10_000_000)
    check_integer("head_size", hp.head_size, 10, 1 << 24)
    check_integer("finetune_steps", hp.finetune_steps, 0, 10_000_000)
    check_integer("val_size", hp.val_size, 0, 1 << 24)
    check_integer("recalibrate", hp.recalibrate, 0, 1 << 24)
    check_range("sim_weight", check_finite("sim_weight", hp.sim_weight), 0.0, 1e6)
    check_range("sim_lr", check_finite("sim_lr", hp.sim_lr), 0.0, 10.0, low_open=True)
    check_range("sim_head_lr", check_finite("sim_head_lr", hp.sim_head_lr), 0.0, 10.0, low_open=True)
    check_integer("sim_steps", hp.sim_steps, 1, 1_000_000)
    check_integer("sim_shots", hp.sim_shots, 2, 1 << 24)
    check_integer("sim_every", hp.sim_every, 1, 1_000_000)
    for pat in _patterns(hp.fisher_at):
        if not pat:
            raise DomainlockError(f"fisher_at={hp.fisher_at!r} has an empty pattern")


def _patterns(spec: str) -> list[str]:
    return [p.strip() for p in spec.split(",")] if spec.strip() else []

