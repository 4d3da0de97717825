"""Learning curves of the fine-tuning attack and their SLC-AUC (METHODS.md §2): a protected model, the same
architecture from random initialization (scratch) and, optionally, the unprotected source model, each
fine-tuned with the same :class:`~domainlock.attacks.finetune.AttackProtocol` on the same per-class balanced
target samples (paired by seed).

Every point (start, target, n, seed, protocol) is cached on disk as a small JSON file keyed by a hash of
everything that determines it: the start's weights (or, for scratch, its architecture), the target data,
the strategy, masking, protocol, ``n`` and seed. Scratch and unprotected curves do not depend on the
protected model, so a team computing many SLC-AUCs against the same target trains them once; the masked
attack of a model with no pruned weight to hold is the dense attack (:func:`~.finetune.holds_pruned`) and
reads the dense points.

The fine-tunes of a curve run one at a time: running the paired starts of one ``(n, seed)`` as one batched
model (grouped convolutions, or ``torch.func.vmap`` over stacked weights) measured slower per step at one CPU
thread than running them in turn (docs/bench/slc-speed.md, ``benchmarks/slc_speed.py``).
"""

from __future__ import annotations

import hashlib
import io
import json
import os
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn

from ..errors import DomainlockError, check_choice
from ..metrics.slc_auc import SLCAUC, check_shots, slc_auc
from ..utils.io import atomic_write_bytes, atomic_write_json, check_output_path, config_hash
from .finetune import (
    STRATEGIES,
    AttackProtocol,
    check_classes,
    check_split,
    finetune_attack,
    holds_pruned,
    sample_per_class,
)

#: bump when a change to the attack changes its numbers: old cache entries are then ignored
CACHE_VERSION = 1
DEFAULT_SHOTS = (10, 20, 50, 100, 200, 500, 1000)
STARTS = ("protected", "scratch", "unprotected")


# ------------------------------------------------------------------------------------------------ cache
def default_cache_dir() -> Path:
    """``$DOMAINLOCK_CACHE/slc`` if set, else ``user_cache_dir("domainlock")/slc``."""
    env = os.environ.get("DOMAINLOCK_CACHE")
    if env:
        return Path(env) / "slc"
    import platformdirs

    return Path(platformdirs.user_cache_dir("domainlock")) / "slc"


class PointCache:
    """One JSON file per learning-curve point, named by the hash of its key (which it also stores)."""

    def __init__(self, root: str | os.PathLike | None = None):
        self.root = Path(root) if root is not None else default_cache_dir()
        self.hits = 0
        self.misses = 0

    def _path(self, key: dict[str, Any]) -> Path:
        return self.root / f"{key['start']}-{config_hash(key, 16)}.json"

    def get(self, key: dict[str, Any]) -> dict[str, Any] | None:
        path = self._path(key)
        try:
            entry = json.loads(path.read_text())
        except (OSError, ValueError):
            self.misses += 1
            return None
        if entry.get("key") != json.loads(json.dumps(key)):
            self.misses += 1
            return None
        self.hits += 1
        return entry["result"]

    def put(self, key: dict[str, Any], result: dict[str, Any]) -> None:
        atomic_write_json(self._path(key), {"key": key, "result": result})


def weights_fingerprint(model: nn.Module) -> str:
    """sha256 over the model's state dict (names, shapes, dtypes, values)."""
    h = hashlib.sha256()
    for name, t in sorted(model.state_dict().items()):
        t = t.detach().cpu().contiguous()
        h.update(f"{name}:{tuple(t.shape)}:{t.dtype};".encode())
        h.update(t.numpy().tobytes() if t.dtype != torch.bfloat16 else t.float().numpy().tobytes())
    return h.hexdigest()


def arch_fingerprint(model: nn.Module) -> str:
    """sha256 of what a random-init copy of ``model`` depends on: its module tree with every layer's
    settings (``repr``, which includes the input normalization) and the shapes of its state dict."""
    shapes = [(k, list(v.shape), str(v.dtype)) for k, v in model.state_dict().items()]
    return hashlib.sha256((repr(model) + json.dumps(shapes)).encode()).hexdigest()


def data_fingerprint(*splits: Any) -> str:
    """sha256 over the images and labels of the given splits."""
    h = hashlib.sha256()
    for d in splits:
        for t in (d.x, d.y):
            t = t.detach().cpu().contiguous()
            h.update(f"{tuple(t.shape)}:{t.dtype};".encode())
            h.update(t.numpy().tobytes())
    return h.hexdigest()


