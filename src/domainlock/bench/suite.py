"""Benchmark suites as data: which methods (with hyper-parameter overrides) protect which source models against
which targets, under which attacks, for which seeds.

A suite is a YAML file (the packaged ones live in ``domainlock/bench/suites/``)::

    name: digits-quick
    arch: digitnet
    domains: [mnist, syn]          # the pairs default to every ordered pair of these
    pairs: [mnist->syn]            # or "all"
    eval_domains: [uci-digits]     # unseen domains reported beside source and target
    protocol: ntlbench             # optional: how standard datasets (cifar10, stl10, ...) are built
    seeds: [0]
    train: {epochs: 1}             # TrainConfig overrides for the source models
    methods:
      - {method: sa-map, hparams: {max_steps: 40}}
      - {method: ntp, name: ntp-short, hparams: {iterations: 2}}   # several runs of one method: name them
    attacks:
      - {name: finetune, kind: finetune, pairs: [mnist->syn], params: {shots: [10, 50], protocol: {steps: 20}}}

A method entry may also name a ``preset`` of the method (:attr:`domainlock.methods.Method.presets`);
its ``hparams`` override the preset's values, and ``by_source`` overrides them again for the source domains it
names (what an owner knows of its own data, e.g. ``by_source: {mnist: {synthesis_gray: true}}``).
:func:`load_suite` validates everything before anything runs: an unknown method, domain, attack or key is a
one-line error naming the key path (``methods[1].hparams.alpah``) and the valid choices.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from typing import Any

from ..errors import DomainlockError
from ..utils.hparams import dataclass_from_dict
from .attacks import attack_kind, attack_kinds

SUITE_KEYS = ("name", "description", "arch", "domains", "pairs", "eval_domains", "seeds", "train", "sources",
              "methods", "attacks", "protocol")
METHOD_KEYS = ("method", "name", "preset", "hparams", "by_source")
ATTACK_KEYS = ("name", "kind", "pairs", "params", "other")
#: the run name of the source model itself in every table: the reference each protection is measured from
UNPROTECTED = "unprotected"


class SuiteError(DomainlockError):
    """A suite file that does not validate."""


@dataclass(frozen=True)
class MethodRun:
    """One protection run of a suite: ``name`` labels its rows; ``hparams`` are the full hyper-parameters."""

    name: str
    method: str
    hparams: dict[str, Any]
    overrides: dict[str, Any]
    #: source domain -> its full hyper-parameters where they differ from ``hparams`` (``by_source``)
    by_source: dict[str, dict[str, Any]] = field(default_factory=dict)

    def hparams_for(self, source: str) -> dict[str, Any]:
        """The full hyper-parameters of this run on models of ``source``."""
        return self.by_source.get(source, self.hparams)


@dataclass(frozen=True)
class AttackRun:
    """One attack of a suite on the ``pairs`` it names, with its validated parameters."""

    name: str
    kind: str
    pairs: tuple[tuple[str, str], ...]
    params: Any
    other: str | None = None   #: the domain whose unlabelled images an attacker of its choosing holds

    @property
    def needs_scratch(self) -> bool:
        """Whether its rows need the same attack on a random-init model as a reference."""
        return attack_kind(self.kind).needs_scratch


@dataclass(frozen=True)
class Suite:
    name: str
    description: str
    arch: str
    domains: tuple[str, ...]
    pairs: tuple[tuple[str, str], ...]
    eval_domains: tuple[str, ...]
    seeds: tuple[int, ...]
    train: dict[str, Any]
    methods: tuple[MethodRun, ...]
    attacks: tuple[AttackRun, ...] = field(default=())
    origin: str = ""
    #: domain -> {"artifact", "sha256"} (+ "arch_kwargs" for an ``imported`` model: its scratch start needs them)
    sources: dict[str, dict[str, Any]] = field(default_factory=dict)
    protocol: str | None = None   # how the standard datasets are built (None: as built, else default)

    @property
    def all_domains(self) -> list[str]:
        """Every domain the suite reads, in a stable order."""
        return list(dict.fromkeys([*self.domains, *self.eval_domains]))


def suite_names() -> list[str]:
    """The packaged suites (``domainlock bench --suite NAME``)."""
    return sorted(p.name[:-5] for p in resources.files(__package__).joinpath("suites").iterdir()
                  if p.name.endswith(".yaml"))


def load_suite(spec: str | Path) -> Suite:
    """A packaged suite by name, or a YAML file by path, validated."""
    import yaml

    path = Path(spec)
    if path.suffix in (".yaml", ".yml") or path.exists():
        if not path.is_file():
            raise SuiteError(f"suite file {str(spec)!r} does not exist; packaged suites: {', '.join(suite_names())}")
        text, origin = path.read_text(), str(path)
    elif str(spec) in suite_names():
        text = resources.files(__package__).joinpath("suites", f"{spec}.yaml").read_text()
        origin = f"{spec} (packaged)"
    else:
        raise SuiteError(f"unknown suite {str(spec)!r}; packaged suites: {', '.join(suite_names())} "
                         "(or give the path of a .yaml file)")
    try:
        doc = yaml.safe_load(text)
    except yaml.YAMLError as e:
        where = getattr(e, "problem_mark", None)
        at = f" at line {where.line + 1}" if where is not None else ""
        raise SuiteError(f"suite {origin}: not valid YAML{at}") from None
    return parse_suite(doc, origin)


def _check_keys(obj: Any, allowed: tuple[str, ...], where: str) -> dict[str, Any]:
    if not isinstance(obj, dict):
        raise SuiteError(f"{where}: expected a mapping with keys {', '.join(allowed)}, got {type(obj).__name__}")
    for key in obj:
        if key not in allowed:
            raise SuiteError(f"{where}.{key}: unknown key; valid keys: {', '.join(allowed)}".lstrip("."))
    return obj


def _list(obj: Any, where: str) -> list[Any]:
    if not isinstance(obj, list) or not obj:
        raise SuiteError(f"{where}: expected a non-empty list, got {obj!r}")
    return obj


def _domains(obj: Any, where: str) -> tuple[str, ...]:
    from ..data import parse_domain

    out = []
    for i, name in enumerate(_list(obj, where)):
        try:
            parse_domain(name)
        except DomainlockError as e:
            raise SuiteError(f"{where}[{i}]: {e}") from None
        out.append(name)
    if len(set(out)) != len(out):
        raise SuiteError(f"{where}: a domain is listed twice: {out}")
    return tuple(out)


def _pairs(obj: Any, domains: tuple[str, ...], where: str) -> tuple[tuple[str, str], ...]:
    every = tuple((s, t) for s in domains for t in domains if s != t)
    if obj is None or obj == "all":
        return every
    out = []
    for i, text in enumerate(_list(obj, where)):
        src, sep, tgt = str(text).partition("->")
        pair = (src.strip(), tgt.strip())
        if not sep or pair not in every:
            raise SuiteError(f"{where}[{i}]: {text!r} is not a pair of the suite's domains; valid: "
                             + ", ".join(f"{s}->{t}" for s, t in every))
        out.append(pair)
    return tuple(dict.fromkeys(out))


def _sources(obj: Any, pairs: tuple[tuple[str, str], ...], arch: str) -> dict[str, dict[str, Any]]:
    """``sources: {mnist: runs/src-mnist}``: source models the suite uses as they are instead of training them."""
    from ..artifact import read_card
    from ..models import UNLISTED

    if obj is None:
        return {}
    if not isinstance(obj, dict):
        raise SuiteError(f"sources: expected a mapping of source domain -> artifact folder, got {obj!r}")
    out = {}
    valid = sorted({s for s, _ in pairs})
    for domain, path in obj.items():
        if domain not in valid:
            raise SuiteError(f"sources.{domain}: not a source domain of the suite's pairs; valid: {', '.join(valid)}")
        try:
            card = read_card(path)
        except DomainlockError as e:
            raise SuiteError(f"sources.{domain}: {e}") from None
        if card.get("arch") != arch:
            raise SuiteError(f"sources.{domain}: the artifact's arch {card.get('arch')!r} differs from the suite's "
                             f"arch {arch!r}; set arch: {card.get('arch')}")
        out[domain] = {"artifact": str(Path(path).resolve()), "sha256": str(card.get("sha256"))}
        if arch in UNLISTED:
            out[domain]["arch_kwargs"] = dict(card.get("arch_kwargs") or {})
    return out


def check_sources(suite: Suite) -> None:
    """An arch only an artifact can build (``imported``) cannot train a source model: every source domain of
    the pairs needs its artifact (``sources:`` or ``--source-model``). A one-line :class:`SuiteError` if not."""
    from ..models import UNLISTED

    if suite.arch not in UNLISTED:
        return
    missing = [s for s in dict.fromkeys(src for src, _ in suite.pairs) if s not in suite.sources]
    if missing:
        raise SuiteError(f"suite {suite.origin or suite.name}: arch {suite.arch!r} cannot be trained by a suite; give "
                         f"the source model of {missing[0]!r} (sources: {{{missing[0]}: ARTIFACT}} in the suite, or "
                         f"--source-model {missing[0]}=ARTIFACT)")


def with_sources(suite: Suite, sources: dict[str, str]) -> Suite:
    """``suite`` with source models given on the command line (``--source-model mnist=runs/src-mnist``)."""
    if not sources:
        return suite
    try:
        extra = _sources(sources, suite.pairs, suite.arch)
    except SuiteError as e:
        raise SuiteError(f"--source-model: {e}".replace("sources.", "", 1)) from None
    return dataclasses.replace(suite, sources={**suite.sources, **extra})


def _method_run(obj: Any, where: str) -> MethodRun:
    from ..methods import get_method_class, method_names

    obj = _check_keys(obj, METHOD_KEYS, where)
    if "method" not in obj:
        raise SuiteError(f"{where}.method: missing; valid methods: {', '.join(method_names())}")
    name = obj["method"]
    if name not in method_names():
        raise SuiteError(f"{where}.method: unknown method {name!r}; valid: {', '.join(method_names())}")
    cls = get_method_class(name)
    overrides = obj.get("hparams") or {}

    def full(values: dict[str, Any], at: str) -> dict[str, Any]:
        checked = dataclass_from_dict(cls.Hparams, values, at)
        try:
            hp = cls.make_hparams(obj.get("preset"), **{k: getattr(checked, k) for k in values})
        except DomainlockError as e:
            raise SuiteError(f"{where}.preset: {e}") from None
        try:
            cls().validate(hp, cls.settings[0])
        except DomainlockError as e:
            raise SuiteError(f"{at}: {e}") from None
        return dataclasses.asdict(hp)

    by_source = {}
    for domain, values in (obj.get("by_source") or {}).items():
        if not isinstance(values, dict):
            raise SuiteError(f"{where}.by_source.{domain}: expected a mapping of hyper-parameters")
        by_source[str(domain)] = full({**overrides, **values}, f"{where}.by_source.{domain}")
    return MethodRun(str(obj.get("name", name)), name, full(overrides, f"{where}.hparams"), dict(overrides),
                     by_source)


def parse_suite(doc: Any, origin: str = "<suite>") -> Suite:
    """Validate a suite document (the parsed YAML) and return the :class:`Suite`."""
    from ..data import parse_domain
    from ..models import UNLISTED, arch_names

    try:
        doc = _check_keys(doc, SUITE_KEYS, "")
        for key in ("name", "domains", "methods"):
            if key not in doc:
                raise SuiteError(f"{key}: missing (a suite needs name, domains and methods)")
        arch = doc.get("arch", "digitnet")
        if arch not in arch_names() and arch not in UNLISTED:
            raise SuiteError(f"arch: unknown architecture {arch!r}; valid: {', '.join(arch_names())} (or "
                             f"{', '.join(sorted(UNLISTED))}, with every source model given under sources:)")
        domains = _domains(doc["domains"], "domains")
        pairs = _pairs(doc.get("pairs"), domains, "pairs")
        if not pairs:
            raise SuiteError("pairs: the suite has no (source, target) pair; list at least two domains")
        eval_domains = _domains(doc["eval_domains"], "eval_domains") if doc.get("eval_domains") else ()
        protocol = doc.get("protocol")
        if protocol is not None:
            from ..data.standard import PROTOCOLS

            if protocol not in PROTOCOLS:
                raise SuiteError(f"protocol: unknown data protocol {protocol!r}; valid: {', '.join(PROTOCOLS)}")
        seeds = tuple(doc.get("seeds", [0]))
        if not seeds or any(isinstance(s, bool) or not isinstance(s, int) or s < 0 for s in seeds) \
                or len(set(seeds)) != len(seeds):
            raise SuiteError(f"seeds: expected distinct non-negative integers, got {list(seeds)}")
        from ..training import TrainConfig

        train = dataclasses.asdict(dataclass_from_dict(TrainConfig, doc.get("train"), "train"))
        train.pop("seed")
        sources = _sources(doc.get("sources"), pairs, arch)
        methods = tuple(_method_run(m, f"methods[{i}]") for i, m in enumerate(_list(doc["methods"], "methods")))
        for i, m in enumerate(methods):
            unknown = [d for d in m.by_source if d not in domains]
            if unknown:
                raise SuiteError(f"methods[{i}].by_source: {unknown[0]!r} is not a domain of the suite; valid: "
                                 f"{', '.join(domains)}")
        names = [m.name for m in methods]
        for i, n in enumerate(names):
            if n == UNPROTECTED or names.index(n) != i:
                raise SuiteError(f"methods[{i}].name: {n!r} is {'reserved' if n == UNPROTECTED else 'used twice'}; "
                                 "give each run of a method its own name")
        attacks = []
        for i, a in enumerate(doc.get("attacks") or []):
            where = f"attacks[{i}]"
            a = _check_keys(a, ATTACK_KEYS, where)
            kind = a.get("kind")
            if kind not in attack_kinds():
                raise SuiteError(f"{where}.kind: unknown attack {kind!r}; valid: {', '.join(attack_kinds())}")
            name = str(a.get("name", kind))
            if name in (x.name for x in attacks) or name == "direct":
                raise SuiteError(f"{where}.name: {name!r} is {'reserved' if name == 'direct' else 'used twice'}")
            params = attack_kind(kind).parse_params(a.get("params"), f"{where}.params")
            other = a.get("other")
            if other is not None:
                try:
                    parse_domain(other)
                except DomainlockError as e:
                    raise SuiteError(f"{where}.other: {e}") from None
            attacks.append(AttackRun(name, kind, _pairs(a.get("pairs"), domains, f"{where}.pairs")
                                     if a.get("pairs") is not None else pairs, params, other))
            if other is not None and any(other in p for p in attacks[-1].pairs):
                raise SuiteError(f"{where}.other: {other!r} is a source or target of the attack's pairs; the "
                                 "attacker's own images must come from another domain")
            bad = [p for p in attacks[-1].pairs if p not in pairs]
            if bad:
                raise SuiteError(f"{where}.pairs: {bad[0][0]}->{bad[0][1]} is not among the suite's pairs")
    except SuiteError as e:
        raise SuiteError(f"suite {origin}: {e}") from None
    except DomainlockError as e:
        raise SuiteError(f"suite {origin}: {e}") from None
    return Suite(str(doc["name"]), str(doc.get("description", "")).strip(), arch, domains, pairs, eval_domains,
                 seeds, train, methods, tuple(attacks), origin, sources, protocol)
