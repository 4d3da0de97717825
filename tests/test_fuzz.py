"""Property-based fuzzing (hypothesis) of what a user hands domainlock: artifact files, domain names and
command-line values. Whatever the input: a result or a one-line DomainlockError, never another exception,
a traceback or a silently loaded broken model. Example counts are set per test to keep the file fast."""

from __future__ import annotations

import contextlib
import io
import json
import tempfile
from pathlib import Path

import pytest
import torch
from hypothesis import HealthCheck, event, example, given, settings
from hypothesis import strategies as st

from domainlock.artifact import CARD_FILE, WEIGHTS_FILE, load_artifact, save_artifact
from domainlock.cli.main import main
from domainlock.data import format_domain, load_domain, parse_domain
from domainlock.errors import ArtifactError, DomainlockError
from domainlock.utils.io import sha256_file
from toys import tiny_model

pytestmark = pytest.mark.usefixtures("one_thread")
FIXTURES = [HealthCheck.function_scoped_fixture]   # the module-scoped artifact is shared on purpose


def one_line(e: BaseException) -> str:
    msg = str(e)
    assert msg and len(msg.splitlines()) == 1, repr(msg)
    return msg


# ----------------------------------------------------------------------------------------------- artifact
@pytest.fixture(scope="module")
def base(tmp_path_factory) -> tuple[Path, dict, bytes, torch.Tensor]:
    """A valid tiny artifact: its folder, card, weight bytes and the model's outputs on fixed inputs."""
    model = tiny_model()
    path = save_artifact(tmp_path_factory.mktemp("fuzz") / "art", model, {"domain": "toy", "classes": list("abcd")})
    with torch.no_grad():
        out = model(torch.rand(2, 3, 32, 32, generator=torch.Generator().manual_seed(0)))
    return path, json.loads((path / CARD_FILE).read_text()), (path / WEIGHTS_FILE).read_bytes(), out


def _write(tmp: Path, card: dict | bytes, weights: bytes, rehash: bool = True) -> Path:
    """An artifact folder with these bytes; ``rehash``: the card's sha256/size match the weights, so the
    loader's parsing (not its hash check) is what meets them."""
    path = tmp / "a"
    path.mkdir()
    (path / WEIGHTS_FILE).write_bytes(weights)
    if isinstance(card, dict):
        card = dict(card)
        if rehash:
            card.update(sha256=sha256_file(path / WEIGHTS_FILE), size_bytes=len(weights))
        card = json.dumps(card).encode()
    (path / CARD_FILE).write_bytes(card)
    return path


def _load_or_refuse(path: Path, base_out: torch.Tensor | None = None) -> None:
    """Loading either refuses in one line or gives a model that computes what the saved one did."""
    try:
        art = load_artifact(path)
    except DomainlockError as e:
        one_line(e)
        assert isinstance(e, ArtifactError), type(e)
        return
    assert base_out is not None, "a broken artifact was loaded"
    with torch.no_grad():
        out = art.model(torch.rand(2, 3, 32, 32, generator=torch.Generator().manual_seed(0)))
    assert torch.allclose(out, base_out, atol=1e-3), "the artifact loaded as a different model"


@settings(max_examples=80, deadline=None, database=None, suppress_health_check=FIXTURES)
@given(data=st.binary(max_size=2048), rehash=st.booleans())
@example(data=b"", rehash=True)
@example(data=(2**63).to_bytes(8, "little") + b"{}", rehash=True)        # header length far beyond the file
@example(data=(8).to_bytes(8, "little") + b'{"a":1} ', rehash=True)     # a header that is JSON but no tensors
def test_random_bytes_as_weights(base, data, rehash):
    _, card, _, _ = base
    with tempfile.TemporaryDirectory() as tmp:
        _load_or_refuse(_write(Path(tmp), card, data, rehash))


@settings(max_examples=50, deadline=None, database=None, suppress_health_check=FIXTURES)
@given(frac=st.floats(0, 1, exclude_max=True), flip=st.integers(0, 2**16))
def test_truncated_or_flipped_weights(base, frac, flip):
    _, card, weights, _ = base
    cut = weights[: int(frac * len(weights))]
    with tempfile.TemporaryDirectory() as tmp:
        _load_or_refuse(_write(Path(tmp), card, cut))
    flipped = bytearray(weights)
    flipped[flip % len(weights)] ^= 0xFF
    with tempfile.TemporaryDirectory() as tmp:   # a flipped byte in the header or the data of a tensor
        path = _write(Path(tmp), card, bytes(flipped))
        try:
            art = load_artifact(path)
        except DomainlockError as e:
            one_line(e)
        else:   # a flipped data byte still loads (the hash was rewritten); it is the flipped model, finite
            assert all(torch.isfinite(p).all() for p in art.model.parameters())


