"""`bench flops`: the counter against hand-counted layers, the per-image counts of a model
against the relations convolutions obey, the projection against hand-worked sums, and the
command on a recipe whose dataset is not here."""
import dataclasses

import pytest
import torch
from torch import nn

from competition.bench import flops
from competition.model.config import build_config
from test_cli import one_line_error, run_here


def test_count_is_two_flops_per_multiply_add():
    conv = nn.Conv2d(3, 8, 3, padding=1)
    # each of the 8 x 10 x 12 outputs sums 3 x 3 x 3 products: 2 FLOPs each (bias not counted)
    assert flops.count(lambda: conv(torch.zeros(1, 3, 10, 12))) == 2 * 8 * 10 * 12 * 27
    linear = nn.Linear(5, 7)
    assert flops.count(lambda: linear(torch.zeros(4, 5))) == 2 * 4 * 5 * 7


@pytest.mark.parametrize("preset", ["demo_cpu", "demo_cpu_cls"])
def test_per_image_counts_follow_the_image_size(preset):
    config = build_config(preset)
    train, infer = flops.per_image(config)
    # the same model on a crop: forward alone, per image
    model = flops.from_config(config, encoder_weights="none").eval()
    with torch.no_grad():
        forward = flops.count(lambda: model(
            torch.zeros(1, 3, config.crop_height, config.crop_width)))
    # backward costs about twice the forward (weights' and inputs' gradients), less the
    # first layer's input gradient, which is never needed
    assert 2.5 < train / forward < 3.0
    # convolutions scale with the pixels; the pooled branches and heads do not, a little
    pixels = (256 * 1600) / (config.crop_height * config.crop_width)
    assert infer / forward == pytest.approx(pixels, rel=0.02)


def test_steps_are_the_hand_worked_sums():
    work = flops.Work("a", folds=2, epochs=3, train=10.0, infer=4.0)
    # 100 train images in 5 folds: 20 validated per fold, 80 trained on
    rows = dict(flops.steps([work], n_folds=5, views=2, train_images=100, test_images=10))
    assert rows == {"train a": 2 * 3 * (80 * 10 + 20 * 4),  # 5280
                    "oof": 2 * 20 * 2 * 4,  # two folds' validation images, 2 views
                    "predict": 10 * 2 * 2 * 4,  # 10 test images x 2 models x 2 views
                    "kernel rehearsal": 160}
    other = dataclasses.replace(work, name="b", folds=1)
    assert dict(flops.steps([work, other], 5, 2, 100, 10, rehearse=False)) == {
        "train a": 5280, "train b": 2640, "oof": 480, "predict": 240}
    assert flops.minutes(6e15, 50) == pytest.approx(2.0)  # 6e15 / 5e13 = 120 s


def test_the_command_counts_a_recipe_whose_data_is_not_here(tmp_path, capsys):
    recipe = tmp_path / "r.yaml"
    recipe.write_text(f"data: {tmp_path / 'absent'}\n"
                      f"split: {{file: {tmp_path / 'f.csv'}, n_folds: 4}}\n"
                      "models:\n"
                      "  - {name: seg, role: segmenter, preset: demo_cpu, folds: [0, 1]}\n"
                      "oof: {tta: [none, hflip]}\n")
    out = run_here(capsys, "bench", "flops", "--recipe", recipe, "--tflops", 10,
                   "--train-images", 400_000, "--test-images", 80_000)
    assert out.returncode == 0, out.stderr
    train, infer = flops.per_image(build_config("demo_cpu"))
    # 100,000 validated per fold, 300,000 trained on; no kernel: no rehearsal
    expected = (2 * 6 * (300_000 * train + 100_000 * infer) + 2 * 100_000 * 2 * infer
                + 80_000 * 2 * 2 * infer)
    assert expected > 5e15  # printed to 0.1 PFLOPs: large enough to check to 1%
    total = next(line for line in out.stdout.splitlines() if line.startswith("total"))
    assert float(total.split()[1]) == pytest.approx(expected / 1e15, rel=0.01)
    assert float(total.split()[2]) == pytest.approx(expected / 1e13 / 60, rel=0.01)
    assert "10 TFLOPS (an assumption, not a measurement)" in out.stdout
    one_line_error(run_here(capsys, "bench", "flops"), "--recipe FILE is needed")
