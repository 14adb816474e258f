"""The Kaggle bundle: built from a tiny trained model, read by the real kaggle CLI code, and
its kernel script run end to end with the network cut off, on a simulated /kaggle/input."""
import hashlib
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest
import torch

from competition.model import checkpoint
from competition.kaggle import bundle as kernel
from competition.kaggle import kernel_script, upload
from competition.train import fit as train_lib
from competition.errors import InputError
from competition.files import write_csv
from competition.data.folds import make_folds
from competition.data.labels import load_train
from competition.infer.predict import predict_test
from competition.infer.search import Params
from competition.data.submission import validate
from conftest import needs_real, random_checkpoint, real_format_test_set, small_test_set
from test_cli import one_line_error, run, run_here
from test_train import tiny

OWNER, NAME = "alice", "sev-test"
GRID = (0.3, 0.4, 0.5, 0.6, 0.7)
# every gate kind, each reading another signal: the classifier's, the Unet's head, maxprob
GATES = ({"kind": "gate", "source": "cls", "value": 0.5},
         {"kind": "scale", "source": "aux", "value": 5.0},
         {"kind": "maxprob", "source": None, "value": 0.7}, {"kind": "none", "source": None,
                                                             "value": None})
PARAMS = Params((0.4, 0.5, 0.6, 0.5), (0, 20, 100, 300), (0, 50, 400, 800), None, GATES, GRID)
WEIGHTS = [1.0, 2.0]
VIEWS = ("none", "hflip")
SLUGS = {"weights": "sev-test-weights", "code": "sev-test-code", "kernel": "sev-test-inference"}


@pytest.fixture(scope="module")
def wheelhouse(tmp_path_factory):
    """The pinned smp and timm wheels, downloaded once (a kernel build may use the index)."""
    folder = tmp_path_factory.mktemp("wheelhouse")
    kernel.pip(["download", "--no-deps", "--only-binary=:all:", "-q", "-d", str(folder),
                *[kernel.pinned(w) for w in kernel.DEFAULT_WHEELS]], "wheelhouse")
    return folder


@pytest.fixture(scope="module")
def models(synthetic, tmp_path_factory):
    """A DeepLabV3 trained for one epoch (its last.pt: optimizer state, EMA weights) and an
    untrained Unet with an image-level head."""
    root = tmp_path_factory.mktemp("runs")
    image_ids, labels = load_train(synthetic)
    write_csv(root / "folds.csv", make_folds(image_ids, labels, n_folds=5, seed=0))
    train_lib.fit(tiny(epochs=1), synthetic, 0, root / "fold0", root / "folds.csv")
    (root / "fold1").mkdir()
    return [root / "fold0" / "last.pt", random_checkpoint(root / "fold1" / "best.pt", seed=5,
                                                          arch="unet", cls_weight=0.5)]


@pytest.fixture(scope="module")
def classifier(tmp_path_factory):
    root = tmp_path_factory.mktemp("cls") / "classifier"
    root.mkdir()
    return random_checkpoint(root / "best.pt", seed=7, task="classify")


@pytest.fixture(scope="module")
def postprocess(tmp_path_factory):
    path = tmp_path_factory.mktemp("pp") / "postprocess.json"
    classes = {str(c + 1): {"threshold": PARAMS.threshold[c], "min_component":
                            PARAMS.min_component[c], "min_area": PARAMS.min_area[c],
                            "gate": GATES[c]}
               for c in range(4)}
    path.write_text(json.dumps({"classes": classes, "tta": list(VIEWS),
                                "grid": {"threshold": list(GRID)}}))
    return path


@pytest.fixture(scope="module")
def bundle(models, classifier, postprocess, wheelhouse, tmp_path_factory):
    out = tmp_path_factory.mktemp("bundle") / "kaggle"
    kernel.build(OWNER, models, postprocess, out, NAME, list(kernel.DEFAULT_WHEELS), wheelhouse,
                 weights=WEIGHTS, classifiers=[classifier])
    return out


@pytest.fixture(scope="module")
def test_data(synthetic, tmp_path_factory):
    """Four synthetic test images, their sample rows shuffled."""
    return small_test_set(synthetic, tmp_path_factory.mktemp("comp") / "data", seed=2)


def sha256(path):
    return hashlib.sha256(Path(path).read_bytes()).hexdigest()


