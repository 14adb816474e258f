"""Experiment files (`train --config-file`): precedence, refusals, the files in experiments/,
and a run's config.json repeating the run. No model is trained: cmd_train's fit is replaced
by a recorder, and resuming is checked on a last.pt that holds a config alone."""
import pytest
import segmentation_models_pytorch as smp

from competition.model import checkpoint
from competition.train import fit as train_lib
from competition.model.config import PRESETS, build_config, from_dict, to_dict
from competition.errors import InputError
from competition.model.experiments import load, resolve
from competition.files import write_json
from competition.train.losses import LOSSES
from competition.model.networks import ARCHITECTURES, TV_BACKBONES
from test_cli import ROOT, one_line_error, run_here


@pytest.fixture
def fits(monkeypatch):
    """The (config, explicit) of every fit cmd_train calls; nothing is trained."""
    calls = []

    def record(config, data, fold, out, folds_csv, resume, overwrite, explicit, device):
        calls.append((config, explicit))
        return {}
    monkeypatch.setattr(train_lib, "fit", record)
    return calls


def train(capsys, *args):
    return run_here(capsys, "train", "--fold", 0, "--out", "unused", *args)


def test_defaults_then_preset_then_file_then_command_line(tmp_path, capsys, fits):
    path = tmp_path / "exp.yaml"
    path.write_text("preset: demo_cpu\n"
                    "lr: 1e-3             # YAML 1.1 text; the number it means\n"
                    "epochs: 3\n"
                    "crop_width: 512\n"
                    "pos_weight: [1, 2, 1, 3]  # integers are fine numbers\n")
    assert train(capsys, "--config-file", path, "--epochs", 2).returncode == 0
    (config, explicit), = fits
    assert config.amp == "auto", "default: no preset, file or option sets it"
    assert (config.encoder, config.crop_height) == ("resnet18", 128), "the preset's"
    assert (config.lr, config.crop_width) == (0.001, 512), "the file's over the preset's"
    assert config.pos_weight == (1.0, 2.0, 1.0, 3.0)
    assert config.epochs == 2, "the command line's over the file's 3 and the preset's 6"
    assert config.name == "demo_cpu"
    assert explicit == {"lr": 0.001, "epochs": 2, "crop_width": 512,
                        "pos_weight": (1.0, 2.0, 1.0, 3.0), "name": "demo_cpu"}

    # --preset on the command line replaces the file's preset; the file still wins over it
    assert train(capsys, "--config-file", path, "--preset", "deeplabv3_r34").returncode == 0
    config, explicit = fits[-1]
    assert (config.name, config.encoder, config.crop_height) == ("deeplabv3_r34", "resnet34", 256)
    assert (config.lr, config.epochs, explicit["name"]) == (0.001, 3, "deeplabv3_r34")

    # a file that names no preset starts from the defaults, and names none for --resume
    path.write_text("encoder: resnet18\n")
    config, explicit = resolve(path, None, {"lr": None})
    assert config == build_config(encoder="resnet18") and explicit == {"encoder": "resnet18"}


@pytest.mark.parametrize("text, parts", [
    ("lrr: 0.1\n", ["unknown key 'lrr'", "did you mean 'lr'?"]),
    ("prest: demo_cpu\n", ["unknown key 'prest'", "did you mean 'preset'?"]),
    ("lr: fast\n", ["lr 'fast': expected a number, got text"]),
    ("epochs: yes\n", ["epochs True: expected an integer, got true/false"]),
    ("seed: 2.0\n", ["seed 2.0: expected an integer, got a number"]),
    ("channels_last: 1\n", ["channels_last 1: expected true or false, got an integer"]),
    ("amp: 16\n", ["amp 16: expected text, got an integer"]),
    ("val_min_area: [600, 600, 900]\n", ["val_min_area [600, 600, 900]: expected a list of "
                                         "4 integers, e.g. [600, 600, 900, 2000]"]),
    ("pos_weight: 2.0\n", ["pos_weight 2.0: expected a list of 4 numbers"]),
    ("atrous_rates_h: [3, 6, true]\n", ["atrous_rates_h [3, 6, True]: expected a list of 3 "
                                        "integers"]),
    ("epochs: 0\n", ["epochs 0: must be at least 1"]),
    ("hflip_p: 1.5\n", ["hflip_p 1.5: a probability"]),
    ("crop_width: 500\n", ["crop_height x crop_width 256x500", "multiples of 32"]),
    ("preset: demo\n", ["preset 'demo': unknown preset; valid: deeplabv3_r34"]),
    ("preset: demo_cpu\nname: deeplabv3_r34\n", ["preset 'demo_cpu' and name 'deeplabv3_r34'"]),
    ("lr: 0.1\nepochs: [1, 2\nseed: 0\n", ["line 3: not valid YAML", "flow sequence from line 2"]),
    ("- lr: 0.1\n", ["expected a mapping of training-config fields", "got a list"]),
    ("just words\n", ["expected a mapping", "got text"]),
    ("", ["the file is empty"]),
])
def test_refusals_are_one_line_naming_the_file_key_and_value(tmp_path, capsys, fits, text,
                                                              parts):
    path = tmp_path / "exp.yaml"
    path.write_text(text)
    one_line_error(train(capsys, "--config-file", path), f"error: {path}", *parts)
    assert not fits, "refused before training"


