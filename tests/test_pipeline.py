"""`pipeline RECIPE` (cli/pipeline.py, cli/recipe.py, cli/launch.py): recipe parsing and its
refusals, the skip/resume rule, the --gpus/--ddp command lines and scheduling, and a tiny
recipe end to end on CPU, killed mid-training and re-run."""
import dataclasses
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from competition.cli import launch, pipeline, recipe
from competition.errors import InputError
from competition.model.config import build_config, to_dict
from test_cli import ROOT, one_line_error, run_here

RECIPES = ROOT / "recipes"


@pytest.fixture
def data(tmp_path):
    """A dataset folder as far as reading a recipe looks: train.csv and test_truth.csv."""
    folder = tmp_path / "data"
    folder.mkdir()
    (folder / "train.csv").write_text("ImageId,ClassId,EncodedPixels\n")
    (folder / "test_truth.csv").write_text("ImageId,ClassId,EncodedPixels\n")
    return folder


def write(tmp_path, text, name="r.yaml"):
    path = tmp_path / name
    path.write_text(text)
    return path


BASE = """\
data: {data}
models:
  - name: seg
    role: segmenter
    preset: demo_cpu
    folds: [0]
"""


def test_a_full_recipe_reads_into_frozen_dataclasses(tmp_path, data):
    (tmp_path / "exp.yaml").write_text("preset: demo_cpu\nepochs: 3\nlr: 1.0e-3\n")
    path = write(tmp_path, f"""\
data: {data}
split: {{file: {tmp_path}/f.csv, n_folds: 3, seed: 7}}
out: {tmp_path}/sub
submission: {tmp_path}/sub/s.csv
models:
  - name: seg
    role: segmenter
    experiment: {tmp_path}/exp.yaml
    overrides: {{lr: 2, val_min_area: [1, 2, 3, 4]}}
    weight: 2
    run: {tmp_path}/runs/seg
  - name: cls.1
    role: classifier
    preset: demo_cpu_cls
oof: {{tta: "none,vflip", gates: [none, gate], gate_sources: [cls], min_areas: [0, 10],
       oof_csv: false}}
inference: {{batch_size: 3, workers: 0}}
kernel: {{owner: me, out: {tmp_path}/k, wheels: [], check: false, layout: classic,
         time_limit: 30, accelerator: NvidiaL4}}
""")
    r = recipe.load(path)
    assert r.data == data and r.split == recipe.Split(tmp_path / "f.csv", 3, 7)
    assert r.out == tmp_path / "sub" and r.submission == tmp_path / "sub/s.csv"
    assert r.truth == data / "test_truth.csv"  # the dataset's own truth
    seg, cls = r.models
    # defaults <- preset demo_cpu <- experiment (epochs 3, lr 1e-3) <- overrides (lr 2)
    assert seg.config == build_config("demo_cpu", epochs=3, lr=2.0, val_min_area=(1, 2, 3, 4))
    assert (seg.name, seg.role, seg.folds, seg.weight, seg.run) == (
        "seg", "segmenter", (0, 1, 2), 2.0, tmp_path / "runs/seg")
    assert cls.config == build_config("demo_cpu_cls") and cls.run == Path("folds/cls.1")
    assert cls.folds == (0, 1, 2) and cls.weight == 1.0
    assert r.oof == recipe.Oof(("none", "vflip"), ("gate",), ("cls",), (0, 10), False)
    assert r.inference == recipe.Inference(3, 0)
    assert r.kernel == recipe.Kernel("me", tmp_path / "k", "severstal-deeplabv3", "NvidiaL4",
                                     30.0, (), None, False, "classic")
    with pytest.raises(dataclasses.FrozenInstanceError):
        r.out = Path("x")
    assert recipe.load(write(tmp_path, BASE.format(data=data) + "truth: false\n")).truth is None