def test_bundle_holds_weights_only_configs_and_wheels(bundle, models, classifier, postprocess):
    weights, code, script = bundle / "weights", bundle / "code", bundle / "kernel"
    assert sorted(p.name for p in weights.iterdir()) == sorted([
        "fold0.pt", "fold0.config.json", "fold1.pt", "fold1.config.json", "classifier.pt",
        "classifier.config.json", "postprocess.json", "severstal-bundle.json",
        "dataset-metadata.json"])
    manifest = json.loads((weights / "severstal-bundle.json").read_text())
    tuned, bundled = (json.loads(p.read_text()) for p in (postprocess, weights / "postprocess.json"))
    # the tuned parameters verbatim; "ensemble" names the bundle's own slim files, by digest
    assert {k: v for k, v in bundled.items() if k not in ("ensemble", "tuned_on")} == {
        k: v for k, v in tuned.items() if k != "ensemble"}
    assert bundled["tuned_on"] == tuned.get("ensemble")
    members = bundled["ensemble"]["bundle"]
    assert [(m["checkpoint"], m["weight"]) for m in members["segmenters"] + members["classifiers"]] \
        == [(m["file"], m["weight"]) for m in manifest["models"]]
    assert all(m["sha256"] == sha256(weights / m["checkpoint"])[:16]
               for m in members["segmenters"] + members["classifiers"])
    assert [(m["role"], m["weight"], m["arch"]) for m in manifest["models"]] == [
        ("segment", 1.0, "deeplabv3"), ("segment", 2.0, "unet"), ("classify", 1.0, "deeplabv3")]
    for entry, source in zip(manifest["models"], models + [classifier]):
        assert entry["sha256"] == sha256(weights / entry["file"])
        assert entry["source"] == str(source)
        slim = torch.load(weights / entry["file"], weights_only=True)
        full = checkpoint.load(source)
        assert set(slim) == {"config", "model", "epoch", "score"}  # no optimizer, no RNG
        assert slim["config"] == full["config"]
        config = json.loads((weights / entry["file"].replace(".pt", ".config.json")).read_text())
        assert config == json.loads(json.dumps(full["config"]))
        expected = full["ema"] or full["model"]  # the weights inference uses
        assert slim["model"].keys() == expected.keys()
        assert all(torch.equal(slim["model"][k], expected[k]) for k in expected)
    assert "optimizer" in checkpoint.load(models[0])  # the source was a full last.pt
    wheels = sorted(p.name for p in code.glob("*.whl"))
    assert [w.split("-")[0] for w in wheels] == ["competition", "segmentation_models_pytorch",
                                                 "timm"]
    assert all(w.endswith("-py3-none-any.whl") for w in wheels)
    assert sorted(p.name for p in script.iterdir()) == ["kernel-metadata.json",
                                                        "sev-test-inference.py"]
    text = (script / "sev-test-inference.py").read_text()
    assert ("BUNDLE = {'owner': 'alice', 'weights': 'sev-test-weights', 'code': "
            "'sev-test-code', 'competition': 'severstal-steel-defect-detection'}") in text


def test_the_kaggle_cli_reads_the_metadata_as_intended(bundle, monkeypatch, capsys):
    """The real kaggle client code (2.x) reads kernel-metadata.json into the request it
    would send, and accepts both dataset-metadata.json files; the network is faked."""
    from kaggle.api.kaggle_api_extended import KaggleApi, should_ignore, DEFAULT_IGNORE_PATTERNS

    sent = []

    class Client:
        def __enter__(self):
            return self

        def __exit__(self, *exc):
            return False

        class kernels:
            class kernels_api_client:
                @staticmethod
                def save_kernel(request):
                    sent.append(request)
                    return "saved"

    api = KaggleApi()
    api.config_values = {"username": OWNER}
    monkeypatch.setattr(api, "build_kaggle_client", lambda: Client())
    assert api.kernels_push(str(bundle / "kernel")) == "saved"
    request = sent[0]
    assert request.slug == f"{OWNER}/{SLUGS['kernel']}"
    assert (request.enable_internet, request.enable_gpu, request.enable_tpu) == \
        (False, True, False)
    assert request.is_private is True
    assert request.machine_shape == "NvidiaTeslaT4"  # a T4: enable_gpu alone may get a P100
    assert (request.kernel_type, request.language) == ("script", "python")
    assert request.dataset_data_sources == [f"{OWNER}/{SLUGS['weights']}",
                                            f"{OWNER}/{SLUGS['code']}"]
    assert request.competition_data_sources == ["severstal-steel-defect-detection"]
    assert request.text == (bundle / "kernel" / "sev-test-inference.py").read_text()
    assert "does not resolve" not in capsys.readouterr().out  # the title gives the slug

    class Reached(Exception):
        pass

    def status(ref):  # create validates the metadata, then asks whether the dataset exists
        raise Reached(ref)

    monkeypatch.setattr(api, "dataset_status", status)
    for kind in ("weights", "code"):
        with pytest.raises(Reached, match=f"{OWNER}/{SLUGS[kind]}"):
            api.dataset_create_new(str(bundle / kind), dir_mode="zip")
        for p in (bundle / kind).iterdir():
            assert p.is_file() and not should_ignore(p.name, False, DEFAULT_IGNORE_PATTERNS)


