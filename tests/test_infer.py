import numpy as np
import pytest
import torch

from competition.infer import ensemble as infer
from competition.model import forward
from competition.errors import InputError
from conftest import random_checkpoint

# Tolerance between two fp32 forwards of the same images through other code paths: batches
# of another size, other thread counts or another CPU generation round differently in the
# last bits (measured up to 4e-7 in the probabilities of conftest's random checkpoints with
# AVX2 kernels against AVX-512 ones); a wrong image or TTA view differs by 0.08 or more.
ATOL = 1e-4


def record_batches(monkeypatch, module) -> dict:
    """Wrap the infer.batches that `module` (oof, predict) calls: the dict returned fills
    with row index -> the (4, H, W) probabilities the stream gave that image (on the CPU),
    so that a reference computation starts from the very numbers the stream used."""
    seen = {}

    def recording(*args, **kwargs):
        for item, pred in infer.batches(*args, **kwargs):
            seen.update(zip(item[-1].tolist(), pred.masks.cpu()))
            yield item, pred
    monkeypatch.setattr(module, "batches", recording)
    return seen


def assert_one_by_one(seen: dict, ensemble, images: dict, views) -> None:
    """Each recorded (4, H, W) probability map is the ensemble's of its (3, H, W) uint8
    image in `images` (same row index) predicted alone, up to ATOL."""
    assert seen.keys() == images.keys()
    for i, image in images.items():
        alone = infer.probabilities(ensemble, image[None].contiguous(), views, None)[0]
        torch.testing.assert_close(seen[i], alone, rtol=0, atol=ATOL)


def test_parse_tta():
    assert infer.parse_tta("none,hflip") == ("none", "hflip")
    assert infer.parse_tta(" none , vflip,hvflip") == ("none", "vflip", "hvflip")
    with pytest.raises(InputError, match="unknown view 'rot90'; valid: none, hflip, vflip, hvflip"):
        infer.parse_tta("none,rot90")
    with pytest.raises(InputError, match="repeated"):
        infer.parse_tta("hflip,hflip")


class Ramp(torch.nn.Module):
    """Logits = a 1x1 conv of the image (flip-equivariant) + a fixed map that depends on
    the position (not equivariant): a flip that is not undone shows."""

    def __init__(self, h, w):
        super().__init__()
        self.conv = torch.nn.Conv2d(3, 4, 1)
        y, x = torch.meshgrid(torch.linspace(-2, 1, h), torch.linspace(-1, 3, w), indexing="ij")
        self.register_buffer("ramp", (y[None] * torch.tensor([1, -1, 2, 0.5])[:, None, None]
                                      + x[None]))

    def forward(self, x):
        return self.conv(x) + self.ramp


def config(channels_last=False, amp="auto"):
    from competition.model.config import build_config
    return build_config("demo_cpu", channels_last=channels_last, amp=amp)


def test_flips_are_undone_before_averaging():
    torch.manual_seed(0)
    h, w = 8, 12
    model = Ramp(h, w).eval()
    images = torch.randint(0, 256, (2, 3, h, w), dtype=torch.uint8)
    ens = infer.Ensemble([model], [config()])
    views = ("none", "hflip", "vflip", "hvflip")
    got = infer.probabilities(ens, images, views, None)
    # by hand: the view's image flipped, its logits flipped back: conv(x) + ramp flipped
    from competition.data.datasets import normalize
    with torch.no_grad():
        f = model.conv(normalize(images))
        r = model.ramp
        expected = (torch.sigmoid(f + r) + torch.sigmoid(f + r.flip(-1))
                    + torch.sigmoid(f + r.flip(-2)) + torch.sigmoid(f + r.flip(-2, -1))) / 4
    # ATOL: another batch (8 images against 2); a flip not undone moves them by more than 0.3
    torch.testing.assert_close(got, expected, rtol=0, atol=ATOL)
    # an equivariant model gives the same probabilities with or without TTA
    model.ramp.zero_()
    torch.testing.assert_close(infer.probabilities(ens, images, views, None),
                               infer.probabilities(ens, images, ("none",), None),
                               rtol=0, atol=ATOL)


