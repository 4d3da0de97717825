"""What one node of the benchmark graph computes, in whatever process or Ray worker runs it.

:func:`run_node` takes a plain, picklable payload (kind, config, the output folders of the nodes it reads) and
writes into the node's own folder: an artifact for model nodes, then ``result.json`` last and atomically. A
folder with ``result.json`` is a finished node, whoever wrote it: a rerun after a kill adopts it instead of
recomputing, so no finished work is lost and no half-written output is ever read.
"""

from __future__ import annotations

import json
import os
import platform
import resource
import sys
import time
from pathlib import Path
from typing import Any

RESULT_FILE = "result.json"
MODEL_DIR = "model"


def read_result(out_dir: str | os.PathLike) -> dict[str, Any] | None:
    """The finished node's result, or ``None`` when it has not finished (or its result is unreadable)."""
    path = Path(out_dir) / RESULT_FILE
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return None


def _cpu_s() -> float:
    """CPU seconds this process has used, all threads (a node's cost that other load on the host cannot inflate)."""
    use = resource.getrusage(resource.RUSAGE_SELF)
    return use.ru_utime + use.ru_stime


def _peak_rss_mb() -> float:
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return peak / (2**20 if sys.platform == "darwin" else 2**10)


def _device_name(device: Any) -> str:
    import torch

    dev = torch.device(device)
    if dev.type == "cuda":
        return f"cuda:{torch.cuda.get_device_name(dev)}"
    return dev.type


def _load_model(out_dir: str):
    from ..artifact import load_artifact

    return load_artifact(Path(out_dir) / MODEL_DIR)


def _run_source(cfg: dict[str, Any], deps: dict[str, str], out: Path, data_root: Any, device: Any) -> dict:
    from ..artifact import load_artifact
    from ..evaluation import evaluate
    from ..training import TrainConfig, train_source

    model_dir = out / MODEL_DIR
    if (model_dir / "card.json").is_file():   # trained (or copied) before a kill, not yet evaluated
        art = load_artifact(model_dir)
    elif "artifact" in cfg:   # the user's own source model: verified, then copied into the benchmark folder
        from ..artifact import save_artifact
        from ..errors import DomainlockError

        art = load_artifact(cfg["artifact"])
        if art.card.get("sha256") != cfg["sha256"]:
            raise DomainlockError(f"{cfg['artifact']} changed since the suite was read (sha256 differs); rerun")
        save_artifact(model_dir, art.model.cpu(), art.card, overwrite=True)
        art = load_artifact(model_dir)
    else:
        art = train_source(cfg["domain"], cfg["arch"], TrainConfig(**cfg["train"]), model_dir, device=device,
                           data_root=data_root, overwrite=True, progress=False)
    res = evaluate(art.model, cfg["eval_domains"], "test", data_root, device)
    return {"accuracy_test": {d: r["accuracy"] for d, r in res.items()},
            "chance": {d: r["chance"] for d, r in res.items()},
            "train_wall_s": None if "artifact" in cfg else art.card["training"]["train_loop_s"],
            "train_cpu_s": None if "artifact" in cfg else art.card["training"].get("train_loop_cpu_s"),
            "external": "artifact" in cfg, "sparsity": 0.0}


def _run_protect(cfg: dict[str, Any], deps: dict[str, str], out: Path, data_root: Any, device: Any) -> dict:
    from ..methods import get_method_class, protect, weight_sparsity

    (src_dir,) = deps.values()
    hp = get_method_class(cfg["method"]).Hparams(**cfg["hparams"])
    res = protect(_load_model(src_dir), cfg["method"], source=cfg["source"], target=cfg["target"], hparams=hp,
                  eval_domains=cfg["eval_domains"], data_root=data_root, device=device, seed=cfg["seed"],
                  progress=False, out=out / MODEL_DIR, overwrite=True)
    prot = res.card["protection"]
    layers = weight_sparsity(res.model)["layers"]
    return {"accuracy_test": prot["accuracy_test"], "sparsity": prot["sparsity"],
            "sparsity_layers": {name: v["sparsity"] for name, v in layers.items()},
            "protect_wall_s": prot["wall_time_s"], "data_read": prot["data_read"]}


def _run_attack(cfg: dict[str, Any], deps: dict[str, str], out: Path, data_root: Any, device: Any) -> dict:
    from ..models import build_model
    from .attacks import attack_kind

    kind = attack_kind(cfg["attack"])
    params = kind.parse_params(cfg["params"], "params")
    if cfg["from_scratch"]:
        from ..data import load_domain

        classes = load_domain(cfg["target"], "test", data_root).num_classes
        model = build_model(cfg["arch"], num_classes=classes, **cfg.get("arch_kwargs", {}))
    else:
        (start_dir,) = deps.values()
        model = _load_model(start_dir).model
    return kind.run(model, cfg["target"], cfg["seed"], params, source=cfg.get("source"), other=cfg.get("other"),
                    from_scratch=cfg["from_scratch"], data_root=data_root, device=device, cache_dir=out / "points")


RUNNERS = {"source": _run_source, "protect": _run_protect, "attack": _run_attack}


def run_node(payload: dict[str, Any]) -> dict[str, Any]:
    """Compute one node (see the module docstring) and return its result with where and how it ran."""
    import torch

    from ..utils.io import atomic_write_json
    from ..utils.runtime import resolve_device

    out = Path(payload["out_dir"])
    done = read_result(out)
    if done is not None:
        return {**done, "adopted": True}
    threads = int(payload.get("threads") or 0)
    if threads:
        torch.set_num_threads(threads)
    device = payload.get("device") or "auto"
    resolved = resolve_device(device)
    out.mkdir(parents=True, exist_ok=True)
    t0, cpu0 = time.perf_counter(), _cpu_s()
    figures = RUNNERS[payload["kind"]](payload["config"], payload["deps"], out, payload.get("data_root"), device)
    figures["cpu_s"] = round(_cpu_s() - cpu0, 3)
    result = {"figures": figures, "wall_s": round(time.perf_counter() - t0, 3), "peak_rss_mb": round(_peak_rss_mb(), 1),
              "device": _device_name(resolved), "threads": torch.get_num_threads(), "host": platform.node(),
              "pid": os.getpid()}
    atomic_write_json(out / RESULT_FILE, result)
    return result
