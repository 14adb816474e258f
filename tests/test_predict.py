"""Test-set prediction: the ensemble's masks against a direct computation, the sample's
rows and order, and bad input that must leave an existing submission untouched."""
import dataclasses
import json
import shutil
import time

import numpy as np
import pandas as pd
import pytest
import torch

from competition.model import checkpoint
from competition.infer import ensemble as infer
from competition.model import forward
from competition.infer import predict
from competition.data import rle
from competition.errors import InputError
from competition.data.images import read_image
from competition.data.postprocess import clean
from competition.infer.predict import predict_test
from competition.infer.search import Params
from competition.data.submission import validate
from conftest import random_checkpoint, small_test_set
from test_cli import one_line_error, run, run_here
from test_infer import assert_one_by_one, record_batches

GATE_CLS = {"kind": "gate", "source": "cls", "value": 0.5}
GATE_AUX = {"kind": "scale", "source": "aux", "value": 5.0}
PARAMS = Params((0.3, 0.5, 0.6, 0.7), (0, 30, 100, 400), (0, 50, 500, 1000))
VIEWS = ("none", "hflip", "vflip")


@pytest.fixture(scope="module")
def data(synthetic, tmp_path_factory):
    """The synthetic test set cut to 4 images, its sample shuffled (the order to follow)."""
    return small_test_set(synthetic, tmp_path_factory.mktemp("predict") / "data", seed=1)


@pytest.fixture(scope="module")
def ckpts(tmp_path_factory):
    root = tmp_path_factory.mktemp("ckpts")
    return [random_checkpoint(root / f"fold{k}.pt", seed=k) for k in (0, 1)]


def test_submission_follows_the_sample_and_equals_a_direct_computation(data, ckpts, tmp_path,
                                                                       monkeypatch):
    out = tmp_path / "submission.csv"
    seen = record_batches(monkeypatch, predict)
    frame = predict_test(data, ckpts, PARAMS, VIEWS, out, batch_size=3, workers=0)
    sample = pd.read_csv(data / "sample_submission.csv", keep_default_na=False)
    written = pd.read_csv(out, keep_default_na=False)
    assert list(written.columns) == list(sample.columns)
    assert list(zip(written.ImageId, written.ClassId)) == list(zip(sample.ImageId, sample.ClassId))
    validate(out, data / "sample_submission.csv")
    assert (frame.EncodedPixels != "").any()

    image_ids = list(dict.fromkeys(sample.ImageId))  # the rows predicted, in the sample's order
    # the stream predicted these images with both checkpoints and the views (in batches of 3
    # against one by one: equal up to fp32 rounding) ...
    images = {i: torch.from_numpy(read_image(data / "test_images" / image_id).transpose(2, 0, 1))
              for i, image_id in enumerate(image_ids)}
    assert_one_by_one(seen, infer.load_ensemble(ckpts, torch.device("cpu")), images, VIEWS)
    # ... and wrote the masks of the very probabilities it used, thresholded, cleaned and
    # encoded here one image at a time
    expected = {}
    for i, image_id in enumerate(image_ids):
        masks = np.stack([(seen[i][c] > t).numpy() for c, t in enumerate(PARAMS.threshold)])
        masks = masks.astype(np.uint8)[None]
        clean(masks, PARAMS.min_component, PARAMS.min_area)
        for c in range(4):
            expected[(image_id, c + 1)] = rle.encode(masks[0, c])
    assert dict(zip(zip(written.ImageId, written.ClassId), written.EncodedPixels)) == expected


class NanUnderAutocast(torch.nn.Module):
    """A model whose logits are all NaN under autocast, as an fp16 overflow makes them."""

    def __init__(self, model):
        super().__init__()
        self.model = model

    def forward(self, x):
        if torch.is_autocast_enabled(x.device.type):
            return torch.full((len(x), 4, *x.shape[-2:]), float("nan"), device=x.device)
        return self.model(x)


