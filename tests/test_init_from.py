"""Fine-tuning: `train --init-from RUN/best.pt` starts a new run from a checkpoint's weights
(its EMA's where kept), refuses checkpoints of another model, and resumes from its own
last.pt. On tiny synthetic runs, on CPU."""
import json
import shutil

import pytest
import torch

from competition.model import checkpoint
from competition.train import fit as train_lib
from competition.model.config import build_config, to_dict
from competition.errors import InputError
from competition.model.networks import from_config
from test_cli import one_line_error, run
from test_train import cli_args, folds_csv, tiny  # noqa: F401 (folds_csv: a fixture)

CPU = torch.device("cpu")


def saved_run(path, config, ema=True, seed=0):
    """A best.pt of `config` whose model and EMA weights differ in every tensor (buffers
    too), as a real run's do after training: (path, state)."""
    torch.manual_seed(seed)
    model = from_config(config, "none").state_dict()
    torch.manual_seed(seed + 1)
    averaged = from_config(config, "none").state_dict()
    with torch.no_grad():  # BatchNorm's weights, biases and statistics start the same
        for value in averaged.values():
            value.add_(0.5 if value.is_floating_point() else 7)
    state = {"config": to_dict(config), "model": model, "ema": averaged if ema else None,
             "epoch": 3, "step": 36, "score": {"score": 0.5}}
    checkpoint.save(path, state)
    return path, checkpoint.load(path)


def weights(model) -> dict:
    return {k: v.clone() for k, v in model.state_dict().items()}


def fresh(config, seed=5):
    torch.manual_seed(seed)
    return train_lib.make_model(config, CPU, "none")


def test_init_weights_loads_exactly_the_ema_weights(tmp_path):
    path, state = saved_run(tmp_path / "best.pt", tiny())
    model = fresh(tiny())
    line = checkpoint.init_weights(model, path, tiny(init_from=str(path)))
    loaded = model.state_dict()
    assert set(loaded) == set(state["ema"])
    for key, value in state["ema"].items():
        assert torch.equal(loaded[key], value), key
        assert not torch.equal(loaded[key], state["model"][key]), f"{key}: model == EMA?"
    assert line == f"init: the EMA weights of {path} (epoch 3)"
    # a run without an EMA: its model's weights
    path, state = saved_run(tmp_path / "no_ema.pt", tiny(ema_decay=0.0), ema=False)
    model = fresh(tiny())
    assert checkpoint.init_weights(model, path, tiny()).startswith("init: the model weights")
    for key, value in state["model"].items():
        assert torch.equal(model.state_dict()[key], value), key


def test_fit_starts_from_the_ema_weights_before_its_first_update(synthetic, folds_csv, tmp_path,
                                                                 monkeypatch):
    """What the first training epoch receives, model and EMA, is the checkpoint's EMA bit for
    bit (channels_last changes the layout, not the values); the encoder is built without
    ImageNet weights (offline: no download for weights that are replaced)."""
    path, state = saved_run(tmp_path / "best.pt", tiny())
    seen = {}

    def capture(model, loss_fn, optimizer, scheduler, scaler, ema, *args, **kwargs):
        seen.update(model=weights(model), ema=weights(ema))
        raise KeyboardInterrupt
    monkeypatch.setattr(train_lib, "train_one_epoch", capture)
    with pytest.raises(KeyboardInterrupt):
        train_lib.fit(tiny(init_from=str(path), encoder_weights="imagenet"), synthetic, 0,
                      tmp_path / "run", folds_csv)
    for key, value in state["ema"].items():
        assert torch.equal(seen["model"][key], value), key
        assert torch.equal(seen["ema"][key], value), key
    saved = json.loads((tmp_path / "run" / "config.json").read_text())
    assert saved["init_from"] == str(path) and saved["encoder_weights"] == "imagenet"


@pytest.mark.parametrize("field, overrides, message", [
    ("arch", dict(arch="unet"), "a checkpoint of arch 'unet', this run's is 'deeplabv3'"),
    ("encoder", dict(encoder="resnet34"),
     "a checkpoint of encoder 'resnet34', this run's is 'resnet18'"),
    ("task", dict(task="classify"), "a checkpoint of task 'classify', this run's is 'segment'"),
])
def test_a_checkpoint_of_another_model_is_refused_and_nothing_loaded(tmp_path, field,
                                                                      overrides, message):
    source = (build_config("demo_cpu_cls") if field == "task" else tiny(**overrides))
    path, _ = saved_run(tmp_path / "other.pt", source)
    model = fresh(tiny())
    before = weights(model)
    with pytest.raises(InputError) as e:
        checkpoint.init_weights(model, path, tiny())
    assert str(e.value) == (f"{path}: {message}: --init-from needs the same task, arch, "
                            "encoder")
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())