class Constant(torch.nn.Module):
    def __init__(self, logits):
        super().__init__()
        self.logits = torch.tensor(logits).view(1, 4, 1, 1)

    def forward(self, x):
        return self.logits.expand(len(x), 4, *x.shape[-2:])


def test_ensemble_averages_probabilities_not_logits():
    images = torch.zeros(1, 3, 4, 4, dtype=torch.uint8)
    ens = infer.Ensemble([Constant([0.0, 2.0, -1.0, 4.0]), Constant([2.0, 2.0, 1.0, -4.0])],
                         [config(), config(channels_last=True)])
    got = infer.probabilities(ens, images, ("none", "hflip"), None)[0, :, 0, 0]
    s = lambda v: 1 / (1 + np.exp(-v))  # noqa: E731
    expected = [(s(0) + s(2)) / 2, s(2), (s(-1) + s(1)) / 2, (s(4) + s(-4)) / 2]
    assert got.tolist() == pytest.approx(expected, abs=1e-7)


def test_checkpoint_paths_glob_list_and_weights(tmp_path):
    for run, k in (("a", 1), ("a", 0), ("b", 0)):
        (tmp_path / run / f"fold{k}").mkdir(parents=True)
        (tmp_path / run / f"fold{k}" / "best.pt").write_bytes(b"x")
    found, weights = infer.checkpoint_paths(str(tmp_path / "a" / "fold*" / "best.pt"))
    assert [p.parent.name for p in found] == ["fold0", "fold1"] and weights == [1.0, 1.0]
    assert len(infer.checkpoint_paths(f"{found[0]},{found[1]}")[0]) == 2
    # a weight per comma-separated part (a run), shared by its files
    both = f"{tmp_path / 'a' / 'fold*' / 'best.pt'},{tmp_path / 'b' / 'fold0' / 'best.pt'}"
    found, weights = infer.checkpoint_paths(both, "1,3")
    assert [p.parent.parent.name for p in found] == ["a", "a", "b"]
    assert weights == [0.5, 0.5, 3.0]
    with pytest.raises(InputError, match="--weights 1: needs one positive weight per part"):
        infer.checkpoint_paths(both, "1")
    with pytest.raises(InputError, match="--classifier-weights 1,x: expected comma-separated"):
        infer.checkpoint_paths(both, "1,x", "--classifiers")
    with pytest.raises(InputError, match="fold7.*no such checkpoint"):
        infer.checkpoint_paths(str(tmp_path / "fold7" / "best.pt"))


def test_load_ensemble_mixes_architectures_and_refuses_tasks_and_class_counts(tmp_path):
    a = random_checkpoint(tmp_path / "a.pt")
    b = random_checkpoint(tmp_path / "b.pt", arch="unet")
    ens = infer.load_ensemble([a, b], torch.device("cpu"), [1.0, 2.0])
    assert len(ens.models) == 2 and not ens.models[0].training
    assert [c.arch for c in ens.configs] == ["deeplabv3", "unet"] and ens.weight(1) == 2.0
    c = random_checkpoint(tmp_path / "c.pt", task="classify")
    with pytest.raises(InputError, match="c.pt: a classifier .* among the segmenters; pass it "
                                         "with --classifiers"):
        infer.load_ensemble([a, c], torch.device("cpu"))
    with pytest.raises(InputError, match="a.pt: a segmenter .* among the classifiers; pass it "
                                         "with --checkpoints"):
        infer.load_ensemble([c, a], torch.device("cpu"), task="classify")
    from competition.model import checkpoint
    state = checkpoint.load(a)
    state["model"]["segmentation_head.0.weight"] = torch.zeros(5, 256, 1, 1)
    state["model"]["segmentation_head.0.bias"] = torch.zeros(5)
    checkpoint.save(tmp_path / "five.pt", state)
    with pytest.raises(InputError, match="five.pt: its weights do not fit deeplabv3/resnet18 "
                                         "with 4 classes .*size mismatch"):
        infer.load_ensemble([a, tmp_path / "five.pt"], torch.device("cpu"))