def _tensors(weights: bytes) -> dict[str, torch.Tensor]:
    from safetensors.torch import load

    return load(weights)


DTYPES = [torch.float16, torch.bfloat16, torch.float64, torch.int8, torch.int64, torch.uint8, torch.bool]


@settings(max_examples=100, deadline=None, database=None, suppress_health_check=FIXTURES)
@given(action=st.sampled_from(["drop", "extra", "rename", "shape", "dtype"]), pick=st.integers(0, 10**6),
       drop=st.sets(st.integers(0, 27), min_size=1, max_size=5), name=st.text(min_size=1, max_size=12),
       shape=st.lists(st.integers(0, 5), max_size=4), dtype=st.sampled_from(DTYPES))
@example(action="rename", pick=0, drop={0}, name="\r", shape=[], dtype=torch.float16)  # regression: the key was
# quoted raw, so a name with a line break split the error over two lines
def test_wrong_keys_shapes_and_dtypes(base, action, pick, drop, name, shape, dtype):
    _, card, weights, out = base
    sd = _tensors(weights)
    keys = sorted(sd)
    k = keys[pick % len(keys)]
    if action == "drop":
        for i in drop:
            sd.pop(keys[i % len(keys)], None)
    elif action == "extra":
        sd[name] = torch.zeros(shape)
    elif action == "rename":
        sd[k + name] = sd.pop(k)
    elif action == "shape":
        if tuple(shape) == tuple(sd[k].shape):
            shape = [*shape, 1]
        sd[k] = torch.zeros(shape, dtype=sd[k].dtype)
    else:
        sd[k] = sd[k].to(dtype)
    from safetensors.torch import save

    blob = save({n: t.contiguous() for n, t in sd.items()})
    with tempfile.TemporaryDirectory() as tmp:
        path = _write(Path(tmp), card, blob)
        stored, wanted = (sd[k].dtype, _tensors(weights)[k].dtype) if action == "dtype" else (None, None)
        if action == "dtype" and stored != wanted and stored.is_floating_point and wanted.is_floating_point:
            art = load_artifact(path)          # another float width: converted, with a notice
            assert len(art.notices) == 1 and repr(k) in art.notices[0]
            with torch.no_grad():
                got = art.model(torch.rand(2, 3, 32, 32, generator=torch.Generator().manual_seed(0)))
            assert torch.allclose(got, out, atol=0.1)
        elif action == "dtype" and stored in (torch.int8, torch.uint8) and wanted == torch.int64:
            assert load_artifact(path).notices   # a narrower integer counter: converted too
        else:
            _load_or_refuse(path, out if action == "dtype" and stored == wanted else None)


json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(max_size=10),
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=8), inner, max_size=3),
    max_leaves=8)


@settings(max_examples=150, deadline=None, database=None, suppress_health_check=FIXTURES)
@given(data=st.data())
@example(data=None)
def test_garbled_cards(base, data):
    path0, card, weights, out = base
    if data is None:   # regression: a 5000-digit number is valid JSON that Python's int() refuses to read
        raw: dict | bytes = b'{"format": "domainlock-artifact", "format_version": ' + b"9" * 5000 + b"}"
    else:
        kind = data.draw(st.sampled_from(["field", "whole", "bytes", "nested"]))
        if kind == "field":
            raw = dict(card)
            key = data.draw(st.sampled_from(sorted(card) + ["classes", "extra"]))
            raw[key] = data.draw(json_values)
        elif kind == "whole":
            raw = json.dumps(data.draw(json_values)).encode()
        elif kind == "bytes":
            raw = data.draw(st.binary(max_size=200))
        else:
            raw = b"[" * 100_000 + b"]" * 100_000   # deeper than the JSON parser's recursion limit
    with tempfile.TemporaryDirectory() as tmp:
        _load_or_refuse(_write(Path(tmp), raw, weights, rehash=False), out)


# ------------------------------------------------------------------------------------------- domain names
ALPHABET = st.sampled_from(list("wm:@=,.-+ _0123456789eEnaistfo\n\t\x00é/") +
                           ["wm:", "mnist", "syn", "uci-digits", "fashion", "mnistm", "strength", "stride", "channel",
                            "offset", "folder:", "nan", "inf", "1e309", "9" * 30])
domain_names = st.lists(ALPHABET, max_size=12).map("".join) | st.text(max_size=30)