def test_kernel_runs_offline_on_a_simulated_kaggle_input(bundle, models, classifier, test_data,
                                                         tmp_path, capfd):
    """The rehearsal: Kaggle's newer layout (competitions/<slug>, datasets/<owner>/<slug>) of
    links, the network cut; the script installs the wheels, finds everything, and writes the
    same submission.csv as a local predict of the original checkpoints."""
    guard = tmp_path / "guard"
    guard.mkdir()
    (guard / "sitecustomize.py").write_text(kernel.OFFLINE_GUARD)
    reach = "import socket; socket.create_connection(('pypi.org', 443), timeout=10)"
    cut = subprocess.run([*kernel.network_cut(), sys.executable, "-c", reach],
                         env=dict(os.environ, PYTHONPATH=str(guard)), capture_output=True,
                         text=True, timeout=60)
    assert cut.returncode != 0 and ("gaierror" in cut.stderr or "offline kernel" in cut.stderr)

    result = kernel.rehearse(bundle, test_data, tmp_path / "rehearsal")
    printed = capfd.readouterr().out
    packages = tmp_path / "rehearsal" / "packages"
    assert f"competition 0.1.0 from {packages / 'competition'}" in printed
    assert "installed 3 wheels" in printed and "submission.csv written in" in printed
    assert "GPU: none (CPU, SEVERSTAL_ALLOW_CPU=1)" in printed  # the rehearsal allows the CPU
    assert "competitions/severstal-steel-defect-detection" in printed
    assert f"datasets/{OWNER}/{SLUGS['weights']}" in printed
    assert result == tmp_path / "rehearsal" / "working" / "submission.csv"
    assert sorted(p.name for p in result.parent.iterdir()) == ["submission.csv"]
    validate(result, test_data / "sample_submission.csv")
    record = json.loads((bundle / kernel.REHEARSED).read_text())  # what upload.push checks
    assert record["files"] == {str(p.relative_to(bundle)): sha256(p)
                               for kind in ("weights", "code", "kernel")
                               for p in (bundle / kind).rglob("*") if p.is_file()}
    assert "kernel/sev-test-inference.py" in record["files"]
    assert record["submission_sha256"] == sha256(result)

    # the kernel runs `predict` with its default --batch-size 8 (these 4 images in one batch):
    # the local run must see the same forwards, since another batch size may change the last
    # bits of a probability and flip a pixel on the threshold
    expected = tmp_path / "local.csv"
    predict_test(test_data, models, PARAMS, VIEWS, expected, batch_size=8, workers=0,
                 weights=WEIGHTS, classifiers=[classifier])
    assert result.read_text() == expected.read_text()
    assert pd.read_csv(expected, keep_default_na=False).EncodedPixels.ne("").any()


@needs_real
def test_the_kernel_follows_the_real_final_sample(bundle, synthetic, tmp_path):
    """The real final sample_submission.csv's format (ImageId,EncodedPixels,ClassId, one row
    per image with ClassId 0): the kernel writes four rows per image, ClassId 1..4, under its
    header (the masks themselves: the rehearsal above, equal to a local predict)."""
    data = real_format_test_set(synthetic, tmp_path / "data", n=4)
    result = kernel.rehearse(bundle, data, tmp_path / "rehearsal")  # validated against it
    image_ids = pd.read_csv(data / "sample_submission.csv").ImageId.tolist()
    written = pd.read_csv(result, dtype=str, keep_default_na=False)
    assert list(written.columns) == ["ImageId", "EncodedPixels", "ClassId"]
    assert list(zip(written.ImageId, written.ClassId)) == [(i, str(c)) for i in image_ids
                                                           for c in (1, 2, 3, 4)]
    assert written.EncodedPixels.ne("").any()


def test_a_kernel_that_fails_in_the_rehearsal_is_an_input_error(bundle, tmp_path, capfd):
    broken = tmp_path / "data"
    (broken / "test_images").mkdir(parents=True)
    (broken / "sample_submission.csv").write_text("ImageId,ClassId,EncodedPixels\n"
                                                  "missing.jpg,1,\n")
    with pytest.raises(InputError, match="the kernel failed in the rehearsal"):
        kernel.rehearse(bundle, broken, tmp_path / "rehearsal")
    assert "no test images" in capfd.readouterr().err  # the kernel's own error line


def test_find_input_probes_the_kaggle_layouts(tmp_path, monkeypatch):
    monkeypatch.setattr(kernel_script, "BUNDLE", {"owner": "bob", "weights": "w-set",
                                                  "code": "c-set", "competition": "comp"})
    monkeypatch.setattr(kernel_script, "PATHS", {"data": None, "weights": None, "code": None})

    def mark(folder, name):
        folder.mkdir(parents=True, exist_ok=True)
        (folder / name).write_text("")
        return str(folder)

    markers = {"data": "sample_submission.csv", "weights": "severstal-bundle.json",
               "code": "competition-0.1.0-py3-none-any.whl"}
    slugs = {"data": "comp", "weights": "w-set", "code": "c-set"}
    classic, new = tmp_path / "classic", tmp_path / "new"
    for kind, slug in slugs.items():
        mark(classic / slug, markers[kind])
        place = new / "competitions" / slug if kind == "data" else new / "datasets" / "bob" / slug
        mark(place, markers[kind])
        assert kernel_script.find_input(str(classic), kind) == str(classic / slug)
        assert kernel_script.find_input(str(new), kind) == str(place)
    # both layouts present: the classic one first
    mark(classic / "datasets" / "bob" / "w-set", markers["weights"])
    assert kernel_script.find_input(str(classic), "weights") == str(classic / "w-set")
    # another owner's copy of the dataset, then anywhere 4 levels down
    other = mark(tmp_path / "other" / "datasets" / "carol" / "w-set", markers["weights"])
    assert kernel_script.find_input(str(tmp_path / "other"), "weights") == other
    deep = mark(tmp_path / "deep" / "a" / "b" / "renamed", markers["weights"])
    assert kernel_script.find_input(str(tmp_path / "deep"), "weights") == deep
    with pytest.raises(SystemExit, match=r"no code input \(competition-\*\.whl\) under .*empty; "
                       r"looked in .*empty/c-set, .*empty/datasets/bob/c-set"):
        kernel_script.find_input(str(tmp_path / "empty"), "code")
    # a path set by hand wins, and must hold the marker
    monkeypatch.setitem(kernel_script.PATHS, "weights", deep)
    assert kernel_script.find_input(str(classic), "weights") == deep
    monkeypatch.setitem(kernel_script.PATHS, "weights", str(tmp_path))
    with pytest.raises(SystemExit, match="no severstal-bundle.json there"):
        kernel_script.find_input(str(classic), "weights")