def test_weighted_ensemble_and_image_level_outputs_equal_a_direct_computation(tmp_path):
    """Two segmenters of different architectures (one with an image-level head) and a
    classifier: predict_batch's masks are the weighted mean of each model's sigmoid over the
    views (flips undone), its aux and cls the view means of the heads' sigmoids."""
    a = random_checkpoint(tmp_path / "a.pt", cls_weight=0.5)
    b = random_checkpoint(tmp_path / "b.pt", seed=1, arch="unet")
    c = random_checkpoint(tmp_path / "c.pt", seed=2, task="classify")
    cpu = torch.device("cpu")
    seg = infer.load_ensemble([a, b], cpu, [1.0, 3.0])
    cls = infer.load_ensemble([c], cpu, task="classify")
    torch.manual_seed(0)
    images = torch.randint(0, 256, (2, 3, 64, 96), dtype=torch.uint8)
    views = ("none", "hflip")
    out = infer.predict_batch(seg, images, views, None, cls)
    from competition.data.datasets import normalize
    x = normalize(images)
    with torch.no_grad():
        ma, la = seg.models[0](x)
        ma_f, la_f = seg.models[0](x.flip(3))
        mb, mb_f = seg.models[1](x), seg.models[1](x.flip(3))
        lc, lc_f = cls.models[0](x), cls.models[0](x.flip(3))
    s = torch.sigmoid
    masks = (s(ma) + s(ma_f).flip(3) + 3 * s(mb) + 3 * s(mb_f).flip(3)) / 8
    torch.testing.assert_close(out.masks, masks, rtol=0, atol=1e-6)
    torch.testing.assert_close(out.maxprob, masks.amax(dim=(2, 3)), rtol=0, atol=1e-6)
    torch.testing.assert_close(out.aux, (s(la) + s(la_f)) / 2, rtol=0, atol=1e-6)
    torch.testing.assert_close(out.cls, (s(lc) + s(lc_f)) / 2, rtol=0, atol=1e-6)
    assert (out.aux - out.cls).abs().max() > 1e-3, "the two sources differ"
    assert set(out.signals()) == {"maxprob", "aux", "cls"}
    alone = infer.predict_batch(infer.load_ensemble([b], cpu), images, views, None)
    assert alone.aux is None and alone.cls is None


def test_one_behind_runs_in_order_and_raises_errors():
    done = []
    with infer.OneBehind() as cpu:
        for i in range(5):
            cpu.submit(done.append, i)
    assert done == [0, 1, 2, 3, 4]

    def boom(i):
        raise ValueError(f"bad {i}")
    with pytest.raises(ValueError, match="bad 0"):
        with infer.OneBehind() as cpu:
            cpu.submit(boom, 0)


class Overflow(torch.nn.Module):
    """A real fp16 overflow: a 1x1 conv takes each pixel to two channels of about +-1e5
    (fp16's largest is 65504: inf), the next one takes their difference, 1e3 x the pixel
    sum in fp32 and inf - inf = NaN in fp16 (a pixel sum of at least 1.7 overflows)."""

    def __init__(self):
        super().__init__()
        self.up = torch.nn.Conv2d(3, 2, 1, bias=False)
        self.diff = torch.nn.Conv2d(2, 4, 1)
        with torch.no_grad():
            self.up.weight.copy_(torch.tensor([4e4, 3.9e4])[:, None, None, None].expand(2, 3, 1, 1))
            self.diff.weight.copy_(torch.tensor([[1.0, -1], [-1, 1], [2, -2], [0.5, -0.5]])
                                   [..., None, None])
            self.diff.bias.copy_(torch.tensor([1.0, 2, -3, 0]))

    def forward(self, x):
        return self.diff(self.up(x))


@pytest.fixture
def fresh_count(monkeypatch):
    """forward.recomputed at 0, as in a new process (the warning is said at the first one)."""
    monkeypatch.setattr(forward, "recomputed", 0)


