"""H-NTL stage 1 (Hong et al., ICLR 2024; METHODS.md §3): a variational model that splits a feature vector f
into a *content* latent z_c (the cause of the label) and a *style* latent z_s (the domain).

Each latent has a Gaussian posterior N(mu(f), diag(exp(logvar(f)))) from its own MLP encoder, sampled as
z = mu + exp(logvar / 2) * eps, eps ~ N(0, I), and pulled to the N(0, I) prior by the closed form

    KL = 1/2 * sum_j ( mu_j^2 + exp(logvar_j) - 1 - logvar_j )      (summed over dimensions, batch mean)

On balanced batches of source rows (domain d = 0) and target or neighbourhood rows (d = 1):

    L1 = CE(h_y(z_c), y) + CE(h_d(z_s), d) + w_kl (KL_c + KL_s) + w_rec ||dec([z_c, z_s]) - f||^2
         + lambda_dis ( D(mu_s, y | d) + D(mu_c, d | y) )

h_y: label head (rows without usable labels skip its CE); h_d: domain head; dec: decoder (mean squared
error). D(z, t) is the normalized HSIC between the rows of z and labels t: with K = sum over s in
{1/4, 1, 4} of exp(-||z_a - z_b||^2 / (s h)) plus the linear kernel <z_a - zbar, z_b - zbar> / h (h: the mean
squared distance, detached), L = onehot(t) onehot(t)^T and the centring C = I - 11^T/n,
D = <CKC, CLC> / (|CKC| |CLC|) in [0, 1], 0 when z is independent of t on the batch. D(z, t | g) averages
D within the groups of equal g (where both are defined): the style carries no label *within a domain*,
the content no domain *within a class*, as the paper's causal model has it (without target labels the
content term is unconditional). So the *style path* h_y(mu_s), the target rows' teacher in stage 2, is
label-free but not uniform: a confident label-free teacher leaves no argmax to read, a uniform one does.

Reconstruction choices (the project's): the model works on the frozen source encoder's feature vectors
g(x), standardized per dimension, and reconstructs those, not images (the reference trains two VGG
encoders and an image decoder: CPU-sized here, one feature pass). The D terms are the project's form of
the disentanglement term (the public reference trainer configures a weight 0.08 for its term but does
not apply it); adversarial probes in their place leave label information in z_s that a fresh probe
finds, the HSIC terms need no game. Posterior means serve as the teachers' latents (no sampling outside
training). Measurements: docs/design/hntl.md.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from ....errors import TrainingDivergedError
from ....losses.mmd import bandwidth_heuristic, pairwise_sq_dists
from ...base import Sampler

LOGVAR_CLAMP = 10.0   # keeps exp(logvar) finite early in training; far outside what the KL term lets it reach


def gaussian_kl(mu: torch.Tensor, logvar: torch.Tensor) -> torch.Tensor:
    """``KL(N(mu, exp(logvar)) || N(0, I))`` per row, summed over dimensions, averaged over rows."""
    return 0.5 * (mu.pow(2) + logvar.exp() - 1.0 - logvar).sum(1).mean()


def reparameterize(mu: torch.Tensor, logvar: torch.Tensor, generator: torch.Generator | None = None,
                   eps: torch.Tensor | None = None) -> torch.Tensor:
    """A sample ``mu + exp(logvar / 2) * eps`` (``eps`` drawn from ``generator`` on the CPU unless given)."""
    if eps is None:
        eps = torch.randn(mu.shape, generator=generator).to(mu.device, mu.dtype)
    return mu + (0.5 * logvar).exp() * eps


def dependence(z: torch.Tensor, labels: torch.Tensor, num_labels: int, scales: tuple[float, ...] = (0.25, 1.0, 4.0)
               ) -> torch.Tensor:
    """Normalized HSIC between the rows of ``z`` and integer ``labels`` (module docstring), in [0, 1]."""
    d2 = pairwise_sq_dists(z)
    h = bandwidth_heuristic(d2)
    zc = z - z.mean(0, keepdim=True)
    k = sum(torch.exp(-d2 / (h * s)) for s in scales) + (zc @ zc.T) / h
    t = F.one_hot(labels, num_labels).to(z.dtype)
    lab = t @ t.T
    kc = k - k.mean(0, keepdim=True) - k.mean(1, keepdim=True) + k.mean()
    lc = lab - lab.mean(0, keepdim=True) - lab.mean(1, keepdim=True) + lab.mean()
    return (kc * lc).sum() / ((kc * kc).sum() * (lc * lc).sum()).sqrt().clamp_min(1e-12)


def grouped_dependence(z: torch.Tensor, labels: torch.Tensor, groups: torch.Tensor, num_labels: int
                       ) -> torch.Tensor:
    """:func:`dependence` within each group (rows with equal ``groups``), averaged over the groups where it is
    defined (at least 2 rows holding at least 2 distinct labels); 0 when there is none."""
    vals = []
    for gv in groups.unique():
        m = groups == gv
        if int(m.sum()) >= 2 and len(labels[m].unique()) >= 2:
            vals.append(dependence(z[m], labels[m], num_labels))
    return torch.stack(vals).mean() if vals else z.new_zeros(())


def _mlp(i: int, h: int, o: int) -> nn.Sequential:
    return nn.Sequential(nn.Linear(i, h), nn.ReLU(), nn.Linear(h, h), nn.ReLU(), nn.Linear(h, o))


class GaussianEncoder(nn.Module):
    """f -> (mu, logvar) of a diagonal Gaussian posterior."""

    def __init__(self, in_dim: int, hidden: int, latent: int):
        super().__init__()
        self.net = _mlp(in_dim, hidden, 2 * latent)

    def forward(self, f: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        mu, logvar = self.net(f).chunk(2, dim=1)
        return mu, logvar.clamp(-LOGVAR_CLAMP, LOGVAR_CLAMP)


class ContentStyleVAE(nn.Module):
    """The content and style encoders, their heads and the decoder (the stage-1 model and its teachers)."""

    def __init__(self, in_dim: int, num_classes: int, latent: int, hidden: int, num_domains: int = 2):
        super().__init__()
        self.content = GaussianEncoder(in_dim, hidden, latent)
        self.style = GaussianEncoder(in_dim, hidden, latent)
        self.label_head = nn.Linear(latent, num_classes)
        self.domain_head = nn.Linear(latent, num_domains)
        self.decoder = _mlp(2 * latent, hidden, in_dim)

    @torch.no_grad()
    def paths(self, f: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """The two teachers' label logits at the posterior means: content path h_y(mu_c), style path h_y(mu_s)."""
        return self.label_head(self.content(f)[0]), self.label_head(self.style(f)[0])

    @torch.no_grad()
    def means(self, f: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return self.content(f)[0], self.style(f)[0]


@dataclass
class DisentangleSpec:
    """What stage 1 needs from the method's hyper-parameters."""

    steps: int = 600
    batch_size: int = 128
    lr: float = 1e-3
    optimizer: str = "adam"
    momentum: float = 0.9
    weight_decay: float = 0.0
    latent_dim: int = 64
    hidden_dim: int = 256
    kl_weight: float = 1e-3
    rec_weight: float = 0.1
    lambda_disent: float = 1.0
    log_every: int = 100


def stage1_loss(vae: ContentStyleVAE, f: torch.Tensor, y: torch.Tensor, d: torch.Tensor, labelled: torch.Tensor,
                spec: DisentangleSpec, generator: torch.Generator | None
                ) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """``L1`` of the module docstring on one batch (rows ``labelled`` carry usable labels) and its terms."""
    mu_c, lv_c = vae.content(f)
    mu_s, lv_s = vae.style(f)
    z_c = reparameterize(mu_c, lv_c, generator)
    z_s = reparameterize(mu_s, lv_s, generator)
    zero = f.new_zeros(())
    n_lab = int(labelled.sum())
    t = {"ce_content": F.cross_entropy(vae.label_head(z_c[labelled]), y[labelled]) if n_lab else zero,
         "ce_domain": F.cross_entropy(vae.domain_head(z_s), d),
         "kl": gaussian_kl(mu_c, lv_c) + gaussian_kl(mu_s, lv_s),
         "rec": F.mse_loss(vae.decoder(torch.cat([z_c, z_s], 1)), f),
         "dep_style_label": zero, "dep_content_domain": zero}
    if spec.lambda_disent > 0:
        k_y, k_d = vae.label_head.out_features, vae.domain_head.out_features
        t["dep_style_label"] = grouped_dependence(mu_s[labelled], y[labelled], d[labelled], k_y)
        t["dep_content_domain"] = (grouped_dependence(mu_c, d, y, k_d) if bool(labelled.all())
                                   else dependence(mu_c, d, k_d))
    dis = t["dep_style_label"] + t["dep_content_domain"]
    total = (t["ce_content"] + t["ce_domain"] + spec.kl_weight * t["kl"] + spec.rec_weight * t["rec"]
             + spec.lambda_disent * dis)
    return total, t


def make_optimizer(params, kind: str, lr: float, momentum: float, weight_decay: float) -> torch.optim.Optimizer:
    if kind == "sgd":
        return torch.optim.SGD(params, lr=lr, momentum=momentum, weight_decay=weight_decay)
    return torch.optim.Adam(params, lr=lr, weight_decay=weight_decay)


def train_disentangle(f_src: torch.Tensor, y_src: torch.Tensor, f_oth: torch.Tensor, y_oth: torch.Tensor,
                      num_classes: int, spec: DisentangleSpec, g: torch.Generator, *,
                      other_labelled: bool = True) -> tuple[ContentStyleVAE, dict[str, Any]]:
    """Train :class:`ContentStyleVAE` on source features (domain 0) and other features (domain 1): every step
    ``batch_size`` rows of each. ``other_labelled=False`` keeps the other rows' labels out of every term
    (they then serve the style, reconstruction and dependence terms only)."""
    t0 = time.perf_counter()
    dev = f_src.device
    with torch.random.fork_rng(devices=[]):   # initialization seeded by g, the global generator left alone
        torch.manual_seed(int(torch.randint(0, 2**31 - 1, (1,), generator=g)))
        vae = ContentStyleVAE(f_src.shape[1], num_classes, spec.latent_dim, spec.hidden_dim).to(dev)
    opt = make_optimizer(vae.parameters(), spec.optimizer, spec.lr, spec.momentum, spec.weight_decay)
    ss, so = Sampler(len(f_src), spec.batch_size, g), Sampler(len(f_oth), spec.batch_size, g)
    history: list[dict[str, float]] = []
    vae.train()
    for step in range(spec.steps):
        i, j = ss.next().to(dev), so.next().to(dev)
        f = torch.cat([f_src[i], f_oth[j]])
        y = torch.cat([y_src[i], y_oth[j]])
        d = torch.cat([torch.zeros(len(i), dtype=torch.long, device=dev), torch.ones(len(j), dtype=torch.long,
                                                                                     device=dev)])
        labelled = (d == 0) | other_labelled
        total, terms = stage1_loss(vae, f, y, d, labelled, spec, g)
        if not torch.isfinite(total):
            raise TrainingDivergedError(f"hntl stage-1 loss became {float(total)} at step {step + 1}; lower "
                                        f"--disent-lr (now {spec.lr})")
        opt.zero_grad(set_to_none=True)
        total.backward()
        opt.step()
        if (step + 1) % spec.log_every == 0 or step + 1 == spec.steps:
            history.append({"step": step + 1, "total": round(float(total.detach()), 5),
                            **{k: round(float(v.detach()), 5) for k, v in terms.items()}})
    vae.eval()
    info = {"steps": spec.steps, "history": history, "stage1_s": round(time.perf_counter() - t0, 3)}
    return vae, info


@torch.no_grad()
def path_accuracies(vae: ContentStyleVAE, f_src: torch.Tensor, y_src: torch.Tensor, f_oth: torch.Tensor,
                    y_oth: torch.Tensor | None) -> dict[str, float]:
    """How each teacher path predicts the labels (content high, style near chance) and the domain head the
    domain, on the given features; without ``y_oth`` (labels not to be used) the other rows' label
    accuracies are left out."""
    out: dict[str, float] = {}
    for name, f, y, dom in (("source", f_src, y_src, 0), ("other", f_oth, y_oth, 1)):
        c, s = vae.paths(f)
        if y is not None:
            out[f"content_path_acc_{name}"] = float((c.argmax(1) == y).float().mean())
            out[f"style_path_acc_{name}"] = float((s.argmax(1) == y).float().mean())
        out[f"style_domain_acc_{name}"] = float((vae.domain_head(vae.means(f)[1]).argmax(1) == dom).float().mean())
    return {k: round(v, 4) for k, v in out.items()}


__all__ = ["ContentStyleVAE", "DisentangleSpec", "GaussianEncoder", "gaussian_kl",
           "make_optimizer", "path_accuracies", "reparameterize", "stage1_loss", "train_disentangle"]
