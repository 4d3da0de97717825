"""What one node of the benchmark graph computes, in whatever process or Ray worker runs it.

:func:`run_node` takes a plain, picklable payload (kind, config, the output folders of the nodes it reads) and
writes into the node's own folder: an artifact for model nodes, then ``result.json`` last and atomically. A
folder with ``result.json`` is a finished node, whoever wrote it: a rerun after a kill adopts it instead of
recomputing, so no finished work is lost and no half-written output is ever read. An attack's learning-curve
points go to the payload's ``points_dir``, shared by the folder's nodes (each point written atomically).
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
    out_figs = {"accuracy_test": prot["accuracy_test"], "sparsity": prot["sparsity"],
                "sparsity_layers": {name: v["sparsity"] for name, v in layers.items()},
                "protect_wall_s": prot["wall_time_s"], "data_read": prot["data_read"]}
    quality = (prot.get("info") or {}).get("pseudo_source_quality")
    if quality is not None:
        out_figs["pseudo_source_quality"] = _pseudo_source_figures(quality, res.extras, out)
    return out_figs


GRID_FILE = "pseudo_source_grid.png"
#: the largest sample grid kept inside the result (and so inside an exported database), in PNG bytes
GRID_INLINE_MAX = 20_000


def _pseudo_source_figures(quality: dict[str, Any], extras: dict[str, Any], out: Path) -> dict[str, Any]:
    """The method's pseudo-source quality block plus its sample grid: a PNG in the node folder (``grid``),
    also inline as base64 (``grid_png``) when it is at most ``GRID_INLINE_MAX`` bytes."""
    import base64

    from ..data.grid import save_grid

    q = dict(quality)
    sample = extras.get("pseudo_source_grid")
    if sample is not None and len(sample[0]):
        x8, y = sample
        rank = [int((y[:i] == y[i]).sum()) for i in range(len(y))]   # row r holds the r-th image of each class
        order = sorted(range(len(y)), key=lambda i: (rank[i], int(y[i])))
        save_grid(x8[order], out / GRID_FILE, nrow=len(set(y.tolist())), y=y[order], upscale=1)
        q["grid"] = GRID_FILE
        png = _small_png(out / GRID_FILE)
        if png is not None:
            q["grid_png"] = base64.b64encode(png).decode("ascii")
    return q


def _small_png(path: Path) -> bytes | None:
    """The PNG at ``path`` if at most ``GRID_INLINE_MAX`` bytes, else re-encoded with an adaptive palette of
    64, then 16 colours (noisy synthesized images compress badly); ``None`` when even that is too big."""
    import io

    from PIL import Image

    png = path.read_bytes()
    for colours in (64, 16):
        if len(png) <= GRID_INLINE_MAX:
            return png
        buf = io.BytesIO()
        Image.open(path).convert("RGB").quantize(colors=colours).save(buf, format="PNG", optimize=True)
        png = buf.getvalue()
    return png if len(png) <= GRID_INLINE_MAX else None


def _run_attack(cfg: dict[str, Any], deps: dict[str, str], out: Path, data_root: Any, device: Any,
                points_dir: str | None = None) -> dict:
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
                    from_scratch=cfg["from_scratch"], data_root=data_root, device=device,
                    cache_dir=Path(points_dir) if points_dir else out / "points")


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
    extra = {"points_dir": payload.get("points_dir")} if payload["kind"] == "attack" else {}
    figures = RUNNERS[payload["kind"]](payload["config"], payload["deps"], out, payload.get("data_root"), device,
                                       **extra)
    figures["cpu_s"] = round(_cpu_s() - cpu0, 3)
    result = {"figures": figures, "wall_s": round(time.perf_counter() - t0, 3), "peak_rss_mb": round(_peak_rss_mb(), 1),
              "device": _device_name(resolved), "threads": torch.get_num_threads(), "host": platform.node(),
              "pid": os.getpid()}
    atomic_write_json(out / RESULT_FILE, result)
    return result
