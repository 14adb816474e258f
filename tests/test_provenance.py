"""Every model knows which split trained it (data/provenance.py): the record against digests
worked out here with hashlib, and the stages that refuse a model of another fold, split or
dataset (oof, train --init-from, pseudo) or accept an older one with one warning line."""
import hashlib
import shutil

import pandas as pd
import pytest
import torch

from competition.data import provenance
from competition.data.folds import make_folds, split
from competition.data.labels import load_train
from competition.errors import InputError
from competition.files import write_csv
from competition.infer import oof, pseudo
from competition.infer.search import Params
from competition.model import checkpoint
from competition.model.config import build_config
from competition.model.networks import from_config
from conftest import random_checkpoint


def sha(text: str) -> str:
    return hashlib.sha256(text.encode()).hexdigest()[:16]


@pytest.fixture(scope="module")
def folds(synthetic, tmp_path_factory):
    """Two folds files of the synthetic dataset: (the first, one regenerated with another
    seed)."""
    image_ids, labels = load_train(synthetic)
    root = tmp_path_factory.mktemp("folds")
    paths = []
    for seed in (0, 1):
        path = root / f"folds{seed}.csv"
        write_csv(path, make_folds(image_ids, labels, n_folds=3, seed=seed))
        paths.append(path)
    return paths


def record(synthetic, folds_csv, fold):
    image_ids, _ = load_train(synthetic, check_images=False)
    return provenance.split_record(synthetic, folds_csv, fold, image_ids,
                                   split(folds_csv, fold, image_ids)[1])


def test_the_record_holds_the_digests_worked_out_here(synthetic, folds, tmp_path):
    image_ids, _ = load_train(synthetic, check_images=False)
    table = pd.read_csv(folds[0])
    val = sorted(table.ImageId[table.fold == 1])
    got = record(synthetic, folds[0], 1)
    assert got == {
        "fold": 1, "folds_csv": str(folds[0]),
        "folds_sha256": sha("\n".join(sorted(f"{i},{k}" for i, k in zip(table.ImageId,
                                                                          table.fold)))),
        "val_sha256": sha("\n".join(val)), "val_images": len(val),
        "dataset": {"train_csv_sha256": hashlib.sha256(
            (synthetic / "train.csv").read_bytes()).hexdigest()[:16], "images": len(image_ids)}}
    # content, not paths: the same folds in another order and folder are the same split
    moved = tmp_path / "elsewhere.csv"
    table.iloc[::-1].to_csv(moved, index=False)
    assert {**record(synthetic, moved, 1), "folds_csv": None} == {**got, "folds_csv": None}
    regenerated = record(synthetic, folds[1], 1)
    assert regenerated["val_sha256"] != got["val_sha256"]
    assert regenerated["folds_sha256"] != got["folds_sha256"]


def test_check_refuses_each_difference_and_warns_on_no_record(synthetic, folds):
    ours = record(synthetic, folds[0], 0)
    assert provenance.check("m.pt", ours, ours) is None
    other_fold = record(synthetic, folds[0], 1)
    with pytest.raises(InputError, match=r"^m\.pt: it was trained as fold 1 of .*folds0\.csv, "
                                         r"used here as fold 0"):
        provenance.check("m.pt", other_fold, ours)
    with pytest.raises(InputError, match=r"^m\.pt: it was trained on another split: .*"
                                         r"folds1\.csv.* is not fold 0 of .*folds0\.csv"):
        provenance.check("m.pt", record(synthetic, folds[1], 0), ours)
    elsewhere = {**ours, "dataset": {"train_csv_sha256": "0" * 16, "images": 7}}
    with pytest.raises(InputError, match=r"another dataset \(train.csv 0{16}, 7 images; here"):
        provenance.check("m.pt", elsewhere, ours)
    warning = provenance.check("m.pt", None, ours)
    assert warning.startswith("warning: m.pt does not record the split") and "\n" not in warning


def test_common_refuses_models_of_two_splits(synthetic, folds):
    a, b = record(synthetic, folds[0], 0), record(synthetic, folds[0], 1)
    shared, warning = provenance.common([("a.pt", a), ("b.pt", b)])
    assert shared == {"folds_sha256": a["folds_sha256"], "dataset": a["dataset"]}
    assert warning is None
    with pytest.raises(InputError, match=r"^c\.pt: trained on another split .* than a\.pt"):
        provenance.common([("a.pt", a), ("c.pt", record(synthetic, folds[1], 2))])
    shared, warning = provenance.common([("a.pt", a), ("old.pt", None), ("old2.pt", None)])
    assert shared["folds_sha256"] == a["folds_sha256"]
    assert warning.startswith("warning: old.pt and 1 more models record no split")


