"""Inputs that used to slip through (issue 11): non-finite weights, domains too small to judge a model on,
weights stored in another dtype, and an image folder's classes meeting a model's outputs. Each is checked
in the library and through the CLI (exit 2, one line, nothing written)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from PIL import Image
from safetensors.torch import save_file

from domainlock.artifact import CARD_FILE, WEIGHTS_FILE, load_artifact, save_artifact
from domainlock.cli.main import main
from domainlock.data import DomainData, load_domain, load_image_folder, require_classes
from domainlock.errors import ArtifactError, DomainlockError, NonFiniteWeightsError
from domainlock.evaluation import align_classes, class_mapping, evaluate
from domainlock.methods import protect
from domainlock.methods.baselines.magnitude import MagnitudeConfig
from domainlock.models import check_finite_weights
from domainlock.utils.io import sha256_file
from toys import C, Loader, tiny_model, toy

pytestmark = pytest.mark.usefixtures("one_thread")

ANIMALS = ["cat", "dog", "bird", "fish"]   # the card's class names, in output order


def _art(tmp_path: Path, model=None, name="art", **card) -> Path:
    return save_artifact(tmp_path / name, model if model is not None else tiny_model(), {"domain": "toy", **card})


def _rewrite_weights(path: Path, tensors: dict[str, torch.Tensor]) -> None:
    """Replace the weights and make the card's hash and size match, as a careless tool would."""
    save_file({k: v.contiguous() for k, v in tensors.items()}, str(path / WEIGHTS_FILE))
    card = json.loads((path / CARD_FILE).read_text())
    card.update(sha256=sha256_file(path / WEIGHTS_FILE), size_bytes=(path / WEIGHTS_FILE).stat().st_size)
    (path / CARD_FILE).write_text(json.dumps(card))


def _folder(root: Path, counts: dict[str, int]) -> Path:
    """``root/<class>/<i>.png``: class k's images are bright in channel 1 at brightness k/4 (the toy pattern)."""
    for k, (cls, n) in enumerate(counts.items()):
        (root / cls).mkdir(parents=True, exist_ok=True)
        for i in range(n):
            Image.new("RGB", (8, 8), (i, 40 + 50 * k, 0)).save(root / cls / f"{i}.png")
    return root


def run(argv, capsys):
    rc = main([str(a) for a in argv])
    out, err = capsys.readouterr()
    return rc, out, err


def one_line_error(err: str) -> str:
    lines = [ln for ln in err.strip().splitlines() if ln.strip()]
    assert len(lines) == 1 and lines[0].startswith("domainlock: error: ") and "Traceback" not in err, err
    return lines[0]


# ----------------------------------------------------------------------------------- 1. NaN / inf weights
def _poisoned():
    m = tiny_model()
    with torch.no_grad():
        m.encoder[1].weight.view(-1)[:3] = float("nan")
    return m


def test_finite_check_names_the_tensor_and_counts():
    check_finite_weights(tiny_model())   # a clean model passes
    with pytest.raises(NonFiniteWeightsError) as e:
        check_finite_weights(_poisoned())
    assert str(e.value) == ("model weight 'encoder.1.weight' holds 3 NaN / 0 inf values; "
                            "the model is corrupt or its training diverged")
    m = tiny_model()
    with torch.no_grad():
        m.head.bias[:3] = torch.tensor([float("nan"), float("-inf"), float("inf")])
        m.encoder[2].running_var[0] = float("inf")
    with pytest.raises(NonFiniteWeightsError, match=r"'head.bias' holds 1 NaN / 2 inf values \(and 1 more tensor\);"):
        check_finite_weights(m)
    m = tiny_model()
    with torch.no_grad():
        m.encoder[2].running_var[:2] = float("inf")
    with pytest.raises(NonFiniteWeightsError, match=r"model buffer 'encoder.2.running_var' holds 0 NaN / 2 inf"):
        check_finite_weights(m)


def test_load_artifact_refuses_non_finite_weights(tmp_path):
    path = _art(tmp_path, _poisoned())
    with pytest.raises(ArtifactError, match=r"'encoder.1.weight' holds 3 NaN / 0 inf values; the artifact is "
                                            r"corrupt or its training diverged"):
        load_artifact(path)


def test_evaluate_and_protect_refuse_a_non_finite_module():
    data = toy("src", "test")
    with pytest.raises(NonFiniteWeightsError, match="encoder.1.weight"):
        evaluate(_poisoned(), [data], device="cpu")
    loader = Loader()
    with pytest.raises(NonFiniteWeightsError, match="encoder.1.weight"):
        protect(_poisoned(), "magnitude", source="src", hparams=MagnitudeConfig(finetune_epochs=0), device="cpu",
                progress=False, loader=loader)
    assert loader.calls == []   # refused before any data was read


