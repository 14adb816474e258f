"""--compile: a compiled training step and inference batch agree with eager within float
tolerance, checkpoints keep the plain module's keys, and a machine without the compiler
inductor needs gets one line."""
import copy
import time

import pytest
import torch
from torch import nn

from competition.model import checkpoint
from competition.model import networks as model_lib
from competition.train import fit as train_lib
from competition.train import epoch as epoch_lib
from competition.train import runtime as runtime_lib
from competition.errors import InputError
from competition.files import write_csv
from competition.data.folds import make_folds
from competition.infer.ensemble import Ensemble, predict_batch
from competition.data.labels import load_train
from competition.model.networks import compile_model, from_config
from competition.data.synth import make_dataset
from test_cli import run
from test_train import tiny

CPU = torch.device("cpu")
# fused kernels sum in another order: float32 results differ from eager in the last bits
# (measured here: about 1e-7); these bounds are ~100x that, far below any real difference
ATOL, RTOL = 1e-5, 1e-4


@pytest.fixture(scope="module")
def little(tmp_path_factory):
    """A dataset of 10 images and its folds.csv: fold 0 trains on 8 (2 updates of 4) and
    validates on 2, so a run takes seconds."""
    data = tmp_path_factory.mktemp("little") / "data"
    make_dataset(data, n_train=10, n_test=1, seed=3)
    write_csv(data / "folds.csv", make_folds(*load_train(data), n_folds=5, seed=0))
    return data


class TinyNet(nn.Module):
    """(N, 3, H, W) -> (N, 4, H, W) logits: a convolution, BatchNorm, ReLU, a 1x1 head."""

    def __init__(self):
        super().__init__()
        self.body = nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.BatchNorm2d(8), nn.ReLU(),
                                  nn.Conv2d(8, 4, 1))

    def forward(self, x):
        return self.body(x)


def batch(seed=0, n=2, h=32, w=64):
    g = torch.Generator().manual_seed(seed)
    images = torch.randint(0, 256, (n, 3, h, w), generator=g, dtype=torch.uint8)
    masks = (torch.rand(n, 4, h, w, generator=g) > 0.9).to(torch.uint8)
    return images, masks, torch.arange(n)


def one_step(model, config):
    """One update of train_one_epoch with SGD (lr 0.1: parameter differences are 0.1 x the
    gradients', where Adam's first step would turn any sign flip of a tiny gradient into 2 x
    lr); returns its result dict."""
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda step: 1.0)
    scaler = torch.amp.GradScaler("cpu", enabled=False)
    return epoch_lib.train_one_epoch(model, train_lib.make_loss(config, CPU), optimizer,
                                     scheduler, scaler, None, [batch()], config,
                                     runtime_lib.Runtime(), 0, None)


@pytest.fixture(scope="module")
def inductor_cache(tmp_path_factory):
    """A kernel cache of this test session's own. Inductor's on-disk cache
    (/tmp/torchinductor_$USER) outlives a session, and a kernel compiled while
    ATEN_CPU_CAPABILITY was another value was found reused there: under
    ../shared/tools/other-cpu's AVX2 setting the compiled step then gave BatchNorm running
    statistics of 1e13 (with a fresh cache: within 1e-8 of a float64 step, as eager)."""
    return tmp_path_factory.mktemp("torchinductor")


@pytest.mark.parametrize("backend", ["aot_eager", "inductor"])
def test_a_compiled_step_and_batch_equal_eager_within_tolerance(backend, monkeypatch,
                                                                 inductor_cache):
    """aot_eager (no compiler needed) runs everywhere; inductor where a C++ compiler is."""
    monkeypatch.setenv("TORCHINDUCTOR_CACHE_DIR", str(inductor_cache))
    monkeypatch.setattr(model_lib, "COMPILE_BACKEND", backend)
    reason = model_lib.missing_compiler(CPU)
    if reason:
        pytest.skip(f"inductor cannot run here: {reason}")
    config = tiny(ema_decay=0.0)
    torch.manual_seed(0)
    eager = TinyNet()
    plain = copy.deepcopy(eager)
    compiled = compile_model(plain, CPU)
    start = time.perf_counter()
    got = one_step(compiled, config)
    print(f"{backend}: compiled training step in {time.perf_counter() - start:.1f} s")
    want = one_step(eager, config)
    assert got["loss"] == pytest.approx(want["loss"], rel=RTOL, abs=ATOL)
    for (name, a), b in zip(eager.state_dict().items(), plain.state_dict().values()):
        torch.testing.assert_close(b, a, atol=ATOL, rtol=RTOL, msg=name)
    # checkpoints are saved from the plain module: the keys of an uncompiled model
    assert list(runtime_lib.unwrap(compiled).state_dict()) == list(eager.state_dict())
    assert all(k.startswith("_orig_mod.") for k in compiled.state_dict())

    eager.load_state_dict(plain.state_dict())  # the same weights, one inference batch
    compiled.eval(), eager.eval()
    images = batch(1, h=64, w=128)[0]
    views = ("none", "hflip")
    got = predict_batch(Ensemble([compiled], [config]), images, views, None)
    want = predict_batch(Ensemble([eager], [config]), images, views, None)
    torch.testing.assert_close(got.masks, want.masks, atol=ATOL, rtol=RTOL)


def test_a_compiled_run_saves_plain_checkpoints(little, tmp_path, monkeypatch, capsys):
    """fit with --compile (dynamo with the eager backend: the code path, not kernel building,
    is what this checks) writes best.pt and last.pt that load into an uncompiled model, and
    reports the first update's seconds apart."""
    monkeypatch.setattr(model_lib, "COMPILE_BACKEND", "eager")
    config = tiny(compile=True, epochs=1, ema_decay=0.0)
    train_lib.fit(config, little, 0, tmp_path / "run", little / "folds.csv")
    keys = list(from_config(config, "none").state_dict())
    for name in ("best.pt", "last.pt"):
        assert list(checkpoint.load(tmp_path / "run" / name)["model"]) == keys
    checkpoint.model_from(tmp_path / "run" / "best.pt")
    assert "compile: the first update took" in capsys.readouterr().out


def test_no_compiler_is_one_line_before_anything_runs(monkeypatch, little, tmp_path):
    from torch._inductor import config as inductor

    monkeypatch.setattr(inductor.cpp, "cxx", (None, "/nonexistent/g++"))
    assert "no C++ compiler" in model_lib.missing_compiler(CPU)
    with pytest.raises(InputError, match="^--compile: torch.compile's inductor backend builds "
                       "kernels for the cpu with a compiler, and this machine has no C"):
        train_lib.fit(tiny(compile=True), little, 0, tmp_path / "run", little / "folds.csv")
    assert not (tmp_path / "run").exists()
    monkeypatch.setattr(model_lib.shutil, "which", lambda name: None)
    monkeypatch.delenv("CC", raising=False)
    assert "no C compiler for Triton" in model_lib.missing_compiler(torch.device("cuda"))


def test_no_compiler_at_the_command_line_is_one_line(little, tmp_path, monkeypatch):
    monkeypatch.setenv("CXX", "/nonexistent/g++")  # inductor reads it at import
    out = run("train", "--data", little, "--fold", "0", "--folds-csv", little / "folds.csv", "--preset",
              "demo_cpu", "--out", tmp_path / "run", "--compile", "true", "--workers", "0")
    assert out.returncode == 2 and out.stderr.count("\n") == 1, out.stderr
    assert out.stderr.startswith("error: --compile: ") and "no C++ compiler" in out.stderr