@pytest.mark.parametrize("extra, said", [
    ("modles: []\n", "unknown key 'modles' (value []); did you mean 'models'?"),
    ("oof: {tta: [none, flip]}\n", "oof.tta ['none', 'flip']: expected distinct names of none"),
    ("oof: {gates: [gate, gate]}\n", "oof.gates ['gate', 'gate']: expected distinct names"),
    ("inference: {batch_size: true}\n", "inference.batch_size True: expected an integer"),
    ("inference: {batch_size: 0}\n", "inference.batch_size 0: must be at least 1"),
    ("split: {n_folds: 1}\n", "split.n_folds 1: must be at least 2"),
    ("split: {fold: 3}\n", "split.unknown key 'fold' (value 3)"),
    ("kernel: {owner: me, accelerator: NvidiaTeslaP100}\n",
     "kernel.accelerator 'NvidiaTeslaP100': expected one of NvidiaTeslaT4"),
    ("kernel: {out: k}\n", "kernel.owner: missing (required)"),
    ("kernel: {owner: 'a b'}\n", "kernel.owner 'a b': not a Kaggle user name"),
    ("kernel: {owner: me, time_limit: 90}\n", "kernel.time_limit 90.0: minutes in (0, 60]"),
    ("truth: nope.csv\n", "truth 'nope.csv': no such file"),
    ("oof: {weights: searched}\n", "oof.weights 'searched': expected one of given, search"),
    ("oof: {weights: search}\n",
     "oof.weights 'search': expected two or more segmenters to weigh (models has 1)"),
])
def test_bad_top_level_values_are_one_line(tmp_path, data, capsys, extra, said):
    path = write(tmp_path, BASE.format(data=data) + extra)
    one_line_error(run_here(capsys, "pipeline", path), f"error: {path}: {said}")


def test_owner_replaces_the_recipes_and_the_placeholder_is_refused(tmp_path, data, capsys):
    path = write(tmp_path, BASE.format(data=data) + "kernel: {owner: YOUR-KAGGLE-NAME}\n")
    one_line_error(run_here(capsys, "pipeline", path),
                   f"error: {path}: kernel.owner is YOUR-KAGGLE-NAME: pass --owner NAME")
    assert recipe.with_owner(recipe.load(path), "alice").kernel.owner == "alice"
    one_line_error(run_here(capsys, "pipeline", path, "--owner", "a b"),
                   "--owner 'a b': not a Kaggle user name")
    bare = write(tmp_path, BASE.format(data=data), "bare.yaml")
    assert recipe.with_owner(recipe.load(bare), None).kernel is None
    one_line_error(run_here(capsys, "pipeline", bare, "--owner", "alice"),
                   f"--owner alice: {bare} builds no kernel")


MODEL = BASE + "  - {second}\n"


@pytest.mark.parametrize("second, said", [
    ("{name: c, role: classifer, preset: demo_cpu_cls, folds: [0]}",
     "models[1].role 'classifer': expected one of segmenter, classifier"),
    ("{name: c, role: classifier, preset: demo_cpu_cls, folds: [0], weight: -1}",
     "models[1].weight -1: expected a positive number"),
    ("{name: c, role: classifier, preset: demo_cpu_cls, folds: [0], wieght: 2}",
     "models[1].unknown key 'wieght' (value 2); did you mean 'weight'?"),
    ("{name: c, role: classifier, preset: demo_cpu_cls, folds: [1]}",
     "models[1].folds [1]: every model of the ensemble needs the folds of models[0] ([0])"),
    ("{name: c, role: classifier, preset: demo_cpu_cls, folds: [0, 7]}",
     "models[1].folds [0, 7]: fold 7 is not one of split.n_folds 5"),
    ("{name: seg, role: classifier, preset: demo_cpu_cls, folds: [0]}",
     "models[1].name 'seg': another model has this name"),
    ("{name: c, role: classifier, preset: demo_cpu, folds: [0]}",
     "models[1].role 'classifier': its config trains task 'segment'"),
    ("{name: c, role: classifier, preset: demo, folds: [0]}",
     "models[1].preset 'demo': unknown preset; valid: deeplabv3_r34"),
    ("{name: c, role: classifier, preset: demo_cpu_cls, folds: [0], overrides: {lrr: 0.1}}",
     "models[1].overrides: unknown config field 'lrr' (value 0.1); did you mean 'lr'?"),
    ("{name: c, role: classifier, preset: demo_cpu_cls, folds: [0], overrides: {epochs: two}}",
     "models[1].overrides: epochs 'two': expected an integer, got text"),
    ("{name: c, role: classifier, preset: demo_cpu_cls, folds: [0], overrides: {epochs: 0}}",
     "models[1]: epochs 0: must be at least 1"),
    ("{name: c, role: classifier, experiment: nope.yaml, folds: [0]}",
     "models[1].experiment 'nope.yaml': nope.yaml: experiment file not found"),
    ("{name: c, role: classifier, preset: demo_cpu_cls, folds: [0], run: folds/seg}",
     "models[1].run 'folds/seg': another model trains in this folder"),
])
def test_bad_models_are_one_line_naming_the_key_and_value(tmp_path, data, capsys, second, said):
    path = write(tmp_path, MODEL.format(data=data, second=second))
    one_line_error(run_here(capsys, "pipeline", path), f"error: {path}: {said}")