def test_an_overflow_under_autocast_is_recomputed_not_an_empty_submission(
        data, ckpts, tmp_path, monkeypatch, capsys):
    """Checkpoints that overflow in fp16 (on a T4) write the submission of fp32 inference,
    not a valid all-empty one; a checkpoint trained with amp off never runs under autocast."""
    paths = [ckpts[0], random_checkpoint(tmp_path / "off.pt", seed=1, amp="off")]
    fp32 = tmp_path / "fp32.csv"
    predict_test(data, paths, PARAMS, VIEWS, fp32, batch_size=3, workers=0)  # the CPU: fp32
    assert pd.read_csv(fp32, keep_default_na=False).EncodedPixels.ne("").any()

    load = checkpoint.model_and_split

    def overflowing(path, device):
        model, config, split = load(path, device)
        return NanUnderAutocast(model), config, split
    monkeypatch.setattr(checkpoint, "model_and_split", overflowing)
    monkeypatch.setattr(predict, "amp_dtype", lambda amp, device: torch.float16)  # a T4's
    monkeypatch.setattr(forward, "recomputed", 0)
    capsys.readouterr()
    out = tmp_path / "submission.csv"
    predict_test(data, paths, PARAMS, VIEWS, out, batch_size=3, workers=0)
    assert out.read_text() == fp32.read_text()  # the same fp32 forwards of the same batches
    # 4 images: batches of 3 and 1, each through the fp16 model (recomputed) and the amp-off one
    assert forward.recomputed == 2
    err = capsys.readouterr().err
    assert err.count("warning: float16 autocast gave non-finite logits (an overflow): the "
                     "batch was recomputed in fp32") == 1
    assert "warning: predict: 2 of 4 batch forwards gave non-finite logits under float16 " \
           "autocast and were recomputed in fp32\n" in err


def test_original_layout_sample(data, ckpts, tmp_path):
    sample = pd.read_csv(data / "sample_submission.csv", keep_default_na=False)
    original = pd.DataFrame({"ImageId_ClassId": sample.ImageId + "_" + sample.ClassId.astype(str),
                             "EncodedPixels": ""})
    path = tmp_path / "sample_original.csv"
    original.to_csv(path, index=False)
    predict_test(data, ckpts[:1], PARAMS, ("none",), tmp_path / "s.csv", 4, 0, sample_path=path)
    written = pd.read_csv(tmp_path / "s.csv", keep_default_na=False)
    assert list(written.columns) == ["ImageId_ClassId", "EncodedPixels"]
    assert written.ImageId_ClassId.tolist() == original.ImageId_ClassId.tolist()


def bad_copy(data, tmp_path):
    bad = tmp_path / "bad"
    shutil.copytree(data, bad)
    return bad


def test_bad_input_is_one_error_and_keeps_the_old_submission(data, ckpts, tmp_path):
    out = tmp_path / "submission.csv"
    out.write_text("the previous submission\n")

    def fails(match, folder=data, paths=ckpts, **kw):
        with pytest.raises(InputError, match=match):
            predict_test(folder, paths, PARAMS, ("none",), out, 4, 0, **kw)
        assert out.read_text() == "the previous submission\n"
        assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".")] == []

    empty = tmp_path / "empty"
    (empty / "test_images").mkdir(parents=True)
    fails("empty/test_images: no test images", folder=empty)

    wrong = bad_copy(data, tmp_path / "w")
    first = sorted((wrong / "test_images").iterdir())[0]
    import cv2
    cv2.imwrite(str(first), np.zeros((100, 200, 3), np.uint8))
    fails(f"{first.name}: image is 200x100, expected 1600x256", folder=wrong)

    missing = bad_copy(data, tmp_path / "m")
    first = sorted((missing / "test_images").iterdir())[0]
    first.unlink()
    fails(f"sample_submission.csv: no image file .*{first.name} \\(1 of 4 missing\\)",
          folder=missing)

    corrupt = bad_copy(data, tmp_path / "c")
    first = sorted((corrupt / "test_images").iterdir())[0]
    first.write_bytes(b"not a jpeg")
    fails(f"{first.name}: unreadable image", folder=corrupt)

    classifier = random_checkpoint(tmp_path / "cls.pt", task="classify")
    fails("cls.pt: a classifier .* pass it with --classifiers", paths=[ckpts[0], classifier])
    gated = dataclasses.replace(PARAMS, gate=(GATE_CLS, *PARAMS.gate[1:]))
    with pytest.raises(InputError, match="gates a class on the classifiers' probabilities: "
                                         "pass the classifier checkpoints with --classifiers"):
        predict_test(data, ckpts, gated, ("none",), out, 4, 0)
    gated = dataclasses.replace(PARAMS, gate=(*PARAMS.gate[:3], GATE_AUX))
    with pytest.raises(InputError, match="none of the segmenters given has one"):
        predict_test(data, ckpts, gated, ("none",), out, 4, 0)
    assert out.read_text() == "the previous submission\n"
    diverged = random_checkpoint(tmp_path / "diverged.pt", scale=float("nan"))  # NaN head
    fails(f"^{diverged}: the model produces non-finite logits in fp32 \\(",
          paths=[ckpts[0], diverged])
    fails("nope.pt: checkpoint not found", paths=[tmp_path / "nope.pt"])


