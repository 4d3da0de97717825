"""CUPI-domain's pieces on tensors (Wang et al., TPAMI 2024; METHODS.md §3): the pyramid fusion generator, the
class-wise memory banks and the loss. The loop that uses them is :mod:`.loop`.

Statistics. mu(h), sigma(h): per-instance channel mean and std of a block output h ``[B, C, *spatial]``
(:func:`~domainlock.methods.baselines.cuti.instance_stats`). Per-class statistic of rows v_i with labels y_i
(:func:`class_means`): the class mean  v_c = sum_{i: y_i = c} v_i / n_c,  n_c = |{i: y_i = c}|.

Fusion (the generator, :class:`PyramidFusion`): after every encoder block, a fused row takes its content from an
isolation anchor a (target or neighbourhood image) and a style (mu*, sigma*) made from an authorized anchor s:
    "conv" (:func:`conv_style`):  mu* = sigmoid(W_mu mu(h_s)),  sigma* = sigmoid(W_sigma sigma(h_s)),  W_mu, W_sigma
        drawn afresh at every call from U(-1/sqrt(C), 1/sqrt(C))^(C x C) (a random, never trained 1x1 convolution)
    "mix"  (:func:`mix_style`):   mu* = lam mu(h_s) + (1 - lam) mu(h_a),  sigma* likewise,  lam ~ U(0, 1) per row
    fused = cuti.restyle(h_a; mu*, sigma*)   (AdaIN)
The fused row goes through the next block and is fused again there: a pyramid of styles over the levels.

Memory banks (:class:`ClassMemory`), one row per class, updated with the batch's class means v_c:
    M_c <- M_c + r_c (v_c - M_c),   r_c = max(m, 1 / u_c),   u_c = number of updates of class c so far
(a running mean over the first 1/m sightings, an exponential moving average with momentum m after).
Banks: F, encoder features g(x) of the fused rows by their labels; per level l, Mu^l and Sd^l, the source rows'
mu and sigma at level l by source label.

Loss (:func:`cupi_loss`). CE: batch-mean cross-entropy; MSE(M, v): squared error averaged over the rows whose
class the bank M has seen and over dimensions (:meth:`ClassMemory.mse`); s, o, c: source, other, fused rows:
    L = CE_s - min(beta, alpha CE_c) - min(beta, alpha CE_o)
        - min(beta, kappa_t D_s) + min(beta, kappa_t D_o) - min(beta, kappa_t S_mu) - min(beta, kappa_t S_sd)
    D_s = MSE(F, g(x_s)),  D_o = MSE(F, g(x_o)),
    S_mu = sum_l MSE(Mu^l, mu_l(x_o)),  S_sd = sum_l MSE(Sd^l, sigma_l(x_o))
The source stays correct; fused and other rows are pushed from their labels; source features are pushed away
from the isolation domain's class features while the other rows' features are pulled onto them; the other
rows' styles are pushed away from the source's class-wise styles at every level. kappa_t: :func:`kappa_at`.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from ....errors import DomainlockError, check_choice
from ..cuti import instance_stats, restyle

GENERATORS = ("conv", "mix")


def class_means(v: torch.Tensor, y: torch.Tensor, n_classes: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-class mean of the rows of ``v`` (``[N, ...]``, flattened to ``[N, D]``) and the class counts;
    a class absent from ``y`` gets a zero row and count 0."""
    v = v.flatten(1)
    counts = torch.bincount(y, minlength=n_classes)[:n_classes]
    sums = torch.zeros(n_classes, v.shape[1], dtype=v.dtype, device=v.device).index_add_(0, y, v)
    return sums / counts.clamp_min(1).unsqueeze(1).to(v.dtype), counts


def kappa_at(step: int, steps: int, kappa: float) -> float:
    """The ramped weight of the discrimination and style terms at step ``step`` (1-based) of ``steps``:
    ``kappa_t = kappa * (step / steps) ** 0.9``."""
    return kappa * (step / max(steps, 1)) ** 0.9


def conv_style(mu_s: torch.Tensor, sd_s: torch.Tensor, w_mu: torch.Tensor, w_sd: torch.Tensor
               ) -> tuple[torch.Tensor, torch.Tensor]:
    """The "conv" generator: ``sigmoid(w @ stat)`` per row, for stats shaped ``[k, C, 1, ...]`` and ``w`` ``[C, C]``."""
    def gen(stat: torch.Tensor, w: torch.Tensor) -> torch.Tensor:
        return torch.sigmoid(stat.flatten(1) @ w.t()).view_as(stat)

    return gen(mu_s, w_mu), gen(sd_s, w_sd)


