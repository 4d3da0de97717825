#!/usr/bin/env python
"""What SA-MAP costs, as ratios measured in one run on one machine (the issue's cost targets):

1. **protect time / source training time**: train digitnet on ``--source`` with the default recipe
   (``TrainConfig()``, timed by ``train_source``), then protect that model with ``sa-map`` against
   ``--target`` (the method's own time inside ``protect()``; evaluation excluded). Target: <= 0.25.
2. **mask-learning step throughput / plain training step throughput** (images per second): a plain training
   step (train mode, forward, cross-entropy, backward, SGD step; channels-last, as in ``fit``) on a batch of
   ``2 * batch_size`` images against one MAP step on ``batch_size`` source + ``batch_size`` target images
   (masked forward, MAP loss with cached teacher logits, backward to the scores, optimizer step), timed
   alternately ``--repeats`` times and compared by their medians. Target: >= 0.7.

    python benchmarks/map_cost.py --threads 1 --out benchmarks/results/map_cost.json
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import time
from pathlib import Path

import torch
import torch.nn.functional as F

from domainlock import __version__
from domainlock.data import load_domain
from domainlock.masking import MaskedModel
from domainlock.methods import protect
from domainlock.methods.map import MAPConfig, map_loss
from domainlock.methods.map.mask_learning import _normalize_grads
from domainlock.models import build_model
from domainlock.training import TrainConfig, train_source


def step_throughput(src_x, tgt_x, hp: MAPConfig, repeats: int, steps: int) -> dict[str, float]:
    b = hp.batch_size
    fmt = torch.channels_last
    torch.manual_seed(0)
    plain = build_model("digitnet").to(memory_format=fmt).train()
    opt_p = torch.optim.SGD(plain.parameters(), lr=0.01, momentum=0.9, nesterov=True, weight_decay=5e-4)
    teacher = build_model("digitnet").eval()
    masked = MaskedModel(teacher, hp.mask_config()).to(memory_format=fmt)
    masked.train()
    scores = masked.score_parameters()
    opt_m = torch.optim.SGD(scores, lr=hp.lr, momentum=hp.momentum)
    y = torch.randint(0, 10, (2 * b,))
    with torch.no_grad():
        t_logits = teacher(src_x[:b])

    def plain_step(i):
        xb = torch.cat([src_x[:b], tgt_x[:b]]).contiguous(memory_format=fmt)
        loss = F.cross_entropy(plain(xb), y, label_smoothing=0.1)
        opt_p.zero_grad(set_to_none=True)
        loss.backward()
        opt_p.step()

    def mask_step(i):
        xb = torch.cat([src_x[:b], tgt_x[:b]]).contiguous(memory_format=fmt)
        logits = masked(xb)
        loss = map_loss(t_logits, logits[:b], logits[b:], target_loss=hp.target_loss, alpha=hp.alpha,
                        beta=hp.beta, garbage_class=0, source_ce=hp.source_ce)
        opt_m.zero_grad(set_to_none=True)
        loss.total.backward()
        _normalize_grads(scores)
        opt_m.step()

    def timed(fn) -> float:
        t = time.perf_counter()
        for i in range(steps):
            fn(i)
        return 2 * b * steps / (time.perf_counter() - t)

    for fn in (plain_step, mask_step):  # warm-up
        timed(fn)
    plain_ips, mask_ips = [], []
    for _ in range(repeats):
        plain_ips.append(timed(plain_step))
        mask_ips.append(timed(mask_step))
    p, m = statistics.median(plain_ips), statistics.median(mask_ips)
    return {"plain_img_per_s": round(p, 1), "mask_img_per_s": round(m, 1), "ratio": round(m / p, 3),
            "plain_runs": [round(v, 1) for v in plain_ips], "mask_runs": [round(v, 1) for v in mask_ips]}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--source", default="mnist")
    ap.add_argument("--target", default="syn")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--data-root", default=None)
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--steps", type=int, default=10, help="steps per timed repeat (step benchmark)")
    ap.add_argument("--out", type=Path, default=None, help="write the results as JSON here")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    hp = MAPConfig()

    src = load_domain(args.source, "train", args.data_root)
    tgt = load_domain(args.target, "train", args.data_root)
    steps = step_throughput(src.x, tgt.x, hp, args.repeats, args.steps)
    print(f"step throughput: plain {steps['plain_img_per_s']} img/s, mask {steps['mask_img_per_s']} img/s, "
          f"ratio {steps['ratio']} (target >= 0.7)", flush=True)

    t0 = time.perf_counter()
    art = train_source(args.source, "digitnet", TrainConfig(seed=args.seed), device="cpu",
                       data_root=args.data_root, progress=False)
    train_s = time.perf_counter() - t0
    print(f"source training ({args.source}, default recipe): {train_s:.1f} s", flush=True)

    res = protect(art.model, "sa-map", source=args.source, target=args.target, data_root=args.data_root,
                  seed=args.seed, hparams=hp, device="cpu", progress=False)
    prot = res.card["protection"]
    map_s = prot["wall_time_s"]
    acc = prot["accuracy_test"]
    ratio = map_s / train_s
    steps_run = prot["info"].get("steps_run", hp.steps)
    print(f"sa-map protect ({args.source}→{args.target}, {steps_run} of {hp.steps} steps of "
          f"{hp.batch_size}+{hp.batch_size}): "
          f"{map_s:.1f} s = {ratio:.3f} x training (target <= 0.25); source "
          f"{100 * acc[args.source]['before']:.2f}→{100 * acc[args.source]['after']:.2f}, target "
          f"{100 * acc[args.target]['before']:.1f}→{100 * acc[args.target]['after']:.1f}", flush=True)
    result = {
        "domainlock": __version__, "torch": torch.__version__, "machine": platform.machine(),
        "threads": args.threads, "source": args.source, "target": args.target, "seed": args.seed,
        "train_s": round(train_s, 2), "protect_s": round(map_s, 2), "protect_over_train": round(ratio, 4),
        "protect_info": {k: prot["info"].get(k) for k in ("mask_loop_s", "mask_total_s", "step_img_per_s", "steps_run",
                                                          "steps", "sparsity", "worst_source_acc")},
        "step_throughput": steps, "accuracy_test": acc, "hparams": prot["hparams"],
        "targets": {"protect_over_train <= 0.25": ratio <= 0.25, "step_ratio >= 0.7": steps["ratio"] >= 0.7},
    }
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps(result, indent=2) + "\n")
    print(json.dumps(result["targets"]))


if __name__ == "__main__":
    main()