@pytest.mark.parametrize("text, said", [
    ("- a\n", "expected a mapping of recipe keys (key: value lines), got a list"),
    ("data: [\n", "line 2: not valid YAML"),
    ("models: []\n", "data: missing (required)"),
    ("data: {data}\n", "models: missing (required)"),
    ("data: {data}\nmodels: [{{name: c, role: classifier, preset: demo_cpu_cls}}]\n",
     "models: no segmenter"),
    ("data: {tmp}\nmodels: []\n", "data '{tmp}': no train.csv there"),
])
def test_bad_files_are_one_line(tmp_path, data, capsys, text, said):
    path = write(tmp_path, text.format(data=data, tmp=tmp_path))
    one_line_error(run_here(capsys, "pipeline", path), str(path),
                   said.format(tmp=tmp_path))
    missing = tmp_path / "none.yaml"
    one_line_error(run_here(capsys, "pipeline", missing), f"{missing}: recipe file not found")


def test_the_shipped_recipes_read(tmp_path, data, monkeypatch):
    """Each recipe of recipes/ reads (its dataset stood in by `data`); demo.yaml is the
    demo's: DeepLabV3 demo_cpu with cls_weight 0.2 and a demo_cpu_cls classifier on fold 0,
    TTA none,hflip, the demo's folders, the kernel rehearsed."""
    monkeypatch.chdir(ROOT)
    read = {}
    for path in sorted(RECIPES.glob("*.yaml")):
        text = path.read_text().replace("input/synthetic", str(data)).replace(
            "input/severstal-steel-defect-detection", str(data))
        read[path.name] = recipe.load(write(tmp_path, text, path.name))
    assert set(read) == {"demo.yaml", "deeplabv3_r34.yaml", "top_solutions.yaml"}
    demo = read["demo.yaml"]
    assert [(m.name, m.role, m.config, m.folds, str(m.run)) for m in demo.models] == [
        ("deeplabv3", "segmenter", build_config("demo_cpu", cls_weight=0.2), (0,), "folds/demo"),
        ("classifier", "classifier", build_config("demo_cpu_cls"), (0,), "folds/demo-cls")]
    assert demo.split == recipe.Split(Path("folds/demo/folds.csv"), 5, 42)
    assert demo.oof.tta == ("none", "hflip") and demo.out == Path("submissions/demo")
    assert demo.kernel.out == Path("kaggle/demo") and demo.kernel.check
    assert demo.kernel.owner == "demo-user"
    mission = read["deeplabv3_r34.yaml"]
    assert [(m.config.arch, m.config.encoder, m.folds) for m in mission.models] == [
        ("deeplabv3", "resnet34", (0, 1, 2, 3, 4)), ("deeplabv3", "resnet34", (0, 1, 2, 3, 4))]
    assert [m.role for m in mission.models] == ["segmenter", "classifier"]
    top = read["top_solutions.yaml"]
    assert {(m.config.arch, m.config.encoder) for m in top.of_role("segmenter")} >= {
        ("unet", "efficientnet-b3"), ("fpn", "efficientnet-b3"), ("deeplabv3", "resnet34")}
    assert len(top.of_role("classifier")) >= 2


# --gpus and --ddp: the scheduling and the command lines (no GPU needed)

def test_gpu_groups_and_refusals():
    assert launch.gpu_groups((0, 1, 2), None) == [(0,), (1,), (2,)]
    assert launch.gpu_groups((3, 1, 2, 0), 2) == [(3, 1), (2, 0)]
    assert launch.gpu_groups(None, 4) == [(0, 1, 2, 3)]
    assert launch.parse_gpus("0,2") == (0, 2) and launch.parse_gpus(None) is None
    for text in ("0,a", "1,1", ""):
        with pytest.raises(InputError, match=f"--gpus {text}: expected"):
            launch.parse_gpus(text)
    with pytest.raises(InputError, match="--gpus 0,1,2 --ddp 2: 3 GPUs do not make groups of 2"):
        launch.gpu_groups((0, 1, 2), 2)