@settings(max_examples=500, deadline=None, database=None)
@given(name=domain_names)
@example(name="mnist@strength=1\nx")                     # regression: the hint quoted a newline raw
@example(name="wm:mnist@strength=0.1234567")             # regression: the canonical name lost digits (:g)
@example(name="wm:mnist@stride=100000000000000000000")   # regression: :g wrote a big stride as 1e+20
def test_parse_domain_round_trips_or_refuses_in_one_line(name):
    try:
        base, wm = parse_domain(name)
    except DomainlockError as e:
        one_line(e)
        return
    canonical = format_domain(base, wm)
    assert parse_domain(canonical) == (base, wm)
    assert format_domain(*parse_domain(canonical)) == canonical


@settings(max_examples=60, deadline=None, database=None)
@given(rest=st.text(max_size=20), split=st.sampled_from(["train", "val", "test", "all", "", "TEST"]))
@example(rest="", split="test")          # regression: folder: with no path read the working directory
@example(rest=" ", split="test")
@example(rest="a\x00b", split="test")    # a NUL byte in the path
def test_folder_domains_refuse_in_one_line(rest, split):
    missing = Path(tempfile.gettempdir()) / "domainlock-fuzz-no-such-dir"
    name = f"folder:{rest}" if not rest.strip() else f"folder:{missing}/{rest}"
    with pytest.raises(DomainlockError) as e:
        load_domain(name, split, root=missing)
    one_line(e.value)
    assert not missing.exists()


# ------------------------------------------------------------------------------------------ command line
def _cli(argv: list[str]) -> tuple[int, str]:
    err = io.StringIO()
    threads = torch.get_num_threads()
    try:
        with contextlib.redirect_stderr(err), contextlib.redirect_stdout(io.StringIO()):
            rc = main(argv)
    except SystemExit as e:   # argparse's own usage errors
        event("argparse usage error")
        assert e.code == 2, (argv, e.code, err.getvalue())
        assert "Traceback" not in err.getvalue()
        assert len(err.getvalue().strip().splitlines()) == 1, err.getvalue()   # one line, not the usage block
        return 2, err.getvalue()
    finally:
        torch.set_num_threads(threads)   # --threads changes it for the process
    text = err.getvalue()
    event("exit 0" if rc == 0 else "refused: " + " ".join(text.split()[2:4]))
    assert rc in (0, 2), (argv, rc, text)
    assert "Traceback" not in text
    if rc == 2:
        lines = [ln for ln in text.splitlines() if ln.strip() and not ln.startswith("domainlock: note: ")]
        assert len(lines) == 1 and lines[0].startswith("domainlock: error: "), (argv, text)
    return rc, text


garbage = (st.sampled_from(["", " ", "nan", "-inf", "1e999", "0x10", "1_000", "5,5", "\u0661\u0662", "--", "-1"])
           | st.text(max_size=6))
ints = st.integers(-10**3, 10**5).map(str) | st.sampled_from(["0", "1", "-1", "2", str(2**63)])
floats = (st.floats(-10, 10, allow_nan=False).map(repr)
          | st.sampled_from(["0", "1", "nan", "inf", "-1", "1e-9", "1e9", "1e400"]))


def _mostly(valid: st.SearchStrategy[str]) -> st.SearchStrategy[str]:
    """Values of the flag's type 19 times in 20 (so most runs get past argparse to domainlock's checks)."""
    return st.integers(0, 19).flatmap(lambda i: garbage if i == 0 else valid)


def _flag_values(cls: type, skip: tuple[str, ...] = ()) -> list[tuple[str, st.SearchStrategy[list[str]]]]:
    """``(flag, strategy of argv pieces)`` for each CLI flag of hyper-parameter dataclass ``cls``."""
    import dataclasses
    import typing

    hints = typing.get_type_hints(cls)
    out = []
    for f in dataclasses.fields(cls):
        if f.metadata.get("cli") is False or f.name in skip:
            continue
        flag, typ = "--" + f.name.replace("_", "-"), hints[f.name]
        if typing.get_origin(typ) is typing.Union:
            typ = typing.get_args(typ)[0]
        if typ is bool:
            value = st.sampled_from([[flag], ["--no-" + flag[2:]]])
        else:
            valid = (st.sampled_from([str(c) for c in f.metadata["choices"]]) if "choices" in f.metadata
                     else ints if typ is int else floats if typ is float else st.text(max_size=8))
            value = _mostly(valid).map(lambda v, flag=flag: [flag, v])
        out.append((flag, value))
    return out


def _pick_flags(data, flags, max_size=4) -> list[str]:
    if not flags:
        return []
    argv: list[str] = []
    for _, value in data.draw(st.lists(st.sampled_from(flags), max_size=max_size, unique_by=lambda f: f[0])):
        argv += data.draw(value)
    return argv