def mix_style(mu_s: torch.Tensor, sd_s: torch.Tensor, mu_a: torch.Tensor, sd_a: torch.Tensor, lam: torch.Tensor
              ) -> tuple[torch.Tensor, torch.Tensor]:
    """The "mix" generator: ``lam * stat_s + (1 - lam) * stat_a`` (``lam`` broadcasts, e.g. ``[k, 1, 1, 1]``)."""
    return lam * mu_s + (1 - lam) * mu_a, lam * sd_s + (1 - lam) * sd_a


class PyramidFusion(nn.Module):
    """The generator of the pyramid isolation domain, hooked after every encoder block (CUTI's
    :func:`~domainlock.methods.baselines.cuti.restyling`); identity in eval mode or with no rows set.

    Before each forward pass the loop calls :meth:`set_rows`: ``rows`` are the fused rows (their current
    features are the content), ``donors`` the authorized-anchor row of each, and the per-instance statistics of
    the first ``n_stats`` rows are recorded at every level in :attr:`levels` (with their graph: the style loss
    backpropagates through them). Levels with fewer than 2 spatial positions are left alone. No parameters.
    """

    def __init__(self, generator: str = "conv", eps: float = 1e-5, rng: torch.Generator | None = None):
        super().__init__()
        check_choice("generator", generator, GENERATORS)
        self.generator, self.eps, self.rng = generator, eps, rng
        self.rows: torch.Tensor | None = None
        self.donors: torch.Tensor | None = None
        self.n_stats = 0
        self.levels: list[tuple[torch.Tensor, torch.Tensor]] = []
        self.calls = 0

    def set_rows(self, rows: torch.Tensor | None, donors: torch.Tensor | None = None, n_stats: int = 0) -> None:
        self.levels = []
        if rows is None or len(rows) == 0:
            self.rows = self.donors = None
            self.n_stats = 0
            return
        if donors is None or len(donors) != len(rows):
            raise DomainlockError("pyramid fusion needs one donor (authorized anchor) row per fused row")
        self.rows, self.donors, self.n_stats = rows.long(), donors.long(), int(n_stats)

    def _rand(self, *shape: int) -> torch.Tensor:
        dev = self.rng.device if self.rng is not None else torch.device("cpu")
        return torch.rand(shape, generator=self.rng, device=dev)

    def forward(self, h: torch.Tensor) -> torch.Tensor:
        if not self.training or self.rows is None or h.dim() < 3 or h[0, 0].numel() < 2:
            return h
        self.calls += 1
        mu, sd = instance_stats(h, self.eps)
        if self.n_stats:
            self.levels.append((mu[:self.n_stats], sd[:self.n_stats]))
        rows, donors = self.rows.to(h.device), self.donors.to(h.device)
        if self.generator == "conv":
            c = h.shape[1]
            w = ((self._rand(2, c, c) * 2 - 1) * c ** -0.5).to(h.device, h.dtype)
            mu_f, sd_f = conv_style(mu[donors], sd[donors], w[0], w[1])
        else:
            lam = self._rand(len(rows), *([1] * (h.dim() - 1))).to(h.device, h.dtype)
            mu_f, sd_f = mix_style(mu[donors], sd[donors], mu[rows], sd[rows], lam)
        out = h.clone()
        out[rows] = restyle(h[rows], mu_f, sd_f, self.eps)
        return out

    def extra_repr(self) -> str:
        return f"generator={self.generator!r}, eps={self.eps}"