@pytest.fixture(scope="module")
def fold_runs(synthetic, tmp_path_factory):
    """A run folder with fold0/ and fold1/ of folds0.csv over 8 images (two folds), whose
    checkpoints record what the test writes into them."""
    image_ids, _ = load_train(synthetic, check_images=False)
    root = tmp_path_factory.mktemp("runs")
    pd.DataFrame({"ImageId": image_ids[:8], "fold": [0, 1] * 4}).to_csv(root / "folds.csv",
                                                                       index=False)
    return root


def oof_of(synthetic, runs, split_of_fold0, capsys):
    (runs / "fold0").mkdir(exist_ok=True)
    random_checkpoint(runs / "fold0" / "best.pt", split=split_of_fold0)
    oof.run(synthetic, runs, runs / "folds.csv", [0], ("none",), 4, 0, runs / "stats")
    return capsys.readouterr().out


def test_oof_refuses_a_model_of_another_fold_and_warns_on_an_old_one(synthetic, fold_runs,
                                                                     capsys):
    right = record(synthetic, fold_runs / "folds.csv", 0)
    out = oof_of(synthetic, fold_runs, right, capsys)
    assert "warning" not in out and (fold_runs / "stats" / "fold0" / "meta.json").is_file()
    assert pd.read_json(fold_runs / "stats" / "fold0" / "meta.json",
                        typ="series")["split"] == right
    before = (fold_runs / "stats" / "fold0" / "stats.npy").read_bytes()
    with pytest.raises(InputError, match=r"fold0/best\.pt: it was trained as fold 1 of"):
        oof_of(synthetic, fold_runs, record(synthetic, fold_runs / "folds.csv", 1), capsys)
    assert (fold_runs / "stats" / "fold0" / "stats.npy").read_bytes() == before
    out = oof_of(synthetic, fold_runs, None, capsys)
    assert [line for line in out.splitlines() if line.startswith("warning")] == [
        f"warning: {fold_runs / 'fold0' / 'best.pt'} does not record the split it was trained "
        f"on (saved before splits were recorded): not checked against fold 0 of "
        f"{fold_runs / 'folds.csv'}"]


def test_init_from_refuses_another_folds_model_and_loads_nothing(synthetic, folds, tmp_path):
    config = build_config("demo_cpu")
    ours = record(synthetic, folds[0], 0)
    torch.manual_seed(0)
    model = from_config(config, "none")
    before = {k: v.clone() for k, v in model.state_dict().items()}
    for theirs, message in ((record(synthetic, folds[0], 2), "trained as fold 2"),
                            (record(synthetic, folds[1], 0), "trained on another split")):
        random_checkpoint(tmp_path / "other.pt", seed=1, split=theirs)
        with pytest.raises(InputError, match=message):
            checkpoint.init_weights(model, tmp_path / "other.pt", config, ours)
        assert all(torch.equal(v, before[k]) for k, v in model.state_dict().items())
    random_checkpoint(tmp_path / "same.pt", seed=1, split=ours)
    assert checkpoint.init_weights(model, tmp_path / "same.pt", config, ours).startswith(
        "init: the model weights")
    random_checkpoint(tmp_path / "old.pt", seed=1)
    said = checkpoint.init_weights(model, tmp_path / "old.pt", config, ours).splitlines()
    assert said[0].startswith(f"warning: {tmp_path / 'old.pt'} does not record the split")
    assert said[1].startswith("init: the model weights") and len(said) == 2


def test_pseudo_refuses_an_ensemble_of_two_splits(synthetic, folds, tmp_path):
    data = tmp_path / "data"
    (data / "test_images").mkdir(parents=True)
    for path in sorted((synthetic / "test_images").iterdir())[:2]:
        shutil.copy(path, data / "test_images" / path.name)
    a = random_checkpoint(tmp_path / "a.pt", split=record(synthetic, folds[0], 0))
    b = random_checkpoint(tmp_path / "b.pt", split=record(synthetic, folds[1], 1))
    params = Params((0.5,) * 4, (0,) * 4, (0,) * 4)
    with pytest.raises(InputError, match=r"b\.pt: trained on another split .* than .*a\.pt"):
        pseudo.predict(data, [a, b], params, ("none",), 2, 0)
    pred = pseudo.predict(data, [a], params, ("none",), 2, 0)
    assert pred.models["split"]["folds_sha256"] == record(synthetic, folds[0], 0)["folds_sha256"]