def test_cli_refuses_a_non_finite_artifact(tmp_path, capsys):
    path = _art(tmp_path, _poisoned())
    rc, out, err = run(["protect", "--method", "magnitude", "--model", path, "--source", "mnist",
                        "--out", tmp_path / "out", "--device", "cpu", "-q"], capsys)
    line = one_line_error(err)
    assert rc == 2 and "'encoder.1.weight' holds 3 NaN" in line and not (tmp_path / "out").exists()
    rc, out, err = run(["eval", "--model", path, "--domains", "mnist", "--device", "cpu"], capsys)
    assert rc == 2 and "NaN" in one_line_error(err) and out == ""


# ------------------------------------------------------------------------ 2. too few classes or samples
def test_require_classes_on_synthetic_data():
    x = torch.zeros(3, 3, 8, 8)
    with pytest.raises(DomainlockError, match=r"^one has 1 class \('a'\); a domain needs at least 2$"):
        require_classes(DomainData("one", "test", x, torch.zeros(3, dtype=torch.long), 1, ["a"]))
    with pytest.raises(DomainlockError, match=r"^few split test has 3 samples for 4 classes \(none of '3'\); need "
                                              r"at least one per class$"):
        require_classes(DomainData("few", "test", x, torch.tensor([0, 1, 2]), 4))
    ok = DomainData("ok", "test", x, torch.tensor([0, 0, 1]), 2)
    assert require_classes(ok) is ok
    with pytest.raises(DomainlockError, match="3 samples for 4 classes"):
        evaluate(tiny_model(), [DomainData("few", "test", x, torch.tensor([0, 1, 2]), 4)], device="cpu")
    with pytest.raises(DomainlockError, match="has 1 class"):
        evaluate(tiny_model(), [DomainData("one", "test", x, torch.zeros(3, dtype=torch.long), 1)], device="cpu")


def test_folder_with_one_class_or_an_empty_class_is_refused(tmp_path):
    one = _folder(tmp_path / "one", {"cat": 3})
    with pytest.raises(DomainlockError, match=r"has 1 class \('cat'\); a domain needs at least 2"):
        load_image_folder(one)
    with pytest.raises(DomainlockError, match=r"has 1 class \('cat'\)"):
        load_domain(f"folder:{one}", "test")
    empty = _folder(tmp_path / "empty", {"cat": 3})
    (empty / "dog").mkdir()
    with pytest.raises(DomainlockError, match=r"class folder\(s\) 'dog' of image folder .* hold no images"):
        load_image_folder(empty)
    with pytest.raises(DomainlockError, match="needs the path"):
        load_domain("folder:", "test")


def test_folder_split_needs_one_image_per_class(tmp_path):
    small = _folder(tmp_path / "small", {"cat": 3, "dog": 2})   # test split: 1 image of 5
    with pytest.raises(DomainlockError) as e:
        load_domain(f"folder:{small}", "test")
    msg = str(e.value)
    assert msg.startswith(f"folder:{small} split test has 1 image for 2 classes (none of ")
    assert "need at least one per class: add images" in msg and "10 per class always suffice" in msg
    assert "\n" not in msg
    enough = _folder(tmp_path / "enough", {"cat": 10, "dog": 10})
    for split in ("train", "val", "test"):
        assert load_domain(f"folder:{enough}", split).class_counts()[0] >= 1


def test_cli_refuses_a_folder_too_small(tmp_path, capsys):
    path = _art(tmp_path)
    small = _folder(tmp_path / "small", {"cat": 1, "dog": 1})
    rc, out, err = run(["eval", "--model", path, "--domains", f"folder:{small}", "--device", "cpu"], capsys)
    line = one_line_error(err)
    assert rc == 2 and "split test has 0 images for 2 classes" in line and out == ""
    rc, out, err = run(["attack", "finetune", "--model", path, "--target", f"folder:{small}", "--n", "2",
                        "--out", tmp_path / "ft", "--device", "cpu", "-q"], capsys)
    assert rc == 2 and "split test has 0 images" in one_line_error(err) and not (tmp_path / "ft").exists()


# ------------------------------------------------------------------------------- 3. another dtype stored
def test_float16_weights_are_converted_with_a_notice(tmp_path):
    m = tiny_model()
    path = _art(tmp_path, m.half())
    art = load_artifact(path)
    assert all(p.dtype == torch.float32 for p in art.model.parameters())
    assert len(art.notices) == 1
    assert "stores 24 tensors as float16 (e.g. 'encoder.0.mean') where digitnet uses float32" in art.notices[0]
    x = torch.rand(2, 3, 32, 32)
    with torch.no_grad():
        assert torch.allclose(art.model(x), m.float()(x), atol=1e-5)
    assert load_artifact(_art(tmp_path, tiny_model(), name="plain")).notices == []


