"""A suite expanded into the graph the engine runs: source models -> protected models -> attack results, and the
table's cells that read them.

Every node is named by a hash of everything that determines its output: its kind and full configuration
(hyper-parameters with defaults filled in, seeds, attack parameters), the keys of the nodes it reads, the
sha256 of the data of every domain it touches and the domainlock version. A change anywhere therefore
recomputes exactly the nodes that depend on it, and two suites that share a node share its result.

A configuration field added to the code after nodes were computed would rename them all. ``ADDED_FIELDS``
lists each such field with the value that does what the code did before it existed; at that value it is
left out of the name, so finished nodes keep theirs (and ``bench --reuse`` finds them in older folders).

A method that reads no target (``df-map``, ``ntl --variant source-only``, ``magnitude``, ...) is run once per
source model and seed and evaluated on every suite domain; each of its pairs reads that one protection.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .._version import __version__
from .suite import UNPROTECTED, MethodRun, Suite

DIRECT = "direct"


@dataclass(frozen=True)
class Node:
    """One unit of work: ``kind`` is ``source``, ``protect`` or ``attack``."""

    key: str
    kind: str
    label: str
    config: dict[str, Any]
    deps: tuple[str, ...] = ()


@dataclass(frozen=True)
class Cell:
    """One row of the results table: ``run`` (a method run or ``unprotected``) on ``source -> target`` for
    ``seed`` under ``attack`` (``direct`` or an attack's name); ``inputs`` names the nodes it reads by role."""

    key: str
    run: str
    method: str
    source: str
    target: str
    seed: int
    attack: str
    inputs: dict[str, str] = field(default_factory=dict)

    @property
    def deps(self) -> tuple[str, ...]:
        return tuple(dict.fromkeys(self.inputs.values()))


@dataclass
class Graph:
    nodes: dict[str, Node]          # in dependency order
    cells: list[Cell]

    def only(self, cells: list[Cell]) -> Graph:
        """The subgraph those cells need."""
        need: set[str] = set()
        stack = [k for c in cells for k in c.deps]
        while stack:
            k = stack.pop()
            if k not in need:
                need.add(k)
                stack.extend(self.nodes[k].deps)
        return Graph({k: n for k, n in self.nodes.items() if k in need}, cells)


# (dotted path in a node's config, the value that reproduces the behaviour from before the field existed); a path
# prefixed ``KIND:`` holds only for attack nodes of that attack kind (other kinds had the field from the start)
ADDED_FIELDS: dict[str, Any] = {
    "train.precision": "fp32",                  # source training in bf16 autocast
    "params.protocol.precision": "fp32",        # the fine-tuning attack's protocol, likewise
    "distill:params.precision": "fp32",         # the distillation attack's student and generator
    "hparams.synthesis_gray": False,            # SF/DF-MAP: grey pseudo-source
    "hparams.keep_restyle": "none",             # SF/DF-MAP: the restyled-target keep term ...
    "hparams.keep_restyle_weight": 1.0,         # ... and its weight
    "hparams.pseudo_source_restyled": 0,        # SF-MAP: the target moved into the source's style ...
    "hparams.restyle_start": "target",          # ... started from the target or from recoloured copies
    "hparams.pseudo_source_recoloured": 0,      # SF-MAP: recoloured target copies in the keep set
    "hparams.restyle_steps": 200,               # SF-MAP: the restyle's steps ...
    "hparams.restyle_precision": "fp32",        # ... and the precision of its forward
}


def _named_part(config: dict[str, Any], prefix: str = "", kind: str | None = None) -> dict[str, Any]:
    """``config`` without the :data:`ADDED_FIELDS` that hold their neutral value."""
    kind = config.get("attack") if kind is None and isinstance(config.get("attack"), str) else kind
    out = {}
    for name, value in config.items():
        path = prefix + name
        if isinstance(value, dict):
            out[name] = _named_part(value, path + ".", kind)
            continue
        neutral = [ADDED_FIELDS[p] for p in (path, f"{kind}:{path}") if p in ADDED_FIELDS]
        if not any(type(v) is type(value) and v == value for v in neutral):
            out[name] = value
    return out


def node_key(kind: str, config: dict[str, Any], deps: tuple[str, ...], digests: dict[str, str]) -> str:
    blob = json.dumps({"kind": kind, "config": _named_part(config), "deps": list(deps), "data": digests,
                       "version": __version__}, sort_keys=True, default=str)
    return hashlib.sha256(blob.encode()).hexdigest()[:16]


def _reads_target(run: MethodRun, source: str) -> bool:
    from ..methods import get_method_class

    cls = get_method_class(run.method)
    method = cls()
    hp = cls.Hparams(**run.hparams_for(source))
    return cls.settings[0] != "data-free" and method.reads_target(hp)   # as protect() decides in its default setting


def expand(suite: Suite, digests: dict[str, str]) -> Graph:
    """The graph of ``suite``; ``digests`` maps every base domain the suite reads to its data sha256."""
    from ..data import parse_domain

    nodes: dict[str, Node] = {}

    def data(*domains: str) -> dict[str, str]:
        return {d: digests[parse_domain(d)[0]] for d in domains}

    def add(kind: str, label: str, config: dict[str, Any], deps: tuple[str, ...], domains: list[str]) -> str:
        key = node_key(kind, config, deps, data(*domains))
        nodes.setdefault(key, Node(key, kind, label, config, deps))
        return key

    everywhere = suite.all_domains
    sources: dict[tuple[str, int], str] = {}
    for src in dict.fromkeys(s for s, _ in suite.pairs):
        for seed in suite.seeds:
            if src in suite.sources:   # the user's own model, the same for every seed
                cfg = {"domain": src, **suite.sources[src], "eval_domains": everywhere}
                label = f"source {src} ({Path(suite.sources[src]['artifact']).name})"
            else:
                cfg = {"domain": src, "arch": suite.arch, "train": {**suite.train, "seed": seed},
                       "eval_domains": everywhere}
                label = f"source {src} s{seed}"
            sources[src, seed] = add("source", label, cfg, (), everywhere)

    protected: dict[tuple[str, str, str, int], str] = {}
    for run in suite.methods:
        for src, tgt in suite.pairs:
            per_pair = _reads_target(run, src)
            for seed in suite.seeds:
                target = tgt if per_pair else None
                cfg = {"method": run.method, "hparams": run.hparams_for(src), "source": src, "target": target,
                       "seed": seed, "eval_domains": [d for d in everywhere if d not in (src, target)]}
                label = f"{run.name} {src}->{tgt if per_pair else '*'} s{seed}"
                protected[run.name, src, tgt, seed] = add("protect", label, cfg, (sources[src, seed],), everywhere)

    def attack(att, start: str | None, src: str, tgt: str, seed: int, scratch: bool) -> str:
        from dataclasses import asdict

        from .attacks import attack_kind

        cfg = {"attack": att.kind, "params": asdict(att.params), "target": tgt, "seed": seed,
               "from_scratch": scratch}
        domains = [tgt]
        if attack_kind(att.kind).reads_source:
            cfg["source"] = src
            domains.append(src)
        if att.other is not None:
            cfg["other"] = att.other
            domains.append(att.other)
        if scratch:   # a random-init start depends on the architecture only, not on any weights
            cfg["arch"] = suite.arch
            if "arch_kwargs" in suite.sources.get(src, {}):   # an imported network: the source's builder
                cfg["arch_kwargs"] = suite.sources[src]["arch_kwargs"]
        label = f"{att.name} {f'scratch s{seed}' if scratch else nodes[start].label} on {tgt}"
        return add("attack", label, cfg, () if scratch else (start,), domains)

    cells: list[Cell] = []

    def cell(run: str, method: str, src: str, tgt: str, seed: int, attack_name: str, inputs: dict[str, str]):
        key = node_key("cell", {"suite": suite.name, "run": run, "attack": attack_name, "pair": [src, tgt],
                                "seed": seed},
                       tuple(sorted(inputs.items())), {})
        cells.append(Cell(key, run, method, src, tgt, seed, attack_name, inputs))

    for src, tgt in suite.pairs:
        for seed in suite.seeds:
            source = sources[src, seed]
            cell(UNPROTECTED, UNPROTECTED, src, tgt, seed, DIRECT, {"source": source})
            for run in suite.methods:
                cell(run.name, run.method, src, tgt, seed, DIRECT,
                     {"source": source, "protected": protected[run.name, src, tgt, seed]})
            for att in suite.attacks:
                if (src, tgt) not in att.pairs:
                    continue
                unprot = attack(att, source, src, tgt, seed, False)
                refs = {"source": source, "unprotected_attack": unprot}
                if att.needs_scratch:
                    refs["scratch_attack"] = attack(att, None, src, tgt, seed, True)
                cell(UNPROTECTED, UNPROTECTED, src, tgt, seed, att.name, {**refs, "protected_attack": unprot})
                for run in suite.methods:
                    prot = protected[run.name, src, tgt, seed]
                    cell(run.name, run.method, src, tgt, seed, att.name,
                         {**refs, "protected": prot, "protected_attack": attack(att, prot, src, tgt, seed, False)})
    return Graph(nodes, cells)
