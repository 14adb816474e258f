import os
import sys
from pathlib import Path

import pytest

os.environ.setdefault("NO_ALBUMENTATIONS_UPDATE", "1")
if os.environ.get("PYTEST_XDIST_WORKER"):
    # several test processes share the cores: one thread each (and in the commands they
    # start), set before torch is imported; measured: 2 workers 1.46x serial on 2 cores
    os.environ.setdefault("OMP_NUM_THREADS", "1")
ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(Path(__file__).parent))
FIXTURES = ROOT.parent / "shared" / "fixtures"
REAL = ROOT.parent / "shared" / "real"  # real competition files; a user's clone has none
needs_real = pytest.mark.skipif(not REAL.is_dir(), reason=f"no real Severstal files: {REAL} "
                                "is absent (it is not part of the repository)")


@pytest.fixture(scope="session")
def synthetic(tmp_path_factory):
    """A small synthetic dataset, made once per test session."""
    from competition.data.synth import make_dataset

    out = tmp_path_factory.mktemp("data") / "synthetic"
    make_dataset(out, n_train=60, n_test=12, seed=3)
    return out


def random_checkpoint(path, seed=0, scale=30.0, split=None, **overrides):
    """A best.pt of an untrained demo_cpu model whose head is scaled up, so that its
    probabilities spread over (0, 1) with structure in space: inference without training.
    overrides: config fields (task="classify" for a classifier, cls_weight for a head).
    split: the record of the split it claims (provenance.split_record), None: none (a
    checkpoint saved before splits were recorded)."""
    import torch

    from competition.model import checkpoint
    from competition.model.config import build_config, to_dict
    from competition.model.networks import from_config

    config = build_config("demo_cpu", **overrides)
    torch.manual_seed(seed)
    model = from_config(config, "none")
    state = model.state_dict()
    weights = [k for k in state if k.endswith(".weight")]
    masks = [k for k in weights if not k.startswith("classification_head")]
    labels = [k for k in weights if k.startswith("classification_head")]
    for head in masks[-1:] + labels[-1:]:  # the mask head; an image-level head too
        state[head] *= scale
        state[head.replace(".weight", ".bias")] *= scale
    checkpoint.save(path, {"config": to_dict(config), "model": state, "ema": None, "epoch": 1,
                           "step": 1, **({"split": split} if split is not None else {})})
    return path


def small_test_set(synthetic, root, n=4, seed=1):
    """`root`: the first `n` test images of the synthetic set, with their sample rows shuffled
    (the order a submission must follow)."""
    import shutil

    import pandas as pd

    (root / "test_images").mkdir(parents=True)
    sample = pd.read_csv(synthetic / "sample_submission.csv", keep_default_na=False)
    ids = sorted(set(sample.ImageId))[:n]
    for image_id in ids:
        shutil.copy(synthetic / "test_images" / image_id, root / "test_images" / image_id)
    rows = sample[sample.ImageId.isin(ids)].sample(frac=1.0, random_state=seed)
    rows.to_csv(root / "sample_submission.csv", index=False)
    return root


def real_format_test_set(synthetic, root, n=4):
    """`root`: a test set in the format of the real final sample_submission.csv: its header
    and first `n` rows as they are (`ImageId,EncodedPixels,ClassId`, one row per image,
    `1 409600`, ClassId 0), the first `n` synthetic test images copied under those ImageIds.
    Needs REAL."""
    import shutil

    lines = (REAL / "sample_submission.csv").read_text().splitlines(keepends=True)[:n + 1]
    (root / "test_images").mkdir(parents=True)
    (root / "sample_submission.csv").write_text("".join(lines))
    images = sorted((synthetic / "test_images").iterdir())[:n]
    for line, image in zip(lines[1:], images):
        shutil.copy(image, root / "test_images" / line.split(",")[0])
    return root