@pytest.mark.parametrize("key, dtype, expect", [
    ("encoder.1.weight", torch.int32, "tensor 'encoder.1.weight' is stored as int32 but digitnet expects float32"),
    ("head.bias", torch.bool, "tensor 'head.bias' is stored as bool but digitnet expects float32"),
    ("encoder.2.num_batches_tracked", torch.float32,
     "tensor 'encoder.2.num_batches_tracked' is stored as float32 but digitnet expects int64"),
])
def test_non_float_weights_are_refused(tmp_path, key, dtype, expect):
    path = _art(tmp_path)
    sd = tiny_model().state_dict()
    sd[key] = sd[key].to(dtype)
    _rewrite_weights(path, sd)
    with pytest.raises(ArtifactError) as e:
        load_artifact(path)
    assert expect in str(e.value) and "re-save" in str(e.value)


def test_cli_prints_the_conversion_note_and_refuses_int_weights(tmp_path, capsys):
    half = _art(tmp_path, tiny_model().half(), name="half")
    folder = _folder(tmp_path / "f", {"0": 10, "1": 10})
    rc, out, err = run(["eval", "--model", half, "--domains", f"folder:{folder}", "--json", "--device", "cpu"], capsys)
    assert rc == 0, err
    json.loads(out)   # stdout is only the JSON
    notes = [ln for ln in err.splitlines() if ln.startswith("domainlock: note: ")]
    assert any("float16" in n for n in notes) and "Traceback" not in err
    bad = _art(tmp_path, name="int")
    sd = tiny_model().state_dict()
    sd["head.weight"] = sd["head.weight"].to(torch.int64)
    _rewrite_weights(bad, sd)
    rc, out, err = run(["protect", "--method", "magnitude", "--model", bad, "--source", "mnist",
                        "--out", tmp_path / "out", "--device", "cpu", "-q"], capsys)
    assert rc == 2 and "stored as int64" in one_line_error(err) and not (tmp_path / "out").exists()


# ------------------------------------------------------------------- 4. folder classes vs model outputs
def _fdata(classes, labels, name="folder:/pets"):
    return DomainData(name, "test", torch.zeros(len(labels), 3, 8, 8), torch.tensor(labels), len(classes),
                      list(classes))


def test_class_mapping_by_name_in_sorted_order_or_refused():
    data = _fdata(["bird", "cat"], [0, 1, 1])                 # a folder's sorted classes
    mapping, msg = class_mapping(ANIMALS, data)
    assert mapping == [2, 0]
    assert msg == ("folder:/pets classes -> model outputs, by name from the artifact card (2 of the model's 4 "
                   "classes): bird->2, cat->0")
    mapping, msg = class_mapping(None, data, num_outputs=4)
    assert mapping == [0, 1] and msg.startswith("the model's card names no classes, so folder:/pets classes -> "
                                                "model outputs in sorted order: bird->0, cat->1")
    with pytest.raises(DomainlockError, match=r"has class\(es\) 'cow' that the model does not output; its card's "
                                              r"classes are: cat, dog, bird, fish"):
        class_mapping(ANIMALS, _fdata(["cat", "cow"], [0, 1]))
    with pytest.raises(DomainlockError, match="has 2 classes but the model has 1 outputs"):
        class_mapping(None, data, num_outputs=1)


def test_align_classes_remaps_labels_by_name():
    data = _fdata(sorted(ANIMALS), [0, 1, 2, 3])             # bird, cat, dog, fish
    out, msg = align_classes(data, ANIMALS)
    assert out.y.tolist() == [2, 0, 1, 3] and out.classes == ANIMALS and out.num_classes == 4
    assert "bird->2, cat->0, dog->1, fish->3" in msg
    again, _ = align_classes(out, ANIMALS)                    # idempotent
    assert again.y.tolist() == [2, 0, 1, 3]
    plain = toy("src", "test")
    assert align_classes(plain, ANIMALS) == (plain, None)     # only folder domains are mapped
    with pytest.raises(DomainlockError, match=r"has 2 of the model's 4 classes \(missing 'dog', 'fish'\)"):
        align_classes(_fdata(["bird", "cat"], [0, 1]), ANIMALS, every_class=True)


class ReadsChannel(torch.nn.Module):
    """Output = round(4 * mean of channel 1) (the toy pattern), as one-hot logits."""

    num_classes = 4

    def __init__(self):
        super().__init__()
        self.w = torch.nn.Parameter(torch.zeros(1))

    def forward(self, x):
        k = (x[:, 1].mean((1, 2)) * 4).round().long().clamp(0, 3)
        return torch.nn.functional.one_hot(k, 4).float() + self.w