def test_a_weights_file_that_differs_from_the_manifest_stops_the_kernel(bundle, tmp_path):
    weights = shutil.copytree(bundle / "weights", tmp_path / "weights")
    assert kernel_script.checkpoints(str(weights)) == [
        ("segment", str(weights / "fold0.pt"), 1.0), ("segment", str(weights / "fold1.pt"), 2.0),
        ("classify", str(weights / "classifier.pt"), 1.0)]
    with open(weights / "fold1.pt", "ab") as f:
        f.write(b"\0")
    with pytest.raises(SystemExit, match=r"fold1.pt: missing or not the file the bundle"):
        kernel_script.checkpoints(str(weights))


# `kaggle kernels push --help`'s usage line in kaggle 2.2.4, and before 1.8.4
PUSH_USAGE = {True: "usage: kaggle kernels push [-h] [-p FOLDER] [-t TIMEOUT] [--accelerator ACC]",
              False: "usage: kaggle kernels push [-h] [-p FOLDER] [-t TIMEOUT]"}


def fake_kaggle(statuses, accelerator=True):
    """A stand-in for subprocess.run on the kaggle CLI: records each command; `datasets
    status` answers from `statuses` (exit 1 = no such dataset); `kernels push --help` shows
    the --accelerator option or not."""
    calls = []

    def run(cmd, **kwargs):
        calls.append(cmd[1:])
        if cmd[1:3] == ["datasets", "status"]:
            code, text = statuses.pop(0)
            return subprocess.CompletedProcess(cmd, code, text, "")
        if cmd[1:] == ["kernels", "push", "--help"]:
            return subprocess.CompletedProcess(cmd, 0, PUSH_USAGE[accelerator] + "\n", "")
        return subprocess.CompletedProcess(cmd, 0, "Your private Dataset is being created", "")
    return run, calls


@pytest.fixture
def rehearsed(bundle, tmp_path):
    """A copy of the bundle with a rehearsal record of its files as they are (a stand-in for
    rehearse's, which test_kernel_runs_offline_... checks), and no upload yet."""
    out = shutil.copytree(bundle, tmp_path / "kaggle")
    for name in (kernel.REHEARSED, kernel.PUSHED):
        (out / name).unlink(missing_ok=True)
    (out / kernel.REHEARSED).write_text(json.dumps({"data": "DATA", "layout": "new",
                                                    "files": kernel.bundle_files(out)}))
    return out


def test_push_creates_or_versions_the_datasets_then_pushes_the_kernel(rehearsed, monkeypatch):
    bundle = rehearsed
    monkeypatch.setattr(upload, "kaggle_cli", lambda: "kaggle")
    monkeypatch.setattr(upload, "credentials", lambda: "KAGGLE_API_TOKEN")
    run, calls = fake_kaggle([(1, "404 Not Found"), (0, "ready"), (0, "running"), (0, "ready"),
                              (0, "ready")])
    upload.push(bundle, poll_s=0, run=run)
    weights, code = f"{OWNER}/{SLUGS['weights']}", f"{OWNER}/{SLUGS['code']}"
    assert [c[:3] for c in calls] == [
        ["datasets", "status", weights], ["datasets", "create", "-p"],
        ["datasets", "status", code], ["datasets", "version", "-p"],
        ["datasets", "status", weights], ["datasets", "status", weights],
        ["datasets", "status", code], ["kernels", "push", "--help"], ["kernels", "push", "-p"]]
    assert calls[1] == ["datasets", "create", "-p", str(bundle / "weights"), "-r", "zip"]
    assert calls[3][3] == str(bundle / "code") and calls[3][-2:] == ["-r", "zip"]
    assert calls[-1] == ["kernels", "push", "-p", str(bundle / "kernel"), "--accelerator",
                         "NvidiaTeslaT4"]

    run, calls = fake_kaggle([(1, ""), (1, ""), (0, "pending")])
    with pytest.raises(InputError, match=r"still 'pending' after 0 s; push the kernel when it "
                                         r"is ready: kaggle kernels push -p .*kernel "
                                         r"--accelerator NvidiaTeslaT4$"):
        upload.push(bundle, wait_s=0, poll_s=0, run=run)
    assert not any(c[0] == "kernels" for c in calls)