@torch.no_grad()
def test_an_fp16_overflow_is_recomputed_in_fp32_and_said_once(fresh_count, capsys):
    torch.manual_seed(0)
    model = Overflow().eval()
    x = torch.rand(2, 3, 4, 5) + 1  # pixel sums in [3, 6]: both maps of every pixel overflow
    with torch.autocast("cpu", dtype=torch.float16):
        assert model(x).isnan().all(), "a test that tests: fp16 overflows"
    expected = model(x)  # fp32, no autocast
    assert expected.isfinite().all() and expected.abs().min() > 1
    got = forward.forward_checked(model, x, torch.float16)
    assert got.dtype == torch.float32 and torch.equal(got, expected)  # the same fp32 forward
    assert torch.equal(forward.forward_checked(model, x, torch.float16), expected)
    assert forward.recomputed == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith("warning: float16 autocast gave non-finite "
                                                   "logits") and "recomputed in fp32" in err
    # finite logits are returned as the autocast gave them, without a recomputation
    small = torch.nn.Conv2d(3, 4, 1).eval()
    with torch.autocast("cpu", dtype=torch.float16):
        half = small(x)
    got = forward.forward_checked(small, x, torch.float16)
    assert half.dtype == torch.float16 and torch.equal(got, half.float())
    assert forward.recomputed == 2 and capsys.readouterr().err == ""


@torch.no_grad()
def test_non_finite_logits_in_fp32_are_a_one_line_error_naming_the_checkpoint(fresh_count):
    model = Overflow().eval()
    model.diff.bias[2] = float("nan")  # a diverged run: channel 3 is NaN in any precision
    x = torch.randn(1, 3, 4, 5)
    with pytest.raises(forward.NonFiniteLogits, match=r"^the model produces non-finite logits "
                       r"in fp32 too \(20 of 80 values NaN or inf\)"):
        forward.forward_checked(model, x, torch.float16)
    with pytest.raises(forward.NonFiniteLogits, match=r"in fp32 \(20 of 80 values"):
        forward.forward_checked(model, x, None)
    images = torch.zeros(1, 3, 4, 5, dtype=torch.uint8)
    ens = infer.Ensemble([Constant([0.0] * 4), model], [config()] * 2,
                         ["folds/fold0/best.pt", "folds/fold3/best.pt"])
    with pytest.raises(InputError, match=r"^folds/fold3/best.pt: the model produces non-finite "
                       r"logits in fp32 \(40 of 160 values") as e:
        infer.probabilities(ens, images, ("none", "hflip"), None)
    assert "\n" not in str(e.value)


class Recorder(Constant):
    """Constant logits; records the autocast dtype of each call (None: autocast off)."""

    def __init__(self):
        super().__init__([0.0] * 4)
        self.dtypes = []

    def forward(self, x):
        on = torch.is_autocast_enabled(x.device.type)
        self.dtypes.append(torch.get_autocast_dtype(x.device.type) if on else None)
        return super().forward(x)


def test_a_model_trained_with_amp_off_runs_in_fp32(monkeypatch):
    on, off = Recorder(), Recorder()
    ens = infer.Ensemble([on, off], [config(amp="bf16"), config(amp="off")])
    infer.probabilities(ens, torch.zeros(1, 3, 4, 4, dtype=torch.uint8), ("none",),
                        torch.float16)
    assert (on.dtypes, off.dtypes) == ([torch.float16], [None])
    # on a T4 (compute 7.5), where the device's own choice is fp16, a run trained in bf16
    # runs in fp16 (no native bf16 there) and a run with amp off in fp32
    from competition.train.fit import amp_dtype
    monkeypatch.setattr(torch.cuda, "get_device_capability", lambda device=None: (7, 5))
    t4 = amp_dtype("auto", torch.device("cuda"))
    assert t4 == torch.float16
    assert [forward.model_dtype(config(amp=a), t4) for a in ("auto", "bf16", "fp16", "off")] == \
        [torch.float16] * 3 + [None]