# ------------------------------------------------------------------------------------------------ curves
@dataclass
class Curve:
    """Target test accuracy after the attack at each ``shots[i]``: ``per_seed[seed][i]`` and the seed mean
    ``accuracy[i]``; ``points`` holds each fine-tune's record (:meth:`FinetuneResult.as_dict`)."""

    start: str
    shots: list[int]
    seeds: list[int]
    per_seed: dict[int, list[float]]
    accuracy: list[float]
    points: list[dict[str, Any]] = field(default_factory=list)

    def as_dict(self) -> dict[str, Any]:
        return {"start": self.start, "shots": self.shots, "seeds": self.seeds, "accuracy": self.accuracy,
                "per_seed": {str(s): v for s, v in self.per_seed.items()}, "points": self.points}


@dataclass
class SLCResult:
    """Curves and scores of one SLC-AUC evaluation; ``score`` is the protected model's SLC-AUC (seed-mean
    curves; the mean of ``score_per_seed`` equals it), ``unprotected_score`` the source model's."""

    target: str
    strategy: str
    masked: bool
    shots: list[int]
    seeds: list[int]
    protocol: dict[str, Any]
    protected: Curve
    scratch: Curve
    unprotected: Curve | None
    score: SLCAUC
    score_per_seed: dict[int, SLCAUC]
    unprotected_score: SLCAUC | None
    wall_s: float
    cache: dict[str, Any]
    notes: list[str] = field(default_factory=list)   # for the user: how a folder target's classes were mapped

    def as_dict(self) -> dict[str, Any]:
        return {
            "target": self.target, "strategy": self.strategy, "masked": self.masked,
            "attacker": "masked" if self.masked else "dense", "shots": self.shots, "seeds": self.seeds,
            "protocol": self.protocol,
            "slc_auc": self.score.as_dict(),
            "slc_auc_per_seed": {str(s): v.normalized for s, v in self.score_per_seed.items()},
            "unprotected_slc_auc": None if self.unprotected_score is None else self.unprotected_score.as_dict(),
            "curves": {c.start: c.as_dict() for c in (self.protected, self.scratch, self.unprotected) if c},
            "wall_s": self.wall_s, "cache": self.cache,
        }

    def table(self) -> str:
        """Plain-text table: n, protected, scratch, [unprotected], d (accuracies in percent)."""
        head = ["n", "protected", "scratch"] + (["unprotected"] if self.unprotected else []) + ["d"]
        rows = [head]
        for i, n in enumerate(self.shots):
            row = [str(n), f"{100 * self.protected.accuracy[i]:.2f}", f"{100 * self.scratch.accuracy[i]:.2f}"]
            if self.unprotected:
                row.append(f"{100 * self.unprotected.accuracy[i]:.2f}")
            row.append(f"{100 * self.score.d[i]:+.2f}")
            rows.append(row)
        widths = [max(len(r[j]) for r in rows) for j in range(len(head))]
        lines = ["  ".join(c.rjust(w) for c, w in zip(r, widths, strict=True)) for r in rows]
        lines.insert(1, "  ".join("-" * w for w in widths))
        return "\n".join(lines)

    def summary(self) -> str:
        attacker = "masked" if self.masked else "dense"
        seeds = ",".join(map(str, self.seeds))
        out = (f"SLC-AUC ({attacker} attacker, {self.strategy}, {self.target}, seeds {seeds}): "
               f"{self.score.normalized:+.4f}  (raw {self.score.raw:+.4f} over ln n span {self.score.span:.3f})")
        if self.unprotected_score is not None:
            out += (f"\nunprotected model's SLC-AUC: {self.unprotected_score.normalized:+.4f}  "
                    f"(raw {self.unprotected_score.raw:+.4f})")
        return out


def _key(start: str, fingerprint: str, data_fp: str, target: str, n: int, seed: int, strategy: str,
         masked: bool, protocol: AttackProtocol) -> dict[str, Any]:
    proto = protocol.to_dict()
    if start == "scratch":   # a random-init start has no inherited weights: their lr cannot change it
        proto.pop("lr_pretrained")
    return {"version": CACHE_VERSION, "start": start, "model": fingerprint, "data": data_fp, "target": target,
            "n": int(n), "seed": int(seed), "strategy": strategy, "masked": bool(masked), "protocol": proto}


def check_shots_fit(target_train: Any, shots: Sequence[int]) -> list[int]:
    """Validate the shot grid and that the target train split can give a per-class balanced sample of every
    ``n`` in it, before anything trains."""
    shots = check_shots(shots)
    for n in shots:
        sample_per_class(target_train, n, 0)
    return shots