def test_another_class_count_missing_and_corrupt_checkpoints_are_one_line(tmp_path):
    path, state = saved_run(tmp_path / "best.pt", tiny())
    head = "segmentation_head.0.weight"
    three = {**state, "ema": {**state["ema"], head: state["ema"][head][:3]}}
    checkpoint.save(tmp_path / "three.pt", three)
    model = fresh(tiny())
    with pytest.raises(InputError, match=r"three.pt: its segmentation_head.0.weight has shape "
                                         r"\(3, 256, 1, 1\), this run's model \(4, 256, 1, 1\) "
                                         r"\(another class count\?\)"):
        checkpoint.init_weights(model, tmp_path / "three.pt", tiny())
    extra = {**state, "ema": {**state["ema"], "decoder.extra.weight": torch.zeros(1)}}
    checkpoint.save(tmp_path / "extra.pt", extra)
    with pytest.raises(InputError, match=r"extra.pt: its weights do not fit deeplabv3/resnet18: "
                                         r"decoder.extra.weight is not in this run's model$"):
        checkpoint.init_weights(model, tmp_path / "extra.pt", tiny())
    with pytest.raises(InputError, match=r"none.pt: checkpoint not found"):
        checkpoint.init_weights(model, tmp_path / "none.pt", tiny())
    (tmp_path / "bad.pt").write_bytes(b"not a checkpoint")
    with pytest.raises(InputError, match=r"bad.pt: not a readable checkpoint"):
        checkpoint.init_weights(model, tmp_path / "bad.pt", tiny())


def test_an_image_level_head_in_one_and_not_the_other_is_not_a_mismatch(tmp_path):
    """Fine-tuning a segmenter without a head from one with a head takes the shared weights;
    a run that adds a head starts it untrained. The head's keys are classification_head.*."""
    path, state = saved_run(tmp_path / "head.pt", tiny(cls_weight=0.2))
    assert any(k.startswith("classification_head.") for k in state["ema"])
    model = fresh(tiny())
    line = checkpoint.init_weights(model, path, tiny())
    assert line.endswith("without its image-level head (this run has none)")
    for key, value in model.state_dict().items():
        assert torch.equal(value, state["ema"][key]), key

    path, state = saved_run(tmp_path / "plain.pt", tiny())
    model = fresh(tiny(cls_weight=0.2))
    before = weights(model)
    line = checkpoint.init_weights(model, path, tiny(cls_weight=0.2))
    assert line.endswith("the image-level head starts untrained (the checkpoint has none)")
    for key, value in model.state_dict().items():
        expected = before[key] if key.startswith("classification_head.") else state["ema"][key]
        assert torch.equal(value, expected), key


def test_refusals_come_before_anything_is_written(synthetic, folds_csv, tmp_path):
    path, _ = saved_run(tmp_path / "src" / "best.pt", tiny(encoder="resnet34"))
    out = tmp_path / "run"
    with pytest.raises(InputError, match="encoder 'resnet34', this run's is 'resnet18'"):
        train_lib.fit(tiny(init_from=str(path)), synthetic, 0, out, folds_csv)
    assert not out.exists()
    # the source's own folder would be written over by the new run
    with pytest.raises(InputError, match=r"--init-from .*best.pt lies in --out .*src, which the "
                                         r"new run writes over"):
        train_lib.fit(tiny(init_from=str(path)), synthetic, 0, tmp_path / "src", folds_csv,
                      overwrite=True)
    assert sorted(p.name for p in (tmp_path / "src").iterdir()) == ["best.pt"]


def test_cli_fine_tunes_with_another_loss_and_resumes_from_its_own_last_pt(
        synthetic, folds_csv, tmp_path, monkeypatch):
    """train --init-from with Lovasz at a low LR: config.json and the checkpoints record
    where it started; a resume continues from last.pt (the source may be gone), and a resume
    with another --init-from is another run."""
    src, _ = saved_run(tmp_path / "bce" / "best.pt", tiny())
    out = tmp_path / "lovasz"
    done = run(*cli_args(synthetic, folds_csv, out, "--epochs", 1, "--init-from", src,
                         "--loss", "bce:0.75,lovasz:0.25", "--lr", 1e-4, "--encoder-lr", 1e-4))
    assert done.returncode == 0, done.stderr[-3000:]
    assert f"init: the EMA weights of {src} (epoch 3)" in done.stdout
    saved = json.loads((out / "config.json").read_text())
    assert saved["init_from"] == str(src) and saved["loss"] == "bce:0.75,lovasz:0.25"
    assert saved["lr"] == 1e-4
    for name in ("best.pt", "last.pt"):
        assert checkpoint.load(out / name)["config"]["init_from"] == str(src)

    # resumed (extended to 2 epochs) without its source: epoch 2 starts from last.pt's weights
    shutil.rmtree(tmp_path / "bce")
    last = checkpoint.load(out / "last.pt")
    seen = {}

    def capture(model, loss_fn, optimizer, scheduler, scaler, ema, loader, config, rt, epoch,
                *args, **kwargs):
        seen.update(model=weights(model), ema=weights(ema), epoch=epoch)
        raise KeyboardInterrupt
    config = build_config("demo_cpu", **{k: v for k, v in saved.items()
                                          if k not in ("name", "split")})
    with monkeypatch.context() as patch:
        patch.setattr(train_lib, "train_one_epoch", capture)
        with pytest.raises(KeyboardInterrupt):
            train_lib.fit(config, synthetic, 0, out, folds_csv, resume=True,
                          explicit={"epochs": 2})
    assert seen["epoch"] == 1
    for key, value in last["model"].items():
        assert torch.equal(seen["model"][key], value), key
        assert torch.equal(seen["ema"][key], last["ema"][key]), key
    with pytest.raises(InputError, match=r"cannot resume with another config \(init_from: "):
        train_lib.fit(config, synthetic, 0, out, folds_csv, resume=True,
                      explicit={"init_from": str(tmp_path / "other.pt")})

    one_line_error(run(*cli_args(synthetic, folds_csv, tmp_path / "r34", "--init-from",
                                 out / "best.pt", "--encoder", "resnet34")),
                   "best.pt: a checkpoint of encoder 'resnet18', this run's is 'resnet34'")
    assert not (tmp_path / "r34").exists()