def test_assign_pairs_waiting_folds_with_free_groups_in_order():
    assert launch.assign(["a", "b", "c"], [(0,), (1,)]) == [("a", (0,)), ("b", (1,))]
    assert launch.assign(["c"], [(1,), (0,)]) == [("c", (1,))]
    assert launch.assign([], [(0,)]) == [] and launch.assign(["a"], []) == []


def job(fold=0, resume=False):
    return launch.Job("seg", fold, Path(f"r/fold{fold}"), Path("r/pipeline-config.json"), resume)


def test_command_lines_of_one_gpu_and_of_torchrun():
    argv, env = launch.command(job(1), Path("d"), Path("f.csv"), (3,), python="py")
    assert argv == ["py", "-m", "competition", "train", "--data", "d", "--fold", "1",
                    "--folds-csv", "f.csv", "--out", "r/fold1", "--config-file",
                    "r/pipeline-config.json", "--overwrite"]
    assert env == {"CUDA_VISIBLE_DEVICES": "3"}
    argv, env = launch.command(job(0, resume=True), Path("d"), Path("f.csv"), (2, 5), "py")
    assert argv[:5] == ["py", "-m", "torch.distributed.run", "--standalone",
                        "--nproc_per_node=2"]
    assert argv[5:9] == ["-m", "competition", "train", "--data"] and argv[-1] == "--resume"
    assert env == {"CUDA_VISIBLE_DEVICES": "2,5"}


class FakeProcess:
    """Finishes on its `polls`-th poll with `code`; records its launch."""
    launched = []

    def __init__(self, argv, env, stdout, stderr):
        fold = int(argv[argv.index("--fold") + 1])
        self.code, self.polls = {0: (0, 2), 1: (0, 1), 2: (1, 1), 3: (0, 1)}[fold]
        FakeProcess.launched.append((fold, env["CUDA_VISIBLE_DEVICES"]))

    def poll(self):
        self.polls -= 1
        return self.code if self.polls <= 0 else None


def test_run_jobs_fills_free_gpus_and_stops_launching_after_a_failure(tmp_path, capsys):
    """Folds 0 and 1 start on GPUs 0 and 1; fold 1 ends first, so fold 2 takes GPU 1; fold 2
    fails, so fold 3 never starts, and the error names fold 2's log once fold 0 is done."""
    FakeProcess.launched = []
    jobs = [launch.Job("seg", k, tmp_path / f"fold{k}", tmp_path / "c.json", False)
            for k in range(4)]
    with pytest.raises(InputError, match=r"training seg fold 2 failed \(exit status 1\); its "
                       r"log: .*fold2/train.log; 1 fold\(s\) not started"):
        launch.run_jobs(jobs, [(0,), (1,)], Path("d"), Path("f.csv"), poll_s=0,
                        popen=FakeProcess)
    assert FakeProcess.launched == [(0, "0"), (1, "1"), (2, "1")]
    assert (tmp_path / "fold0" / "train.log").read_text().startswith(
        "$ CUDA_VISIBLE_DEVICES=0 ")


# the skip rules

def fake_last(folder, config, epoch, best=True):
    folder.mkdir(parents=True, exist_ok=True)
    torch.save({"config": to_dict(config), "model": {}, "epoch": epoch}, folder / "last.pt")
    if best:
        torch.save({"config": to_dict(config), "model": {}, "epoch": epoch}, folder / "best.pt")


def test_run_state_skips_finished_runs_resumes_others_refuses_another_config(tmp_path):
    config = build_config("demo_cpu", epochs=3)
    model = recipe.Model("seg", "segmenter", config, (0,), 1.0, tmp_path, "demo_cpu")
    assert pipeline.run_state(model, 0) == "new"
    fake_last(tmp_path / "fold0", config, 2)
    assert pipeline.run_state(model, 0) == "resume"
    fake_last(tmp_path / "fold0", config, 3)
    assert pipeline.run_state(model, 0) == "done"
    (tmp_path / "fold0" / "best.pt").unlink()
    assert pipeline.run_state(model, 0) == "resume"  # fit puts best.pt back from last.pt
    longer = dataclasses.replace(model, config=build_config("demo_cpu", epochs=5))
    assert pipeline.run_state(longer, 0) == "resume"  # extended
    fake_last(tmp_path / "fold0", build_config("demo_cpu", epochs=3, lr=0.5), 1)
    with pytest.raises(InputError, match=r"fold0/last.pt: a run of another config than model "
                       r"seg's \(lr: 0.5 != 0.002\)"):
        pipeline.run_state(model, 0)
    shorter = dataclasses.replace(model, config=build_config("demo_cpu", epochs=2, lr=0.5))
    with pytest.raises(InputError, match=r"\(epochs: 3 != 2\)"):
        pipeline.run_state(shorter, 0)


