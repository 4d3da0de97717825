"""The simulated fine-tuning attack of NTP's W-step (the project's own extension, SOPHON/MAML-style) and
the target head ``h_T`` the owner fits to play the attacker's head.

The W-step loss gains the term ``- sim_weight * mean_i min(CE_i, c)`` of a functional copy of the model
that a simulated attacker has fine-tuned (a fresh head, ``sim_steps`` Nesterov-SGD steps on ``sim_shots``
target samples, dense: pruned weights may regrow), evaluated on other target samples. It is first-order:
the gradient at the adapted weights is applied to the current ones. It is what stops the dense attacker,
which undoes NTP's feature collapse alone.
"""

from __future__ import annotations

import copy

import torch
import torch.nn.functional as F
from torch import nn

from ...models import reinitialize
from ...utils.layout import batch_to_channels_last
from ..base import Sampler


def train_target_head(head: nn.Module, feats: torch.Tensor, y: torch.Tensor, steps: int, lr: float,
                      g: torch.Generator, dev: torch.device, bs: int = 256) -> dict[str, float]:
    """Fit ``head`` (already re-initialized) on cached features with Adam; 10% held out for the report."""
    n = len(y)
    perm = torch.randperm(n, generator=g)
    n_val = min(max(1, n // 10), 2000) if n >= 20 else 0
    va, tr = perm[:n_val], perm[n_val:]
    head.to(dev).train()
    opt = torch.optim.Adam(head.parameters(), lr=lr)
    sampler = Sampler(len(tr), bs, g)
    for _ in range(steps):
        idx = tr[sampler.next()]
        loss = F.cross_entropy(head(feats[idx].to(dev)), y[idx].to(dev))
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
    head.eval()
    with torch.no_grad():
        acc_tr = float((head(feats[tr].to(dev)).argmax(1).cpu() == y[tr]).float().mean())
        acc_va = float((head(feats[va].to(dev)).argmax(1).cpu() == y[va]).float().mean()) if n_val else float("nan")
    for p in head.parameters():
        p.requires_grad_(False)
    return {"train_acc": acc_tr, "heldout_acc": acc_va}


def simulated_attack_grads(model: nn.Module, head_name: str, enc_params: dict[str, nn.Parameter],
                           xt: torch.Tensor, yt: torch.Tensor, *, steps: int, lr: float, head_lr: float,
                           shots: int, batch_size: int, cap: float, g: torch.Generator, seed: int,
                           dev: torch.device, momentum: float = 0.9, weight_decay: float = 5e-4
                           ) -> tuple[list[torch.Tensor], float]:
    """First-order gradient of the simulated attacker's loss after fine-tuning, w.r.t. the encoder.

    A functional copy of ``model`` (same encoder weights, a freshly initialized head) takes ``steps``
    Nesterov-SGD steps of cross-entropy on ``shots`` target samples (encoder at ``lr``, head at
    ``head_lr``, BatchNorm on batch statistics, running statistics untouched), like the fine-tuning
    attack of :mod:`domainlock.attacks`. Its capped cross-entropy (the module docstring's term, cap ``cap``) on
    other target samples is the attacker's outcome; the gradient of that loss w.r.t. the *adapted* encoder weights is
    returned for the *current* ones (the first-order approximation of MAML, which skips second
    derivatives through the inner steps), so a descent step on ``-loss`` makes the encoder a worse start
    for fine-tuning. Pruned weights take part like any other (a dense attacker may regrow them).
    """
    from torch.func import functional_call

    n = len(yt)
    perm = torch.randperm(n, generator=g)
    k = min(shots, max(2, n // 2))
    train_idx, query_idx = perm[:k], perm[k:k + max(batch_size, 64)]
    fresh_head = reinitialize(copy.deepcopy(dict(model.named_modules())[head_name]), seed)
    fresh = {f"{head_name}.{name}": p.detach().clone() for name, p in fresh_head.named_parameters()}
    params = {name: p.detach().clone() for name, p in enc_params.items()} | fresh
    for p in params.values():
        p.requires_grad_(True)
    buffers = {name: b.detach().clone() for name, b in model.named_buffers()}
    # the attack harness's optimizer: torch's Nesterov SGD, here on the functional copy's tensors
    opt = torch.optim.SGD([{"params": [p for nm, p in params.items() if nm not in fresh], "lr": lr},
                           {"params": list(fresh.values()), "lr": head_lr}],
                          momentum=momentum, nesterov=True, weight_decay=weight_decay)
    was_training = model.training
    model.train()
    try:
        for _ in range(steps):
            idx = train_idx[torch.randint(len(train_idx), (min(batch_size, len(train_idx)),), generator=g)]
            logits = functional_call(model, {**params, **buffers}, (batch_to_channels_last(xt[idx].to(dev)),))
            # autograd.grad, not backward(): nothing may accumulate into the real model's .grad
            grads = torch.autograd.grad(F.cross_entropy(logits, yt[idx].to(dev)), list(params.values()))
            for p, gr in zip(params.values(), grads, strict=True):
                p.grad = gr
            opt.step()
        logits = functional_call(model, {**params, **buffers}, (batch_to_channels_last(xt[query_idx].to(dev)),))
        after = F.cross_entropy(logits, yt[query_idx].to(dev), reduction="none").clamp(max=cap).mean()
        grads = torch.autograd.grad(after, [params[nm] for nm in enc_params])
    finally:
        model.train(was_training)
    return [gr.detach() for gr in grads], float(after.detach())