int_lists = st.lists(_mostly(st.integers(-5, 2000).map(str)), max_size=5).map(",".join)


def _strategy_values():
    from domainlock.attacks import STRATEGIES

    return _mostly(st.sampled_from(list(STRATEGIES)))


@settings(max_examples=150, deadline=None, database=None)
@given(data=st.data(), verb=st.sampled_from(["finetune", "slc"]), shots=int_lists, seeds=int_lists,
       strategy=_strategy_values(), target=domain_names)
def test_attack_flags(data, verb, shots, seeds, strategy, target):
    from domainlock.attacks import AttackProtocol

    missing = "/nonexistent/domainlock-model"
    argv = (["attack", "finetune", "--model", missing, "--n", data.draw(_mostly(ints))] if verb == "finetune"
            else ["slc", "--model", missing, "--shots", shots, "--no-cache"])
    argv += ["--target", target, "--seeds", seeds, "--strategy", strategy, "-q"]
    if data.draw(st.booleans()):
        argv += ["--threads", data.draw(_mostly(ints))]
    argv += _pick_flags(data, _flag_values(AttackProtocol))
    assert _cli(argv)[0] == 2   # the model does not exist: every path ends in a clean refusal


def _method_flags():
    from domainlock.methods import get_method_class, method_names

    return {m: _flag_values(get_method_class(m).Hparams, skip=("seed",)) for m in method_names()}


METHOD_FLAGS = _method_flags()


@settings(max_examples=150, deadline=None, database=None)
@given(data=st.data())
def test_protect_hyperparameter_flags(data):
    method = data.draw(st.sampled_from(sorted(METHOD_FLAGS)))
    argv = ["protect", "--method", method, "--model", "/nonexistent/domainlock-model", "--source",
            data.draw(domain_names), "--target", data.draw(domain_names), "-q"]
    if data.draw(st.booleans()):
        argv += ["--setting", data.draw(st.sampled_from(["source-available", "source-free", "data-free"])
                                        | st.text(max_size=8))]
    argv += _pick_flags(data, METHOD_FLAGS[method])
    assert _cli(argv)[0] == 2


@pytest.fixture(scope="module")
def pets(tmp_path_factory) -> Path:
    """A valid image folder: 2 classes of 10 tiny images."""
    from PIL import Image

    root = tmp_path_factory.mktemp("pets")
    for k, cls in enumerate(("cat", "dog")):
        (root / cls).mkdir()
        for i in range(10):
            Image.new("RGB", (6, 6), (20 * i, 200 * k, 0)).save(root / cls / f"{i}.png")
    return root


@settings(max_examples=150, deadline=None, database=None, suppress_health_check=FIXTURES)
@given(data=st.data())
def test_value_flags_of_cheap_verbs(data, pets, tmp_path_factory):
    out = str(tmp_path_factory.getbasetemp() / "fuzz-never-written")
    verb = data.draw(st.sampled_from(["eval", "show", "train", "verify", "synthesize"]))
    missing = "/nonexistent/domainlock-model"
    if verb == "eval":
        argv = ["eval", "--model", missing, "--domains", data.draw(st.lists(domain_names, max_size=3).map(",".join)),
                "--split", data.draw(st.sampled_from(["train", "val", "test"]) | st.text(max_size=6))]
    elif verb == "show":   # a real folder (cheap) or a name that is no built-in domain (nothing is built)
        argv = ["data", "show", data.draw(st.just(f"folder:{pets}") | domain_names.map(lambda d: "x" + d)),
                "--out", out + ".png", "--n", data.draw(_mostly(ints)),
                "--split", data.draw(st.sampled_from(["train", "test"]) | st.text(max_size=6)), "--data-root", out]
    elif verb == "train":
        from domainlock.training import TrainConfig

        argv = ["train", "--domain", "no-such-domain", "--out", out, "-q"]
        argv += _pick_flags(data, _flag_values(TrainConfig))
    elif verb == "verify":
        argv = ["verify", "--model", missing, "--alpha", data.draw(_mostly(floats)),
                "--min-gap", data.draw(_mostly(floats)),
                "--owner-data", data.draw(domain_names)]
    else:
        argv = ["synthesize", "--model", missing, "--n", data.draw(_mostly(ints)), "--out", out,
                "--fidelity-epochs", data.draw(_mostly(ints))]
    rc, _ = _cli(argv)
    if rc == 0:
        assert verb == "show"
        Path(out + ".png").unlink()
    assert not Path(out).exists() and not Path(out + ".png").exists()