def test_cli_predict_errors_are_one_line(data, ckpts, tmp_path):
    out = tmp_path / "submission.csv"
    out.write_text("keep me\n")
    pp = tmp_path / "postprocess.json"
    pp.write_text(json.dumps({"classes": {c: {"threshold": 0.5, "min_component": 0,
                                              "min_area": 0} for c in "123"}}))
    result = run("predict", "--data", data, "--checkpoints", ckpts[0], "--postprocess", pp,
                 "--out", out, "--workers", 0)
    one_line_error(result, f"error: {pp}: needs \"classes\" with keys 1, 2, 3, 4, "
                   "found ['1', '2', '3']")
    assert out.read_text() == "keep me\n"
    pp.write_text(json.dumps({"classes": {c: {"threshold": 0.5, "min_component": 0,
                                              "min_area": 0} for c in "1234"}, "tta": ["none"]}))
    result = run("predict", "--data", data, "--checkpoints", str(tmp_path / "fold*.pt"),
                 "--postprocess", pp, "--out", out, "--workers", 0)
    one_line_error(result, "no such checkpoint")
    spec = json.loads(pp.read_text())
    bad_tta = tmp_path / "bad_tta.json"
    bad_tta.write_text(json.dumps(dict(spec, tta=["none", "rot90"])))
    result = run("predict", "--data", data, "--checkpoints", ckpts[0], "--postprocess", bad_tta,
                 "--out", out, "--workers", 0)
    one_line_error(result, f"error: {bad_tta}: \"tta\" none,rot90: unknown view 'rot90'")
    result = run("predict", "--data", data, "--checkpoints", ckpts[0], "--postprocess", pp,
                 "--out", out, "--workers", 0, "--tta", "none,spin")
    one_line_error(result, "error: --tta none,spin: unknown view 'spin'")
    diverged = random_checkpoint(tmp_path / "diverged.pt", scale=float("nan"))  # NaN head
    result = run("predict", "--data", data, "--checkpoints", diverged, "--postprocess", pp,
                 "--out", out, "--workers", 0)
    one_line_error(result, f"error: {diverged}: the model produces non-finite logits in fp32 (")
    assert out.read_text() == "keep me\n"
    result = run("predict", "--data", data, "--checkpoints", ckpts[0], "--postprocess", pp,
                 "--out", out, "--workers", 1)
    assert result.returncode == 0, result.stderr
    assert "images/s" in result.stdout and "(validated)" in result.stdout
    validate(out, data / "sample_submission.csv")


def test_projection_by_hand():
    # warm-up point: 4 images at 10 s; now 20 images at 30 s: 16 images in 20 s = 0.8 img/s;
    # 80 images left take 100 s more: 130 s in all
    assert predict.project(30.0, 20, 100, (10.0, 4)) == pytest.approx(130.0)
    assert predict.project(30.0, 100, 100, (10.0, 4)) == pytest.approx(30.0)