def test_ledger_skips_a_step_only_while_options_inputs_and_outputs_stand(tmp_path):
    source, output = tmp_path / "in.txt", tmp_path / "out.txt"
    source.write_text("a")
    output.write_text("b")
    ledger = pipeline.Ledger(tmp_path)
    assert not ledger.fresh("oof", {"tta": ["none"]}, [source], [output])  # never recorded
    ledger.record("oof", {"tta": ("none",)}, [source])
    again = pipeline.Ledger(tmp_path)  # read back from pipeline.json
    assert again.fresh("oof", {"tta": ("none",)}, [source], [output])
    assert not again.fresh("oof", {"tta": ("hflip",)}, [source], [output])
    assert not again.fresh("search", {"tta": ("none",)}, [source], [output])
    stat = source.stat()
    os.utime(source, ns=(stat.st_atime_ns, stat.st_mtime_ns + 1))  # a retrained input
    assert not again.fresh("oof", {"tta": ("none",)}, [source], [output])
    again.record("oof", {"tta": ("none",)}, [source])
    output.unlink()
    assert not again.fresh("oof", {"tta": ("none",)}, [source], [output])


def test_a_failing_step_names_itself_and_the_command_to_continue(tmp_path, data, capsys,
                                                                 monkeypatch):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "f.csv").write_text("ImageId,fold\na.jpg,0\nb.jpg,1\n")
    path = write(tmp_path, BASE.format(data=data).replace("folds: [0]", "folds: [3]")
                 + "split: {file: f.csv}\n")
    one_line_error(run_here(capsys, "pipeline", path, "--gpus", "0"),
                   "error: pipeline step folds failed: f.csv: no fold 3 (it holds [0, 1]); "
                   "the recipe's models ask folds [3]; fix it and continue with: python -m "
                   f"competition pipeline {path} --gpus 0")


# end to end on CPU: a tiny recipe, then a second recipe killed mid-training and re-run

TINY = ("{crop_height: 64, crop_width: 128, epochs: %d, batch_size: 4, num_workers: 0, "
        "val_batch_size: 2, warmup_epochs: 0.5, tensorboard: false}")
TINY_RECIPE = """\
data: DATA
split: {file: folds/folds.csv, n_folds: 5, seed: 0}
out: sub
oof: {tta: [none], oof_csv: false}
inference: {batch_size: 2, workers: 0}
kernel: {owner: tester, out: kaggle, wheels: [], check: false}
models:
  - name: seg
    role: segmenter
    preset: demo_cpu
    overrides: %s
    folds: [0]
""" % (TINY % 1)
WITH_CLASSIFIER = TINY_RECIPE + """\
  - name: cls
    role: classifier
    preset: demo_cpu_cls
    overrides: %s
    folds: [0]
""" % (TINY % 2)


@pytest.fixture(scope="module")
def tiny_data(tmp_path_factory):
    """Ten train images (two validate fold 0) and two test images, with their truth."""
    from competition.data.synth import make_dataset

    out = tmp_path_factory.mktemp("tiny") / "data"
    make_dataset(out, n_train=10, n_test=2, seed=3, workers=1)
    return out


def stamp(path):
    return path.stat().st_mtime_ns, path.read_bytes()


