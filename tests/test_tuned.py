"""Tuned post-processing is applied only to the ensemble it was tuned on (infer/tuned.py):
hand-made postprocess.json records against files given by content, weight and view, and
predict taking the recorded ensemble when given none."""
import hashlib
import json
import shutil

import pytest

from competition import cli
from competition.errors import InputError
from competition.infer import tuned
from conftest import random_checkpoint, small_test_set


def digest(path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()[:16]


@pytest.fixture
def files(tmp_path):
    """Four small files of distinct content: a0, b0 (fold 0), a1, b1 (fold 1)."""
    out = {}
    for name in ("a0", "b0", "a1", "b1", "c"):
        out[name] = tmp_path / f"{name}.pt"
        out[name].write_bytes(name.encode() * 10)
    return out


def result_of(files, weights=(1.0, 1.0), tta=("none", "hflip"), cls=None):
    """A postprocess.json of runs a and b (weights) over folds 0 and 1."""
    def member(name, w):
        return {"checkpoint": str(files[name]), "weight": w, "sha256": digest(files[name])}
    return {"tta": list(tta), "ensemble": {
        f"fold{k}": {"segmenters": [member(f"a{k}", weights[0]), member(f"b{k}", weights[1])],
                     "classifiers": [member(cls, 1.0)] if cls else []} for k in (0, 1)}}


def diff(result, seg, weights=None, views=("none", "hflip"), cls=(), cls_weights=None,
         needs_cls=False):
    return tuned.difference(result, views, seg, weights, list(cls), cls_weights, needs_cls)


def test_the_same_ensemble_by_content_and_weight_share_is_no_difference(files, tmp_path):
    result = result_of(files)
    every = [files[n] for n in ("a0", "a1", "b0", "b1")]
    assert diff(result, every) is None
    assert diff(result, every, [0.5, 0.5, 0.5, 0.5]) is None  # a scale common to all
    renamed = tmp_path / "copy.pt"
    shutil.copy(files["a0"], renamed)
    assert diff(result, [renamed, files["a1"], files["b0"], files["b1"]]) is None
    # recorded with weights 2 and 1: predict's --weights 2,1 over two runs of 2 folds each
    assert diff(result_of(files, (2.0, 1.0)), every, [1.0, 1.0, 0.5, 0.5]) is None


def test_each_difference_is_named(files):
    result = result_of(files)
    a0, a1, b0, b1, c = (files[n] for n in ("a0", "a1", "b0", "b1", "c"))
    assert diff(result, [a0, a1, b0, b1, c]) == (
        f"--checkpoints: {c} is not among the models it was tuned on")
    assert diff(result, [a0, a1, b0]) == (
        f"--checkpoints: {b1}, a model it was tuned on (or a file with its content), is not "
        "given")
    assert diff(result, [a0, a1, b0, b1], [2.0, 2.0, 1.0, 1.0]) == (
        f"--checkpoints: {a0} weighs 0.6667 of its fold's average here, 0.5 in the tuned "
        "ensemble (--weights?)")
    assert diff(result, [a0, a1, b0, b1], views=("none",)) == (
        "--tta none: it was tuned with none,hflip")


def test_classifiers_are_compared_where_a_gate_reads_them(files):
    result = result_of(files, cls="c")
    every = [files[n] for n in ("a0", "a1", "b0", "b1")]
    assert diff(result, every) is None  # no gate reads them: they change no mask
    assert diff(result, every, needs_cls=True).startswith(f"--classifiers: {files['c']}, a "
                                                          "model it was tuned on")
    assert diff(result, every, cls=[files["c"]], needs_cls=True) is None


def test_check_refuses_allows_or_warns(files):
    result, other = result_of(files), [files["c"]]
    with pytest.raises(InputError, match=r"^pp\.json was tuned on another ensemble: "
                                         r"--checkpoints: .*c\.pt is not among .*"
                                         r"--allow-other-models$"):
        tuned.check(result, "pp.json", ("none", "hflip"), other, None, [], None, False, False)
    said = tuned.check(result, "pp.json", ("none", "hflip"), other, None, [], None, False, True)
    assert said.startswith("warning: --allow-other-models: pp.json was tuned on another")
    old = {"tta": ["none"], "ensemble": {"fold0": {"segmenters": [{"checkpoint": "x.pt",
                                                                    "weight": 1.0}]}}}
    said = tuned.check(old, "pp.json", ("none",), other, None, [], None, False, False)
    assert said.startswith("warning: pp.json does not record its models' content")


def test_predict_takes_the_recorded_ensemble_and_refuses_another(synthetic, tmp_path,
                                                                  capsys):
    data = small_test_set(synthetic, tmp_path / "data", n=2)
    a, b = (random_checkpoint(tmp_path / f"{n}.pt", seed=s) for n, s in (("a", 0), ("b", 1)))
    pp = tmp_path / "postprocess.json"
    pp.write_text(json.dumps({
        "classes": {c: {"threshold": 0.5, "min_component": 0, "min_area": 0} for c in "1234"},
        "tta": ["none"], "ensemble": {"fold0": {"segmenters": [
            {"checkpoint": str(a), "weight": 1.0, "sha256": digest(a)}], "classifiers": []}}}))
    common = ["predict", "--data", str(data), "--postprocess", str(pp), "--workers", "0"]
    assert cli.main(common + ["--out", str(tmp_path / "recorded.csv")]) == 0
    assert f"models: the ensemble {pp} was tuned on: 1 segmenter(s)" in capsys.readouterr().out
    assert cli.main(common + ["--checkpoints", str(a), "--out", str(tmp_path / "a.csv")]) == 0
    assert (tmp_path / "a.csv").read_bytes() == (tmp_path / "recorded.csv").read_bytes()
    capsys.readouterr()
    assert cli.main(common + ["--checkpoints", str(b), "--out", str(tmp_path / "b.csv")]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err == [f"error: {pp} was tuned on another ensemble: --checkpoints: {b} is not "
                   "among the models it was tuned on; pass the models it was tuned on (leave "
                   "out --checkpoints and --classifiers to take them), re-run `oof` for these, "
                   "or --allow-other-models"]
    assert not (tmp_path / "b.csv").exists()
    assert cli.main(common + ["--checkpoints", str(b), "--allow-other-models",
                              "--out", str(tmp_path / "b.csv")]) == 0
    assert capsys.readouterr().err.startswith("warning: --allow-other-models: ")