def test_a_missing_file_is_one_line(tmp_path, capsys, fits):
    one_line_error(train(capsys, "--config-file", tmp_path / "none.yaml"),
                   f"{tmp_path / 'none.yaml'}: experiment file not found")


def test_the_command_line_is_checked_after_the_file(tmp_path, capsys, fits):
    path = tmp_path / "exp.yaml"
    path.write_text("epochs: 3\n")
    out = train(capsys, "--config-file", path, "--epochs", 0)
    one_line_error(out, "error: epochs 0: must be at least 1")
    assert str(path) not in out.stderr, "the file is not to blame for an option's value"


def test_every_experiment_file_loads_passes_check_and_names_what_exists():
    files = sorted((ROOT / "experiments").glob("*.yaml"))
    assert {f.name for f in files} >= {"deeplabv3_r34.yaml", "unet_effb3.yaml",
                                       "bce_lovasz_finetune.yaml", "classifier_r34.yaml",
                                       "demo_cpu.yaml"}
    encoders = set(smp.encoders.get_encoder_names())
    for path in files:
        preset, values = load(path)
        assert preset in PRESETS, path
        config, _ = resolve(path, None, {})
        assert config.arch in ARCHITECTURES, path
        assert config.encoder in (TV_BACKBONES if config.arch == "tv_deeplabv3" else encoders)
        assert {name for name, _ in (term.split(":") for term in config.loss.split(","))} \
            <= set(LOSSES), path
    unet, _ = resolve(ROOT / "experiments" / "unet_effb3.yaml", None, {})
    assert (unet.arch, unet.encoder, unet.task) == ("unet", "efficientnet-b3", "segment")
    classifier, _ = resolve(ROOT / "experiments" / "classifier_r34.yaml", None, {})
    assert classifier == build_config("classifier_r34")
    demo, _ = resolve(ROOT / "experiments" / "demo_cpu.yaml", None, {})
    assert demo == build_config("demo_cpu", cls_weight=0.2), "the demo's segmenter"


SAVED = [build_config("demo_cpu", cls_weight=0.2, pos_weight=(1.0, 2.0, 1.0, 3.0)),
         build_config("classifier_r34", epochs=3, balance=True),
         build_config("deeplabv3_r34", arch="unet", loss="bce:0.75,lovasz:0.25",
                      init_from="folds/a/fold0/best.pt", lr=3e-4, keep_top=2)]


@pytest.mark.parametrize("saved", SAVED, ids=lambda c: c.name)
def test_a_runs_config_json_repeats_the_run(tmp_path, capsys, fits, saved):
    path = tmp_path / "config.json"
    write_json(path, to_dict(saved))  # as train.fit writes it beside the checkpoints
    assert train(capsys, "--config-file", path).returncode == 0
    (config, explicit), = fits
    assert config == saved and explicit["name"] == saved.name


def test_a_config_json_from_before_the_loss_registry_repeats_the_run(tmp_path):
    values = {**to_dict(build_config("demo_cpu")), "dice_weight": 2.0, "bce_weight": 0.5}
    del values["loss"]  # as the demo's config.json of that time
    path = tmp_path / "config.json"
    write_json(path, values)
    config, _ = resolve(path, None, {})
    assert config == from_dict(values) and config.loss == "dice:2,bce:0.5"


def saved_run(out, config):
    """A run folder whose last.pt holds `config` (resume_config reads nothing else)."""
    out.mkdir()
    checkpoint.save(out / "last.pt", {"config": to_dict(config), "model": {}})
    write_json(out / "config.json", to_dict(config))


def test_resume_with_a_file_is_resume_with_its_options(tmp_path):
    saved = build_config("demo_cpu", cls_weight=0.2)
    out = tmp_path / "run"
    saved_run(out, saved)
    # its own config.json: nothing differs
    config, explicit = resolve(out / "config.json", None, {})
    wanted, _, _ = train_lib.resolve_config(config, out, True, False, explicit)
    assert wanted == saved
    # a file that changes lr is refused as --lr would be, with the same explicit values
    path = tmp_path / "exp.yaml"
    path.write_text("preset: demo_cpu\nlr: 0.5\n")
    _, from_file = resolve(path, None, {})
    _, from_options = resolve(None, "demo_cpu", {"lr": 0.5, "epochs": None})
    assert from_file == from_options == {"lr": 0.5, "name": "demo_cpu"}
    config, explicit = resolve(path, None, {})
    with pytest.raises(InputError, match=r"cannot resume with another config \(lr: 0.002 != "
                                         r"0.5\)"):
        train_lib.resolve_config(config, out, True, False, explicit)
    # ...and more epochs extend it, from a file as from --epochs
    path.write_text("epochs: 9\n")
    config, explicit = resolve(path, None, {})
    wanted, _, _ = train_lib.resolve_config(config, out, True, False, explicit)
    assert wanted.epochs == 9 and wanted == build_config("demo_cpu", cls_weight=0.2, epochs=9)