def test_a_recipe_end_to_end_then_killed_and_continued(tiny_data, tmp_path, capsys,
                                                       monkeypatch):
    """1. the segmenter alone, end to end (kernel bundle built, not rehearsed: test_kernel
    rehearses); 2. the recipe with a classifier added, SIGKILLed as the classifier's second
    epoch starts: the segmenter's best.pt untouched, the classifier's last.pt at epoch 1;
    3. re-run: the segmenter skipped, the classifier resumed, everything after re-made;
    4. the same recipe uninterrupted beside it (from the same segmenter): the same
    classifier weights bit for bit, postprocess.json and submission.csv (one process, no
    loader workers: exact resume); 5. re-run again: every step skipped, nothing rewritten."""
    a, b = tmp_path / "a", tmp_path / "b"
    a.mkdir()
    first = write(a, TINY_RECIPE.replace("DATA", str(tiny_data)), "first.yaml")
    second = write(tmp_path, WITH_CLASSIFIER.replace("DATA", str(tiny_data)), "second.yaml")
    monkeypatch.chdir(a)
    done = run_here(capsys, "pipeline", first)
    assert done.returncode == 0, done.stderr[-3000:]
    assert "train: seg fold 0: started" in done.stdout
    for name in ("folds/folds.csv", "folds/seg/fold0/best.pt", "sub/oof/fold0/meta.json",
                 "sub/postprocess.json", "sub/cv_report/cv_report.md", "sub/submission.csv",
                 "kaggle/kernel/kernel-metadata.json", "sub/pipeline.json"):
        assert (a / name).exists(), name
    summary = done.stdout[done.stdout.index(f"pipeline {first}: summary"):]
    assert "folds/seg/fold0" in summary and "OOF CV over 2 images" in summary
    assert "test: sub/submission.csv against" in summary
    for step in ("folds", "train", "oof", "search", "predict", "validate/score", "kernel"):
        assert f"\n  {step} " in summary
    seg_best = stamp(a / "folds/seg/fold0/best.pt")

    env = dict(os.environ, NO_ALBUMENTATIONS_UPDATE="1", PYTHONPATH=str(ROOT),
               KILL_TASK="classify", KILL_EPOCH="1")
    killed = subprocess.run([sys.executable, str(ROOT / "tests" / "pipeline_probe.py"),
                             "pipeline", str(second)], cwd=a, env=env, capture_output=True,
                            text=True, timeout=600)
    assert killed.returncode == -9, killed.stderr[-3000:]
    assert "train: seg fold 0: finished, skipped" in killed.stdout
    assert torch.load(a / "folds/cls/fold0/last.pt", weights_only=True)["epoch"] == 1
    assert stamp(a / "folds/seg/fold0/best.pt") == seg_best

    resumed = run_here(capsys, "pipeline", second)
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert "train: seg fold 0: finished, skipped" in resumed.stdout
    assert "train: cls fold 0: interrupted, resumed" in resumed.stdout
    assert "epochs 2..2 (resumed from folds/cls/fold0/last.pt)" in resumed.stdout
    assert stamp(a / "folds/seg/fold0/best.pt") == seg_best
    assert torch.load(a / "folds/cls/fold0/last.pt", weights_only=True)["epoch"] == 2

    (b / "folds").mkdir(parents=True)
    shutil.copytree(a / "folds/seg", b / "folds/seg")
    shutil.copy2(a / "folds/folds.csv", b / "folds/folds.csv")
    monkeypatch.chdir(b)
    whole = run_here(capsys, "pipeline", second)
    assert whole.returncode == 0, whole.stderr[-3000:]
    assert "train: cls fold 0: started" in whole.stdout
    mine, theirs = (torch.load(x / "folds/cls/fold0/best.pt", weights_only=True)
                    for x in (a, b))
    assert mine["epoch"] == theirs["epoch"]
    assert all(torch.equal(mine["model"][k], theirs["model"][k]) for k in mine["model"])
    pp_a, pp_b = (json.loads((x / "sub/postprocess.json").read_text()) for x in (a, b))
    assert pp_a["classes"] == pp_b["classes"] and pp_a["oof_mean_dice"] == pp_b["oof_mean_dice"]
    assert [m["checkpoint"] for f in pp_a["ensemble"].values() for r in f.values() for m in r] \
        == ["folds/seg/fold0/best.pt", "folds/cls/fold0/best.pt"]
    assert (a / "sub/submission.csv").read_bytes() == (b / "sub/submission.csv").read_bytes()

    monkeypatch.chdir(a)
    made = {p: stamp(a / p) for p in ("sub/postprocess.json", "sub/submission.csv",
                                      "sub/oof/fold0/stats.npy", "folds/cls/fold0/best.pt")}
    again = run_here(capsys, "pipeline", second)
    assert again.returncode == 0, again.stderr[-3000:]
    assert "0 resumed, 0 new" in again.stdout
    for step in ("oof", "search", "predict", "kernel"):
        assert f"pipeline: {step}: skipped, its outputs are current" in again.stdout
    assert {p: stamp(a / p) for p in made} == made