class FakeClock:
    def __init__(self, times):
        self.times = iter(times)

    def __call__(self):
        return next(self.times)


def test_the_time_limit_projects_after_the_warm_up_and_stops_past_the_limit(capsys):
    # start at 0; batches of 8 end at 10 s (start-up), 12 s and 14 s: after the third batch
    # 16 images in 4 s = 4 img/s, 76 images left = 19 s more: 33 s in all
    ok = predict.TimeLimit(40.0, 100, clock=FakeClock([0.0, 10.0, 12.0, 14.0, 16.0]))
    ok.update(8)
    ok.update(16)
    assert capsys.readouterr().out == ""  # no projection from the start-up batch alone
    ok.update(24)
    assert capsys.readouterr().out == ("time: 4.00 images/s after 24 of 100 images; projected "
                                       "0.6 min for all (limit 0.7 min)\n")
    ok.update(32)  # 24 images in 6 s: still 33 s; printed once
    assert capsys.readouterr().out == ""
    stop = predict.TimeLimit(30.0, 100, clock=FakeClock([0.0, 10.0, 12.0, 14.0]))
    stop.update(8)
    stop.update(16)
    with pytest.raises(InputError, match=r"^--time-limit 0\.5 min: after 24 of 100 images "
                       r"\(4\.00 images/s\) the whole run projects to 0\.6 min; stopped"):
        stop.update(24)


def test_predict_past_its_time_limit_stops_and_keeps_the_old_submission(data, ckpts, tmp_path,
                                                                         capsys):
    out = tmp_path / "submission.csv"
    out.write_text("the previous submission\n")
    with pytest.raises(InputError, match=r"^--time-limit 0\.0 min: after 3 of 4 images"):
        predict_test(data, ckpts[:1], PARAMS, ("none",), out, 1, 0, time_limit=1e-6)
    assert out.read_text() == "the previous submission\n"
    frame = predict_test(data, ckpts[:1], PARAMS, ("none",), out, 1, 0, time_limit=1e6)
    assert "after 3 of 4 images; projected" in capsys.readouterr().out
    assert len(frame) == 16 and out.read_text() != "the previous submission\n"
    result = run("predict", "--data", data, "--checkpoints", ckpts[0], "--out", out,
                 "--postprocess", tmp_path / "none.json", "--time-limit", "0")
    one_line_error(result, "error: --time-limit 0.0: must be a positive number of minutes")


def test_the_time_limit_counts_from_the_start_of_the_command(data, ckpts, tmp_path, capsys,
                                                             monkeypatch):
    """Kaggle's hour counts the loading of the models too. Loading made to take an hour on
    the clock (time.perf_counter shifted: no waiting), a limit of 30 minutes stops the
    prediction of 4 images, which takes seconds after it."""
    shift, real_clock, real_load = [0.0], time.perf_counter, predict.load_models

    def load_for_an_hour(*args, **kwargs):
        shift[0] += 3600.0
        return real_load(*args, **kwargs)

    monkeypatch.setattr(time, "perf_counter", lambda: real_clock() + shift[0])
    monkeypatch.setattr(predict, "load_models", load_for_an_hour)
    pp = tmp_path / "postprocess.json"
    pp.write_text(json.dumps({"classes": {c: {"threshold": 0.5, "min_component": 0,
                                              "min_area": 0} for c in "1234"}}))
    out = tmp_path / "submission.csv"
    result = run_here(capsys, "predict", "--data", data, "--checkpoints", ckpts[0],
                      "--postprocess", pp, "--tta", "none", "--batch-size", 1, "--workers", 0,
                      "--out", out, "--time-limit", 30)
    one_line_error(result, "error: --time-limit 30.0 min: after 3 of 4 images")
    assert "projects to 60." in result.stderr and not out.exists()