def learning_curve(model: nn.Module, target_train: Any, target_test: Any, shots: Sequence[int], *,
                   strategy: str = "reinit-head+all", masked: bool = False, protocol: AttackProtocol | None = None,
                   seeds: Sequence[int] = (0,), from_scratch: bool = False, start: str | None = None,
                   target_name: str | None = None, device: str | torch.device = "auto",
                   cache: PointCache | None = None, bar: Any = None,
                   data_fp: str | None = None) -> Curve:
    """Target test accuracy after :func:`finetune_attack` at every ``n`` in ``shots`` and every seed.

    ``from_scratch`` trains a random-init copy (all layers, dense; ``strategy``/``masked`` are then ignored
    and the cache key depends only on the architecture). ``cache``: a :class:`PointCache` (``None``: no cache).
    ``bar``: a tqdm bar advanced once per point.
    """
    protocol = protocol or AttackProtocol()
    shots = check_shots_fit(target_train, shots)
    check_choice("strategy", strategy, STRATEGIES)
    check_split(model)
    if from_scratch:
        strategy, masked = "all", False
    elif masked and not holds_pruned(model, strategy):
        masked = False   # nothing to hold at zero: the dense attack, whose cached points it shares
    start = start or ("scratch" if from_scratch else "model")
    target_name = target_name or str(getattr(target_train, "name", "target"))
    fp = None
    if cache is not None:
        fp = arch_fingerprint(model) if from_scratch else weights_fingerprint(model)
        data_fp = data_fp or data_fingerprint(target_train, target_test)
    per_seed: dict[int, list[float]] = {}
    points: list[dict[str, Any]] = []
    for seed in seeds:
        accs = []
        for n in shots:
            if bar is not None:
                bar.set_postfix_str(f"{start} n={n} seed={seed}")
            # keyed by what the model is (weights, or architecture for scratch), not by the role it plays here
            key = _key("scratch" if from_scratch else "model", fp or "", data_fp or "", target_name, n, seed,
                       strategy, masked, protocol) if cache is not None else None
            rec = cache.get(key) if cache is not None else None
            if rec is None:
                r = finetune_attack(model, target_train, n, strategy, masked, protocol, seed, target_test=target_test,
                                    from_scratch=from_scratch, device=device)
                rec = r.as_dict()
                if cache is not None:
                    cache.put(key, rec)
                rec = {**rec, "cached": False}
            else:
                rec = {**rec, "cached": True}
            accs.append(float(rec["accuracy"]))
            points.append(rec)
            if bar is not None:
                bar.update(1)
        per_seed[int(seed)] = accs
    mean = [sum(per_seed[s][i] for s in per_seed) / len(per_seed) for i in range(len(shots))]
    return Curve(start=start, shots=shots, seeds=[int(s) for s in seeds], per_seed=per_seed, accuracy=mean,
                 points=points)