class ClassMemory:
    """A memory bank of one vector per class (module docstring: running mean, then EMA with momentum m)."""

    def __init__(self, n_classes: int, dim: int, momentum: float, device=None):
        self.values = torch.zeros(n_classes, dim, device=device)
        self.updates = torch.zeros(n_classes, dtype=torch.long, device=device)
        self.momentum = float(momentum)

    @property
    def seen(self) -> torch.Tensor:
        return self.updates > 0

    @torch.no_grad()
    def update(self, v: torch.Tensor, y: torch.Tensor) -> None:
        means, counts = class_means(v.detach().to(self.values.dtype), y, len(self.values))
        present = counts > 0
        self.updates += present.long()
        rate = torch.clamp(1.0 / self.updates.clamp_min(1).to(self.values.dtype), min=self.momentum)
        step = (means - self.values) * rate.unsqueeze(1)
        self.values += torch.where(present.unsqueeze(1), step, torch.zeros_like(step))

    def mse(self, v: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        """Mean squared error between ``v``'s rows and their classes' bank rows, over the rows whose class the
        bank has seen (0 when there is none)."""
        keep = self.seen[y]
        if not bool(keep.any()):
            return v.sum() * 0.0
        return F.mse_loss(v.flatten(1)[keep], self.values[y[keep]])


@dataclass
class CUPIBanks:
    """The banks of the module docstring: class features F, and per level the source styles Mu^l and Sd^l."""

    features: ClassMemory
    mu: list[ClassMemory]
    sd: list[ClassMemory]

    @classmethod
    def create(cls, n_classes: int, feat_dim: int, level_channels: Sequence[int], momentum: float, device=None
               ) -> CUPIBanks:
        def bank(d: int) -> ClassMemory:
            return ClassMemory(n_classes, d, momentum, device)

        return cls(bank(feat_dim), [bank(c) for c in level_channels], [bank(c) for c in level_channels])

    def update(self, feats_c: torch.Tensor, y_c: torch.Tensor, levels_s: Sequence[tuple[torch.Tensor, torch.Tensor]],
               y_s: torch.Tensor) -> None:
        """Fused rows' features into F; the source rows' level statistics into Mu^l, Sd^l."""
        self.features.update(feats_c, y_c)
        for (mu, sd), bm, bs in zip(levels_s, self.mu, self.sd, strict=True):
            bm.update(mu, y_s)
            bs.update(sd, y_s)


def style_distance(banks: Sequence[ClassMemory], stats: Sequence[torch.Tensor], y: torch.Tensor) -> torch.Tensor:
    """``sum_l MSE(bank_l, stats_l)`` over the levels (S_mu or S_sd of the module docstring)."""
    if len(banks) != len(stats):
        raise DomainlockError(f"{len(stats)} levels of statistics for {len(banks)} banks")
    return sum((b.mse(s, y) for b, s in zip(banks, stats, strict=True)), torch.zeros(()))


@dataclass
class CUPILossValue:
    total: torch.Tensor
    parts: dict[str, torch.Tensor]

    def floats(self) -> dict[str, float]:
        return {"total": float(self.total.detach()), **{k: float(v.detach()) for k, v in self.parts.items()}}


def cupi_loss(logits_s: torch.Tensor, y_s: torch.Tensor, logits_o: torch.Tensor, y_o: torch.Tensor,
              logits_c: torch.Tensor, y_c: torch.Tensor, feats_s: torch.Tensor, feats_o: torch.Tensor,
              levels_o: Sequence[tuple[torch.Tensor, torch.Tensor]], banks: CUPIBanks, *, alpha: float, beta: float,
              kappa: float) -> CUPILossValue:
    """The loss L of the module docstring (``levels_o``: the other rows' (mu, sigma) per level)."""
    ce_s = F.cross_entropy(logits_s, y_s)
    ce_c = F.cross_entropy(logits_c, y_c)
    ce_o = F.cross_entropy(logits_o, y_o)
    d_s = banks.features.mse(feats_s, y_s)
    d_o = banks.features.mse(feats_o, y_o)
    s_mu = style_distance(banks.mu, [m for m, _ in levels_o], y_o).to(ce_s)
    s_sd = style_distance(banks.sd, [s for _, s in levels_o], y_o).to(ce_s)

    def cap(x: torch.Tensor, w: float) -> torch.Tensor:
        return torch.clamp(w * x, max=beta)

    total = (ce_s - cap(ce_c, alpha) - cap(ce_o, alpha) - cap(d_s, kappa) + cap(d_o, kappa)
             - cap(s_mu, kappa) - cap(s_sd, kappa))
    parts = {"source_ce": ce_s, "cupi_ce": ce_c, "other_ce": ce_o, "d_source": d_s, "d_other": d_o,
             "style_mean": s_mu, "style_std": s_sd}
    return CUPILossValue(total, parts)


__all__ = ["CUPIBanks", "CUPILossValue", "ClassMemory", "GENERATORS", "PyramidFusion", "class_means", "conv_style",
           "cupi_loss", "kappa_at", "mix_style", "style_distance"]
