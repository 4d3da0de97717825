"""The pseudo-source a model inversion makes (:class:`PseudoSource`), its on-disk format and its fidelity.

On disk a pseudo-source is a folder: ``pseudo.safetensors`` (``x`` as uint8, ``y`` int64), ``info.json``
(the synthesis diagnostics) and ``grid.png`` (up to 10 images per class, one class per column).

:func:`fidelity` measures what METHODS.md asks ("pseudo-source fidelity"): a fresh model of the same
architecture is distilled from the teacher's soft outputs on the (lightly augmented) pseudo-source alone,
and its accuracy on the real source test split is reported next to the teacher's. Real data is only ever
read by the caller, for that measure.
"""

from __future__ import annotations

import copy
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from ..errors import DomainlockError, check_range

PSEUDO_FILE = "pseudo.safetensors"
INFO_FILE = "info.json"
GRID_FILE = "grid.png"
PSEUDO_FORMAT = "domainlock-pseudo-source"


@dataclass
class PseudoSource:
    """A synthesized pseudo-source: ``x`` float ``[n, 3, H, W]`` in [0, 1] (quantized to 1/255 steps, so a
    save/load round trip is exact), ``y`` int64 ``[n]`` intended classes, ``info`` diagnostics."""

    x: torch.Tensor
    y: torch.Tensor
    info: dict[str, Any] = field(default_factory=dict)

    def __len__(self) -> int:
        return int(self.y.shape[0])

    @property
    def num_classes(self) -> int:
        return int(self.info.get("num_classes") or (int(self.y.max()) + 1 if len(self) else 0))

    def as_domain(self, name: str = "pseudo-source"):
        """The pseudo-source as a :class:`~domainlock.data.DomainData` (split ``train``)."""
        from ..data.types import DomainData

        return DomainData(name, "train", self.x, self.y, self.num_classes)


def _num_classes(model: nn.Module) -> int:
    n = getattr(model, "num_classes", None)
    if n:
        return int(n)
    lin = [m for m in model.modules() if isinstance(m, nn.Linear)]
    if not lin:
        raise DomainlockError("cannot tell the number of classes of the model (no num_classes, no Linear)")
    return int(lin[-1].out_features)


# ----------------------------------------------------------------------------------------- fidelity


def _fresh_copy(model: nn.Module, seed: int) -> nn.Module:
    """A freshly initialized model of the same architecture (``build_model`` when the arch is registered,
    else a deep copy with every ``reset_parameters`` called)."""
    from ..models import ARCHS, build_model

    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(int(seed))
        arch = getattr(model, "arch", None)
        if arch in ARCHS:
            return build_model(arch, num_classes=_num_classes(model), **dict(getattr(model, "arch_kwargs", {})))
        fresh = copy.deepcopy(model).cpu()
        for m in fresh.modules():
            if hasattr(m, "reset_parameters") and callable(m.reset_parameters):
                m.reset_parameters()
            if isinstance(m, nn.modules.batchnorm._BatchNorm):
                m.reset_running_stats()
        for p in fresh.parameters():
            p.requires_grad_(True)
        return fresh