def test_push_without_the_accelerator_option_on_an_old_cli(rehearsed, monkeypatch, capsys):
    bundle = rehearsed
    monkeypatch.setattr(upload, "kaggle_cli", lambda: "kaggle")
    monkeypatch.setattr(upload, "credentials", lambda: "KAGGLE_API_TOKEN")
    run, calls = fake_kaggle([(0, "ready")] * 4, accelerator=False)
    upload.push(bundle, poll_s=0, run=run)
    assert calls[-2:] == [["kernels", "push", "--help"],
                          ["kernels", "push", "-p", str(bundle / "kernel")]]
    assert ("note: this kaggle CLI has no `kernels push --accelerator` and may ignore "
            "machine_shape 'NvidiaTeslaT4'") in capsys.readouterr().out


def test_the_accelerator_is_the_machine_shape_and_must_be_a_known_gpu(tmp_path):
    script = kernel.write_kernel(tmp_path, OWNER, SLUGS, "NvidiaL4")
    meta = json.loads((tmp_path / "kernel-metadata.json").read_text())
    assert script == tmp_path / "sev-test-inference.py"
    assert (meta["machine_shape"], meta["enable_gpu"]) == ("NvidiaL4", "true")
    for wrong in ("NvidiaTeslaP100", "T4", "TpuV5E8"):
        with pytest.raises(InputError) as info:
            kernel.build(OWNER, [], tmp_path / "pp.json", tmp_path / "out", accelerator=wrong)
        assert str(info.value) == (
            f"--accelerator {wrong!r}: not a Kaggle GPU this kernel runs on; choose one of "
            "NvidiaTeslaT4, NvidiaL4, NvidiaL4X1, NvidiaTeslaA100, NvidiaH100, NvidiaRtxPro6000 "
            "(NvidiaTeslaP100 has no kernels in Kaggle's torch, TPUs no CUDA)")
    assert not (tmp_path / "out").exists()


def test_the_time_limit_is_written_into_the_script_and_must_fit_the_hour(tmp_path):
    text = kernel.write_kernel(tmp_path, OWNER, SLUGS, time_limit=42).read_text()
    assert "\nTIME_LIMIT_MIN = 42.0  # " in text and text.count("TIME_LIMIT_MIN = ") == 1
    assert "TIME_LIMIT_MIN = 55.0  # " in kernel.SCRIPT_TEMPLATE.read_text()  # the default
    for wrong in (0, -5, 61, float("nan")):
        with pytest.raises(InputError, match=r"minutes in \(0, 60\]; Kaggle stops a kernel"):
            kernel.build(OWNER, [], tmp_path / "pp.json", tmp_path / "out", time_limit=wrong)
    assert not (tmp_path / "out").exists()


def test_the_kernel_passes_what_its_set_up_left_of_the_limit(monkeypatch, tmp_path):
    """main() hands predict TIME_LIMIT_MIN minus the minutes spent before it (install,
    checks), as --time-limit."""
    seen = {}
    clock = iter([1000.0, 1000.0 + 90.0])  # start, then 1.5 min of set-up
    monkeypatch.setattr(kernel_script.time, "time", lambda: next(clock, 1100.0))
    monkeypatch.setattr(kernel_script, "find_input", lambda root, kind: str(tmp_path / kind))
    monkeypatch.setattr(kernel_script, "install", lambda code, target: None)
    monkeypatch.setattr(kernel_script, "checkpoints", lambda weights: [("segment", "a.pt", 1.0)])
    monkeypatch.setattr(kernel_script, "check_gpu", lambda torch: "none")
    monkeypatch.setattr(kernel_script, "TIME_LIMIT_MIN", 20.0)
    monkeypatch.setattr(kernel_script, "OFFLINE", {})  # leave this process's environment be
    monkeypatch.setattr(kernel_script, "run",
                        lambda argv, packages: seen.setdefault("argv", argv) and 0)
    assert kernel_script.main() == 0
    argv = seen["argv"]
    assert argv[argv.index("--time-limit") + 1] == "18.500"


# torch.cuda.get_arch_list() of torch 2.10.0+cu128 from PyPI (the torch of Kaggle's 2026 image;
# read with torch._C._cuda_getArchFlags()): no sm_60 for the P100
KAGGLE_ARCHS = ["sm_70", "sm_75", "sm_80", "sm_86", "sm_90", "sm_100", "sm_120"]
CHOOSE = ('choose "GPU T4 x2" in the notebook\'s Settings > Accelerator (machine_shape '
          '"NvidiaTeslaT4" in kernel-metadata.json) and run it again')


@pytest.mark.parametrize("capability, archs, runs", [
    ((7, 5), KAGGLE_ARCHS, True),                # T4 on Kaggle's torch
    ((6, 0), KAGGLE_ARCHS, False),               # P100 on Kaggle's torch
    ((8, 6), ["sm_80"], True),                   # sm_80 binaries run on sm_86
    ((8, 0), ["sm_86"], False),                  # ... not the other way round
    ((9, 0), ["sm_80"], False),                  # nor on another major version
    ((9, 0), ["sm_80", "compute_80"], True),     # PTX for 8.0 is compiled for 9.0
    ((7, 5), ["sm_80", "compute_80"], False),    # ... not for 7.5
    ((10, 3), ["sm_100"], True), ((12, 0), ["sm_100"], False), ((9, 0), ["sm_90a"], True),
    ((7, 5), [], False),                         # a CPU-only torch
])
def test_runs_on_follows_cuda_compatibility(capability, archs, runs):
    assert kernel_script.runs_on(capability, archs) is runs