def test_evaluate_maps_a_folder_by_the_card_names():
    # images of output k; the folder (sorted) calls them bird, cat, dog, fish = outputs 2, 0, 1, 3
    y_out = torch.tensor([2, 0, 1, 3] * 3)
    x = torch.zeros(12, 3, 8, 8)
    x[:, 1] = (y_out.float() / 4).view(-1, 1, 1)
    inv = {2: 0, 0: 1, 1: 2, 3: 3}
    data = DomainData("folder:/pets", "test", x, torch.tensor([inv[int(k)] for k in y_out]), 4, sorted(ANIMALS))
    res = evaluate(ReadsChannel(), [data], device="cpu", classes=ANIMALS)["folder:/pets"]
    assert res["accuracy"] == 1.0
    assert res["class_mapping"] == {"bird": 2, "cat": 0, "dog": 1, "fish": 3} and "by name" in res["note"]
    res = evaluate(ReadsChannel(), [data], device="cpu")["folder:/pets"]   # no names: sorted order, and said so
    assert res["accuracy"] == 0.25 and "sorted order" in res["note"]


def test_train_source_records_classes_and_protect_maps_a_folder(tmp_path):
    from domainlock.training import TrainConfig, train_source

    splits = {s: toy("src", s, 16) for s in ("train", "val", "test")}
    for d in splits.values():
        d.classes = list(ANIMALS)
    art = train_source("src", "digitnet", TrainConfig(epochs=1, batch_size=8, augment="none"),
                       tmp_path / "src", device="cpu", progress=False, splits=splits,
                       arch_kwargs={"width": 4, "feat_dim": 16})
    assert art.card["classes"] == ANIMALS and load_artifact(tmp_path / "src").classes == ANIMALS

    def folder_loader(name, split, root=None):
        d = toy("src", split, 16)
        return DomainData(name, split, d.x, d.y, C, sorted(ANIMALS))

    res = protect(tmp_path / "src", "magnitude", source="folder:/pets", hparams=MagnitudeConfig(finetune_epochs=0),
                  device="cpu", progress=False, loader=folder_loader)
    assert res.notices == ["folder:/pets classes -> model outputs, by name from the artifact card: bird->2, cat->0, "
                           "dog->1, fish->3"]
    assert res.card["classes"] == ANIMALS


def test_cli_notes_the_mapping_and_refuses_unknown_classes(tmp_path, capsys):
    path = _art(tmp_path, classes=ANIMALS)
    pets = _folder(tmp_path / "pets", {"cat": 10, "dog": 10})
    rc, out, err = run(["eval", "--model", path, "--domains", f"folder:{pets}", "--json", "--device", "cpu"], capsys)
    assert rc == 0, err
    res = json.loads(out)["results"][f"folder:{pets}"]
    assert res["class_mapping"] == {"cat": 0, "dog": 1}
    assert err.strip() == (f"domainlock: note: folder:{pets} classes -> model outputs, by name from the artifact "
                           "card (2 of the model's 4 classes): cat->0, dog->1")
    farm = _folder(tmp_path / "farm", {"cat": 10, "cow": 10})
    rc, out, err = run(["eval", "--model", path, "--domains", f"folder:{farm}", "--device", "cpu"], capsys)
    assert rc == 2 and "'cow' that the model does not output" in one_line_error(err) and out == ""
    rc, out, err = run(["attack", "finetune", "--model", path, "--target", f"folder:{farm}", "--n", "4",
                        "--out", tmp_path / "ft", "--device", "cpu", "-q"], capsys)
    assert rc == 2 and "'cow'" in one_line_error(err) and not (tmp_path / "ft").exists()
    rc, out, err = run(["slc", "--model", path, "--target", f"folder:{pets}", "--shots", "2,4", "--no-cache",
                        "--out", tmp_path / "slc", "--no-plot", "--device", "cpu", "-q"], capsys)
    assert rc == 2 and "missing 'bird', 'fish'" in one_line_error(err) and not (tmp_path / "slc").exists()


def test_cli_data_show_refuses_a_non_positive_n(tmp_path, capsys):
    pets = _folder(tmp_path / "pets", {"cat": 10, "dog": 10})
    for n in ("0", "-3"):
        rc, out, err = run(["data", "show", f"folder:{pets}", "--out", tmp_path / "g.png", "--n", n], capsys)
        assert rc == 2 and f"--n={n}" in one_line_error(err) and not (tmp_path / "g.png").exists()
    rc, out, err = run(["data", "show", f"folder:{pets}", "--out", tmp_path / "g.png", "--n", "4"], capsys)
    assert rc == 0 and (tmp_path / "g.png").exists()