def fidelity(model: nn.Module, pseudo: PseudoSource, real_test, *, epochs: int = 30,
             device: str | torch.device = "cpu", seed: int = 0, batch_size: int = 128, lr: float = 0.05,
             temperature: float = 4.0, augment: str = "geometric", progress: bool = False,
             return_student: bool = False) -> dict[str, Any]:
    """Pseudo-source fidelity: distill a FRESH model of ``model``'s architecture from ``model``'s soft
    outputs on the (augmented, preset ``augment``) pseudo-source alone, then report its accuracy on
    ``real_test`` (the real source test split; used only here, to measure) beside the teacher's.

    KD loss: ``T² · KL(softmax(t/T) ‖ softmax(s/T))`` on the same augmented view for teacher and student;
    SGD (Nesterov) with a one-cycle schedule peaking at ``lr``. Returns ``teacher_acc``, ``student_acc``,
    ``gap`` (teacher − student, in accuracy points of [0, 1]), ``agreement`` (student = teacher on the real
    test images), ``student_pseudo_agreement``, ``epochs``, ``n_pseudo``, ``time_s`` (all JSON-able);
    with ``return_student`` also ``student`` (the distilled model, in eval mode).
    """
    from ..data.augment import get_augment
    from ..evaluation import accuracy, predict
    from ..training.loop import TrainConfig, make_optimizer, make_scheduler

    check_range("epochs", epochs, 1, 100_000)
    dev = torch.device(device) if not isinstance(device, torch.device) else device
    teacher = copy.deepcopy(model).to(dev).eval()
    for p in teacher.parameters():
        p.requires_grad_(False)
    student = _fresh_copy(model, seed).to(dev)
    g = torch.Generator()
    g.manual_seed(int(seed) + 7)
    aug = get_augment(augment)
    x_all, n = pseudo.x, len(pseudo)
    bs = min(batch_size, n)
    steps = max(1, n // bs)
    tcfg = TrainConfig(epochs=epochs, batch_size=max(2, bs), lr=lr, augment=augment, seed=seed,
                       label_smoothing=0.0)
    opt = make_optimizer([p for p in student.parameters() if p.requires_grad], tcfg)
    sched = make_scheduler(opt, tcfg, steps)
    t0 = time.perf_counter()
    bar = None
    if progress:
        from tqdm.auto import tqdm

        bar = tqdm(total=epochs * steps, desc="fidelity (distill)", unit="step", dynamic_ncols=True, leave=False)
    try:
        for _ in range(epochs):
            student.train()
            order = torch.randperm(n, generator=g)
            for i in range(steps):
                idx = order[i * bs:(i + 1) * bs]
                xb = x_all[idx].to(dev)
                if aug:
                    xb = aug(xb, g)
                with torch.no_grad():
                    t_logits = teacher(xb)
                s_logits = student(xb)
                loss = F.kl_div(F.log_softmax(s_logits / temperature, 1), F.log_softmax(t_logits / temperature, 1),
                                reduction="batchmean", log_target=True) * temperature ** 2
                opt.zero_grad(set_to_none=True)
                loss.backward()
                opt.step()
                sched.step()
                if bar is not None:
                    bar.update(1)
    finally:
        if bar is not None:
            bar.close()
    elapsed = time.perf_counter() - t0
    student.eval()
    t_acc = accuracy(teacher, real_test, device=dev)
    s_acc = accuracy(student, real_test, device=dev)
    agree = float((predict(student, real_test.x, device=dev) == predict(teacher, real_test.x, device=dev))
                  .float().mean())
    s_pseudo = float((predict(student, pseudo.x, device=dev) == predict(teacher, pseudo.x, device=dev))
                     .float().mean())
    out = {"teacher_acc": round(t_acc, 5), "student_acc": round(s_acc, 5), "gap": round(t_acc - s_acc, 5),
            "agreement": round(agree, 5), "student_pseudo_agreement": round(s_pseudo, 5),
            "epochs": epochs, "n_pseudo": n, "time_s": round(elapsed, 2), "augment": augment,
            "temperature": temperature, "real_test": f"{getattr(real_test, 'name', '?')}:"
                                                     f"{getattr(real_test, 'split', '?')}"}
    if return_student:
        out["student"] = student
    return out


# ------------------------------------------------------------------------------------------- storage


def save_pseudo_source(pseudo: PseudoSource, out_dir, overwrite: bool = False) -> Path:
    """Write ``pseudo`` to ``out_dir`` atomically: ``pseudo.safetensors`` (``x`` as uint8, ``y`` int64),
    ``info.json`` and ``grid.png`` (up to 10 images per class, one class per column). An existing
    ``out_dir`` is refused unless ``overwrite``."""
    from safetensors.torch import save_file

    from ..data.grid import save_grid
    from ..utils.io import atomic_dir, atomic_write_json

    x8 = (pseudo.x.detach().cpu().clamp(0, 1) * 255).round().to(torch.uint8).contiguous()
    y = pseudo.y.detach().cpu().to(torch.int64).contiguous()
    with atomic_dir(out_dir, overwrite=overwrite) as tmp:
        save_file({"x": x8, "y": y}, str(tmp / PSEUDO_FILE), metadata={"format": PSEUDO_FORMAT})
        atomic_write_json(tmp / INFO_FILE, dict(pseudo.info))
        idx = _grid_index(y, pseudo.num_classes, per_class=10)
        if len(idx):
            save_grid(x8[idx], tmp / GRID_FILE, nrow=min(pseudo.num_classes, 10) or 10, y=y[idx])
    return Path(out_dir)


def _grid_index(y: torch.Tensor, num_classes: int, per_class: int = 10) -> torch.Tensor:
    """Indices laid out row by row: row r holds the r-th image of each class (classes as columns)."""
    cols = min(num_classes, 10)
    by_class = [torch.nonzero(y == c).flatten()[:per_class] for c in range(cols)]
    rows = min((len(b) for b in by_class), default=0)
    return torch.stack([b[:rows] for b in by_class], 1).flatten() if rows else torch.empty(0, dtype=torch.long)


def load_pseudo_source(path) -> PseudoSource:
    """Read a pseudo-source written by :func:`save_pseudo_source`."""
    import json

    from safetensors import SafetensorError
    from safetensors.torch import load_file

    path = Path(path)
    wfile, ifile = path / PSEUDO_FILE, path / INFO_FILE
    if not path.is_dir() or not wfile.is_file():
        raise DomainlockError(f"{str(path)!r} is not a pseudo-source folder (no {PSEUDO_FILE})")
    try:
        t = load_file(str(wfile))
    except (SafetensorError, OSError) as e:
        raise DomainlockError(f"cannot read {str(wfile)!r}: {e}") from e
    if "x" not in t or "y" not in t or t["x"].dtype != torch.uint8 or t["x"].shape[0] != t["y"].shape[0]:
        raise DomainlockError(f"{str(wfile)!r} does not hold a pseudo-source (uint8 x [N,C,H,W], int64 y [N])")
    info = json.loads(ifile.read_text()) if ifile.is_file() else {}
    return PseudoSource(x=t["x"].float() / 255, y=t["y"].long(), info=info)