def test_gpu_problem_names_what_it_found_and_what_to_choose():
    t4 = kernel_script.gpu_problem("Tesla T4", (7, 5), KAGGLE_ARCHS, "2.10.0+cu128", False)
    a10 = kernel_script.gpu_problem("NVIDIA A10G", (8, 6), ["sm_80"], "2.10.0+cu128", False)
    assert t4 is None and a10 is None
    p100 = kernel_script.gpu_problem("Tesla P100-PCIE-16GB", (6, 0), KAGGLE_ARCHS,
                                     "2.10.0+cu128", False)
    assert p100 == ("error: GPU Tesla P100-PCIE-16GB (sm_60) cannot run torch 2.10.0+cu128, "
                    "built for sm_70 sm_75 sm_80 sm_86 sm_90 sm_100 sm_120: " + CHOOSE)
    none = kernel_script.gpu_problem(None, None, [], "2.10.0+cu128", False)
    assert none == ("error: no GPU visible to torch 2.10.0+cu128: " + CHOOSE + " "
                    "(SEVERSTAL_ALLOW_CPU=1 runs on the CPU, far too slow for the real test set)")
    assert kernel_script.gpu_problem(None, None, [], "2.10.0+cpu", True) is None


def test_the_kernel_stops_with_one_line_on_a_gpu_torch_cannot_run(monkeypatch):
    """check_gpu as the kernel runs it: with torch.cuda faked, in a process of its own."""
    fake = ("import sys, types; sys.path.insert(0, sys.argv[1]); import kernel_script; "
            "cuda = types.SimpleNamespace(is_available=lambda: {found}, "
            "get_device_name=lambda i: 'Tesla P100-PCIE-16GB', "
            "get_device_capability=lambda i: (6, 0), get_arch_list=lambda: {archs}); "
            "print(kernel_script.check_gpu(types.SimpleNamespace(cuda=cuda, "
            "__version__='2.10.0+cu128')))")
    env = {k: v for k, v in os.environ.items() if k != "SEVERSTAL_ALLOW_CPU"}
    here = str(Path(kernel_script.__file__).parent)

    def check(found, archs, **extra):
        return subprocess.run([sys.executable, "-c", fake.format(found=found, archs=archs), here],
                              env=dict(env, **extra), capture_output=True, text=True, timeout=60)

    p100 = check(True, KAGGLE_ARCHS)
    assert (p100.returncode, p100.stdout) == (1, "")
    assert p100.stderr.splitlines() == [
        "error: GPU Tesla P100-PCIE-16GB (sm_60) cannot run torch 2.10.0+cu128, built for "
        "sm_70 sm_75 sm_80 sm_86 sm_90 sm_100 sm_120: " + CHOOSE]
    none = check(False, [])
    assert none.returncode == 1 and len(none.stderr.splitlines()) == 1
    assert none.stderr.startswith("error: no GPU visible to torch 2.10.0+cu128: choose")
    cpu = check(False, [], SEVERSTAL_ALLOW_CPU="1")
    assert (cpu.returncode, cpu.stdout) == (0, "none (CPU, SEVERSTAL_ALLOW_CPU=1)\n")
    with_sm60 = check(True, ["sm_60", *KAGGLE_ARCHS])
    assert (with_sm60.returncode, with_sm60.stdout) == (0, "Tesla P100-PCIE-16GB (sm_60)\n")

    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)  # the real torch, no GPU
    monkeypatch.delenv("SEVERSTAL_ALLOW_CPU", raising=False)
    with pytest.raises(SystemExit) as stop:
        kernel_script.check_gpu(torch)
    assert str(stop.value).startswith(f"error: no GPU visible to torch {torch.__version__}: ")