def slc(model: Any, target: Any, shots: Sequence[int] = DEFAULT_SHOTS, *, strategy: str = "reinit-head+all",
        masked: bool = False, protocol: AttackProtocol | None = None, seeds: Sequence[int] = (0,),
        unprotected: Any = None, data_root: Any = None, device: str | torch.device = "auto",
        cache: PointCache | None | bool = True, progress: bool = True) -> SLCResult:
    """SLC-AUC of ``model`` (a module, an artifact or its path) against ``target``.

    ``target``: a domain name (its train split gives the attacker's samples, its test split the accuracy) or
    a pair ``(train, test)`` of ``DomainData``. ``unprotected``: the source model, for its own curve and
    score (same strategy, always dense: it has no pruned weights to hold). ``cache``: ``True`` = the default
    cache folder, a :class:`PointCache`, or ``False``/``None``. A folder target's classes are mapped to the
    model's outputs (:func:`~domainlock.evaluation.align_classes`; the mapping is in ``notes``).
    """
    t0 = time.perf_counter()
    protocol = protocol or AttackProtocol()
    check_choice("strategy", strategy, STRATEGIES)
    shots = check_shots(shots)
    seeds = [int(s) for s in seeds]
    if not seeds or len(set(seeds)) != len(seeds):
        raise DomainlockError(f"seeds must be a non-empty list of distinct integers, got {seeds}")
    if isinstance(model, str | Path):
        from ..artifact import load_artifact

        model = load_artifact(model)
    from ..evaluation import align_classes, output_classes

    classes, outputs = output_classes(model)
    from ..artifact import model_of

    prot = model_of(model)
    check_split(prot)
    unprot = model_of(unprotected) if unprotected is not None else None
    if unprot is not None:
        check_split(unprot)
    if isinstance(target, str):
        from ..data import load_domain

        name = target
        train, test = load_domain(target, "train", data_root), load_domain(target, "test", data_root)
    else:
        train, test = target
        name = str(getattr(train, "name", "target"))
    (train, note), (test, _) = (align_classes(d, classes, outputs, every_class=True) for d in (train, test))
    shots = check_shots_fit(train, shots)
    for m in (prot, unprot):
        if m is not None:
            check_classes(m, train)
    pc = PointCache() if cache is True else (cache or None)
    data_fp = data_fingerprint(train, test) if pc is not None else None
    starts = [("protected", prot, False, strategy, masked), ("scratch", prot, True, "all", False)]
    if unprot is not None:
        starts.append(("unprotected", unprot, False, strategy, False))
    bar = None
    if progress:
        from tqdm.auto import tqdm

        bar = tqdm(total=len(starts) * len(shots) * len(seeds), desc=f"SLC {name}", unit="fine-tune",
                   dynamic_ncols=True, leave=False)
    curves: dict[str, Curve] = {}
    try:
        for label, m, scratch, strat, msk in starts:
            curves[label] = learning_curve(m, train, test, shots, strategy=strat, masked=msk, protocol=protocol,
                                           seeds=seeds, from_scratch=scratch, start=label, target_name=name,
                                           device=device, cache=pc, bar=bar, data_fp=data_fp)
    finally:
        if bar is not None:
            bar.close()
    sc = curves["scratch"]
    score = slc_auc(shots, curves["protected"].accuracy, sc.accuracy)
    per_seed = {s: slc_auc(shots, curves["protected"].per_seed[s], sc.per_seed[s]) for s in seeds}
    unprot_score = slc_auc(shots, curves["unprotected"].accuracy, sc.accuracy) if unprot is not None else None
    cache_info = {"dir": str(pc.root), "hits": pc.hits, "misses": pc.misses} if pc is not None else None
    return SLCResult(target=name, strategy=strategy, masked=bool(masked), shots=shots, seeds=seeds,
                     protocol=protocol.to_dict(), protected=curves["protected"], scratch=sc,
                     unprotected=curves.get("unprotected"), score=score, score_per_seed=per_seed,
                     unprotected_score=unprot_score, wall_s=round(time.perf_counter() - t0, 2), cache=cache_info,
                     notes=[note] if note else [])


# ------------------------------------------------------------------------------------------------ outputs
def require_matplotlib() -> None:
    """A one-line error naming the extra to install when matplotlib is missing."""
    try:
        import matplotlib  # noqa: F401
    except ImportError:
        raise DomainlockError("plotting needs matplotlib: pip install 'domainlock[plot]'") from None


def plot_slc(result: SLCResult, path: str | os.PathLike, overwrite: bool = False, title: str | None = None) -> Path:
    """Write a PNG of the curves (target test accuracy vs n, log x) atomically; refuses an existing ``path``
    unless ``overwrite``. Needs matplotlib (``pip install domainlock[plot]``)."""
    path = check_output_path(path, overwrite)
    require_matplotlib()
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6.0, 4.2), dpi=120)
    try:
        n = result.shots
        ax.plot(n, [100 * a for a in result.protected.accuracy], "o-", color="tab:red",
                label=f"protected (SLC-AUC {result.score.normalized:+.3f})")
        ax.plot(n, [100 * a for a in result.scratch.accuracy], "s--", color="tab:gray", label="scratch")
        if result.unprotected is not None and result.unprotected_score is not None:
            ax.plot(n, [100 * a for a in result.unprotected.accuracy], "^-", color="tab:blue",
                    label=f"unprotected (SLC-AUC {result.unprotected_score.normalized:+.3f})")
        ax.set_xscale("log")
        ax.set_xticks(n)
        ax.set_xticklabels([str(v) for v in n])
        ax.minorticks_off()
        ax.set_xlabel(f"labelled target samples n ({result.target} train, per-class balanced)")
        ax.set_ylabel(f"{result.target} test accuracy after fine-tuning (%)")
        attacker = "masked" if result.masked else "dense"
        ax.set_title(title or f"fine-tuning attack: {result.strategy}, {attacker} attacker")
        ax.grid(True, alpha=0.3)
        ax.legend(loc="lower right", fontsize=8)
        fig.tight_layout()
        buf = io.BytesIO()
        fig.savefig(buf, format="png")
    finally:
        plt.close(fig)
    atomic_write_bytes(path, buf.getvalue())
    return path