def trained_run(synthetic, root, folds_csv, folds=(0,)):
    """A run folder whose fold<k>/ hold a config.json and a best.pt recording fold k of
    `folds_csv` (as `train --folds-csv FILE --out ROOT/fold<k>` leaves them), and no
    ROOT/folds.csv."""
    import json

    from competition.model.config import to_dict

    for k in folds:
        (root / f"fold{k}").mkdir(parents=True)
        split_of = record(synthetic, folds_csv, k)
        random_checkpoint(root / f"fold{k}" / "best.pt", split=split_of)
        (root / f"fold{k}" / "config.json").write_text(json.dumps(
            {**to_dict(build_config("demo_cpu")), "split": split_of}))
    return root


def test_the_folds_file_of_runs_is_the_one_they_record(synthetic, folds, tmp_path):
    shared = tmp_path / "folds.csv"
    shutil.copy(folds[0], shared)
    a = trained_run(synthetic, tmp_path / "a", shared, folds=(0, 1))
    b = trained_run(synthetic, tmp_path / "b", shared)
    assert provenance.trained_folds([a, b]) == (shared, str(a / "fold0" / "config.json"))
    assert provenance.trained_folds([b], [0])[0] == shared
    # another split among the runs: refused, naming both
    c = trained_run(synthetic, tmp_path / "c", folds[1])
    with pytest.raises(InputError, match=rf"^{c / 'fold0' / 'config.json'}: trained on another "
                                         rf"split \({folds[1]}\) than {a / 'fold0'}"):
        provenance.trained_folds([a, c])
    # the file regenerated since (another seed): refused; the hint names no file to make
    shutil.copy(folds[1], shared)
    with pytest.raises(InputError, match=rf"^{shared}: changed since {a / 'fold0'}.*was "
                                         r"trained on it \(assignment digest [0-9a-f]{16}, "
                                         r"recorded [0-9a-f]{16}\).*pass --folds-csv") as e:
        provenance.trained_folds([a])
    assert "run.sh folds" not in str(e.value)
    shared.unlink()
    with pytest.raises(InputError, match=rf"trained on the folds file {shared}, which is not "
                                         r"found .*pass --folds-csv FILE") as e:
        provenance.trained_folds([a])
    assert "run.sh folds" not in str(e.value)
    # runs saved before records: their folder's folds.csv, as before
    old = tmp_path / "old"
    (old / "fold0").mkdir(parents=True)
    with pytest.raises(InputError, match=r"record no folds file .* pass --folds-csv FILE"):
        provenance.trained_folds([old])
    shutil.copy(folds[0], old / "folds.csv")
    assert provenance.trained_folds([old])[0] == old / "folds.csv"


def test_oof_of_runs_trained_on_a_folds_file_elsewhere(synthetic, tmp_path, capsys):
    """`train --folds-csv folds/folds.csv --out folds/X/fold0` writes no folds/X/folds.csv:
    `oof --runs folds/X` reads the folds file the run records (and --folds-csv still wins)."""
    from test_cli import one_line_error, run_here

    image_ids, _ = load_train(synthetic, check_images=False)
    folds_csv = tmp_path / "folds.csv"
    pd.DataFrame({"ImageId": image_ids[:8], "fold": [0, 1] * 4}).to_csv(folds_csv, index=False)
    runs = trained_run(synthetic, tmp_path / "X", folds_csv)
    args = ["oof", "--data", synthetic, "--runs", runs, "--folds", "0", "--tta", "none",
            "--workers", "0", "--batch-size", "4", "--skip-oof-csv", "--out", tmp_path / "out"]
    out = run_here(capsys, *args)
    assert out.returncode == 0, out.stderr
    assert f"folds: {folds_csv} (recorded by {runs / 'fold0' / 'config.json'})" in out.stdout
    meta = pd.read_json(tmp_path / "out" / "oof" / "fold0" / "meta.json", typ="series")
    assert meta["split"]["folds_csv"] == str(folds_csv) and len(meta["image_ids"]) == 4
    one_line_error(run_here(capsys, *args, "--folds-csv", tmp_path / "none.csv"),
                   f"--folds-csv {tmp_path / 'none.csv'}: no such file")