def test_push_says_what_is_missing(rehearsed, monkeypatch, tmp_path):
    bundle = rehearsed
    monkeypatch.setattr(upload, "kaggle_cli", lambda: None)
    with pytest.raises(InputError, match=r"kaggle CLI is not installed \(pip install kaggle\)"):
        upload.push(bundle)
    monkeypatch.setattr(upload, "kaggle_cli", lambda: "kaggle")
    for name in ("KAGGLE_API_TOKEN", "KAGGLE_USERNAME", "KAGGLE_KEY", "KAGGLE_CONFIG_DIR"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("HOME", str(tmp_path))
    with pytest.raises(InputError, match="no Kaggle credentials: run `kaggle auth login`"):
        upload.push(bundle)
    (tmp_path / ".kaggle").mkdir()
    (tmp_path / ".kaggle" / "kaggle.json").write_text("{}")
    assert upload.credentials() == str(tmp_path / ".kaggle" / "kaggle.json")


def test_push_refuses_a_bundle_not_rehearsed_or_changed_since(rehearsed, monkeypatch):
    """Only the files a rehearsal ran are uploaded: no record, or a file changed, added or
    removed since, is one line naming it, before the kaggle CLI is called."""
    run, calls = fake_kaggle([(0, "ready")] * 4)
    monkeypatch.setattr(upload, "kaggle_cli", lambda: "kaggle")
    monkeypatch.setattr(upload, "credentials", lambda: "KAGGLE_API_TOKEN")
    script = rehearsed / "kernel" / "sev-test-inference.py"
    cases = [(lambda: script.write_text(script.read_text() + "# edited\n"), script),
             (lambda: (rehearsed / "weights" / "extra.pt").write_bytes(b"x"),
              rehearsed / "weights" / "extra.pt"),
             (lambda: (rehearsed / "code" / "dataset-metadata.json").unlink(),
              rehearsed / "code" / "dataset-metadata.json")]
    record = (rehearsed / kernel.REHEARSED).read_text()
    for change, named in cases:
        change()
        with pytest.raises(InputError, match=rf"^{named}: changed, added or removed since the "
                                             r"bundle's rehearsal on DATA: rehearse it again"):
            upload.push(rehearsed, poll_s=0, run=run)
        (rehearsed / kernel.REHEARSED).write_text(json.dumps(
            {**json.loads(record), "files": kernel.bundle_files(rehearsed)}))
    (rehearsed / kernel.REHEARSED).unlink()
    with pytest.raises(InputError, match=rf"^{rehearsed}: this bundle was not rehearsed, so it "
                                         r"is not pushed: .* --check DATA rehearses it"):
        upload.push(rehearsed, poll_s=0, run=run)
    assert calls == []


def kaggle_parses(command: str, monkeypatch) -> tuple:
    """`command` (a kaggle CLI line) through the real kaggle CLI's parser: (the API method it
    calls, its arguments); nothing is sent."""
    import shlex

    import kaggle.cli as cli

    got = []
    for name in ("dataset_create_new_cli", "dataset_create_version_cli", "kernels_push_cli"):
        monkeypatch.setattr(cli.api, name, lambda name=name, **kw: got.append((name, kw)))
    monkeypatch.setattr(cli.api, "_authenticated", True)
    words = shlex.split(command)
    assert words[0] == "kaggle"
    monkeypatch.setattr(sys, "argv", words)
    cli.main()
    return got[0]


def test_by_hand_creates_the_datasets_first_then_versions_them(rehearsed, monkeypatch):
    """The commands printed for a manual upload, each read by the real kaggle CLI's parser:
    `datasets create` before any upload from this folder (and how to tell the dataset exists
    after all), `datasets version -m` after one (--push records it, and a rebuild keeps the
    record), `kernels push --accelerator` the kernel's machine_shape either way."""
    first = upload.by_hand(rehearsed)
    commands, note = first.split(" (create: ")
    weights, code, push = commands.split("; ")
    assert kaggle_parses(weights, monkeypatch) == ("dataset_create_new_cli", {
        "folder": str(rehearsed / "weights"), "public": False, "quiet": False,
        "convert_to_csv": True, "dir_mode": "zip", "ignore_patterns": None})
    assert kaggle_parses(code, monkeypatch)[1]["folder"] == str(rehearsed / "code")
    assert kaggle_parses(push, monkeypatch) == ("kernels_push_cli", {
        "folder": str(rehearsed / "kernel"), "timeout": None, "acc": "NvidiaTeslaT4"})
    assert f"kaggle datasets status {OWNER}/{SLUGS['weights']}` finds" in note

    monkeypatch.setattr(upload, "kaggle_cli", lambda: "kaggle")
    monkeypatch.setattr(upload, "credentials", lambda: "KAGGLE_API_TOKEN")
    run, _ = fake_kaggle([(1, ""), (1, ""), (0, "ready"), (0, "ready")])
    upload.push(rehearsed, poll_s=0, run=run)  # created both
    again = upload.by_hand(rehearsed)
    assert "datasets create" not in again and "(create:" not in again
    weights, code, push = again.split("; ")
    name, parsed = kaggle_parses(weights, monkeypatch)
    assert name == "dataset_create_version_cli" and parsed["folder"] == str(rehearsed / "weights")
    assert parsed["version_notes"] and parsed["dir_mode"] == "zip"
    assert kaggle_parses(code, monkeypatch)[0] == "dataset_create_version_cli"
    assert kaggle_parses(push, monkeypatch)[1]["acc"] == "NvidiaTeslaT4"


def test_cli_push_takes_the_bundle_as_it_is(rehearsed, capsys, monkeypatch, tmp_path):
    """`kernel --push` without --owner builds nothing: it pushes the rehearsed bundle in
    --out (here it gets as far as the credentials); with --owner it needs --check."""
    before = {p: sha256(p) for p in rehearsed.rglob("*") if p.is_file()}
    monkeypatch.setattr(upload, "kaggle_cli", lambda: "kaggle")
    monkeypatch.setattr(upload, "credentials", lambda: None)
    one_line_error(run_here(capsys, "kernel", "--out", rehearsed, "--push"),
                   "--push: no Kaggle credentials")
    one_line_error(run_here(capsys, "kernel", "--owner", OWNER, "--out", rehearsed, "--push"),
                   "--push uploads only a rehearsed bundle: add --check DATA")
    one_line_error(run_here(capsys, "kernel", "--out", rehearsed, "--checkpoints", "a.pt",
                            "--push"), "--checkpoints builds a bundle: give --owner USER too")
    one_line_error(run_here(capsys, "kernel", "--out", rehearsed),
                   "kernel: --owner USER builds a bundle; without it, --check DATA")
    assert {p: sha256(p) for p in rehearsed.rglob("*") if p.is_file()} == before
    (rehearsed / kernel.REHEARSED).unlink()
    one_line_error(run_here(capsys, "kernel", "--out", rehearsed, "--push"),
                   "this bundle was not rehearsed")
    one_line_error(run_here(capsys, "kernel", "--out", tmp_path / "none", "--push"),
                   "no bundle here (kernel/kernel-metadata.json)")


def test_bad_input_is_one_line_and_keeps_the_previous_bundle(bundle, models, classifier,
                                                             postprocess, wheelhouse, tmp_path):
    out = shutil.copytree(bundle, tmp_path / "kaggle")
    before = {p: sha256(p) for p in out.rglob("*") if p.is_file()}
    base = ["kernel", "--owner", OWNER, "--checkpoints", ",".join(map(str, models)),
            "--classifiers", classifier, "--postprocess", postprocess, "--out", out,
            "--wheelhouse", wheelhouse]
    cases = [
        (["--owner", "a b"], "--owner 'a b': not a Kaggle user name"),
        (["--name", "Sev_Test"], "--name 'Sev_Test': needs 3 to 40 lowercase"),
        (["--checkpoints", tmp_path / "nothing*.pt"], "no such checkpoint file"),
        (["--postprocess", tmp_path / "none.json"], "post-processing file not found"),
        (["--wheels", "no-such-package-xyz==1.0"], "--wheels no-such-package-xyz==1.0: pip "
                                                   "failed"),
        (["--wheels", "not-installed-here"], "not installed here, so its version is unknown"),
        (["--out", tmp_path], "exists and is not a bundle made by this command"),
        (["--accelerator", "NvidiaTeslaP100"], "--accelerator 'NvidiaTeslaP100'"),
    ]
    for extra, message in cases:
        one_line_error(run(*base, *extra), message)
    one_line_error(run(*base, "--checkpoints", f"{models[0]},{classifier}"),
                   "among the segmenters; pass it with --classifiers")
    one_line_error(run(*base, "--checkpoints", str(models[0])),  # the DeepLab has no head
                   "gates a class on the segmenters' image-level heads")
    one_line_error(run(*base[:5], *base[7:]),  # no --classifiers
                   "gates a class on the classifiers' probabilities")
    one_line_error(run(*base, "--weights", "1"), "--weights 1: needs one positive weight")
    assert {p: sha256(p) for p in out.rglob("*") if p.is_file()} == before
    assert sorted(p.name for p in tmp_path.iterdir() if p.name.startswith(".")) == []


def test_cli_builds_prints_the_sizes_and_rehearses_the_classic_layout(
        models, classifier, postprocess, wheelhouse, test_data, tmp_path):
    out = run("kernel", "--owner", OWNER, "--checkpoints", ",".join(map(str, models)),
              "--classifiers", classifier, "--weights", "1,2", "--postprocess", postprocess, "--out", tmp_path / "kaggle", "--wheelhouse",
              wheelhouse, "--check", test_data, "--layout", "classic")
    assert out.returncode == 0, out.stderr
    assert f"{tmp_path / 'kaggle' / 'weights'}: " in out.stdout
    assert f"kaggle kernels push -p {tmp_path / 'kaggle' / 'kernel'} --accelerator " \
        "NvidiaTeslaT4" in out.stdout
    assert f"upload: python -m competition kernel --out {tmp_path / 'kaggle'} --push" in out.stdout
    assert (tmp_path / "kaggle" / kernel.REHEARSED).is_file()
    root = tmp_path / "kaggle" / "rehearsal" / "input"
    assert f"data: {root / 'severstal-steel-defect-detection'}\n" in out.stdout
    assert f"weights: {root / 'severstal-deeplabv3-weights'}\n" in out.stdout
    assert "rehearsal: ok" in out.stdout
    meta = json.loads((tmp_path / "kaggle" / "kernel" / "kernel-metadata.json").read_text())
    assert meta["id"] == f"{OWNER}/severstal-deeplabv3-inference"
    assert meta["enable_internet"] == "false"


def test_inference_imports_nothing_the_kernel_does_not_ship_or_kaggle_lacks():
    """The kernel runs `python -m competition predict`, which imports competition.cli and the
    predict stage: training-only packages (the augmentations, fold stratification, plots)
    and the kaggle CLI must stay unloaded."""
    code = ("import sys, competition.cli, competition.infer.predict; "
            "print(sorted({m.split('.')[0] for m in sys.modules}))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         cwd=Path(kernel.__file__).parents[2], timeout=120)
    loaded = set(json.loads(out.stdout.strip().replace("'", '"')))
    assert {"torch", "segmentation_models_pytorch", "numba"} <= loaded
    assert loaded.isdisjoint({"albumentations", "iterstrat", "matplotlib", "sklearn", "kaggle",
                              "hypothesis", "pytest", "tensorboard"})
