"""`ablation FILE` (cli/ablation.py): the file's refusals, each row's recipe, and the table
against hand-worked histories (training stubbed: the rows' runs are written by hand)."""
import csv
import math

import pytest

from competition.cli import ablation, pipeline
from competition.errors import InputError
from competition.model.config import build_config
from test_cli import ROOT
from test_pipeline import data  # noqa: F401 (a fixture: a dataset folder as a recipe reads it)

RECIPES = ROOT / "recipes"


@pytest.fixture
def base(tmp_path, data):  # noqa: F811
    # fold 0 holds 4 images: class 1 in one, class 3 in two, classes 2 and 4 in none
    folds = tmp_path / "folds.csv"
    folds.write_text("ImageId,fold,class1,class2,class3,class4\n"
                     "a.jpg,0,1,0,1,0\nb.jpg,0,0,0,1,0\nc.jpg,0,0,0,0,0\nd.jpg,0,0,0,0,0\n"
                     "e.jpg,1,1,1,1,1\n")
    recipe = tmp_path / "base.yaml"
    recipe.write_text(f"""\
data: {data}
split: {{file: {folds}, n_folds: 2}}
out: {tmp_path}/sub
models:
  - name: seg
    role: segmenter
    preset: demo_cpu
    overrides: {{cls_weight: 0.2}}
    folds: [0]
kernel: {{owner: me, out: {tmp_path}/k}}
""")
    return recipe


def write_ablation(tmp_path, base, rows):
    path = tmp_path / "abl.yaml"
    path.write_text(f"base: {base}\nmodel: seg\nruns: {tmp_path}/runs\nout: {tmp_path}/out\n"
                    f"seeds: [0, 1, 2]\nrows:\n{rows}")
    return path


def test_rows_read_with_their_seeds_and_recipes(tmp_path, base):
    path = write_ablation(tmp_path, base, "  - {name: default, full: true}\n"
                          "  - {name: bce, overrides: {loss: bce, pos_weight: [2, 2, 1, 2]}}\n"
                          "  - {name: long, overrides: {epochs: 12}, seeds: [5]}\n")
    a = ablation.read(path)
    assert [(r.name, r.full, r.seeds) for r in a.rows] == [
        ("default", True, (0, 1, 2)), ("bce", False, (0,)), ("long", False, (5,))]
    from competition.cli.recipe import load
    recipe = ablation.row_recipe(a, load(base), a.rows[1], 7)
    (model,) = recipe.models
    assert model.config == build_config("demo_cpu", cls_weight=0.2, loss="bce",
                                        pos_weight=(2.0, 2.0, 1.0, 2.0), seed=7)
    assert model.run == tmp_path / "runs" / "bce-s7"
    assert recipe.out == tmp_path / "out" / "bce-s7" and recipe.kernel is None
    assert recipe.oof.oof_csv is False and recipe.oof.tta == load(base).oof.tta
    assert recipe.submission == tmp_path / "out" / "bce-s7" / "submission.csv"


@pytest.mark.parametrize("rows, said", [
    ("  - {name: x, overrides: {lr_decoder: 1}}\n", "unknown config field 'lr_decoder'"),
    ("  - {name: x, overrides: {seed: 3}}\n", "unknown config field 'seed'"),
    ("  - {name: x, overrides: {epochs: many}}\n", "epochs 'many'"),
    ("  - {name: x}\n  - {name: x}\n", "name 'x'"),
    ("  - {name: x, colour: red}\n", "unknown key 'colour'"),
])
def test_bad_rows_are_one_line_naming_the_row(tmp_path, base, rows, said):
    from competition.cli.recipe import load

    with pytest.raises(InputError, match=r"abl\.yaml") as e:
        a = ablation.read(write_ablation(tmp_path, base, rows))
        for row in a.rows:
            ablation.row_recipe(a, load(base), row, 0)
    assert said in str(e.value) and "\n" not in str(e.value)


def test_all_empty_by_class_by_hand(tmp_path, base):
    # fold 0: class 1 in 1 of 4 images, class 3 in 2 of 4, classes 2 and 4 in none
    assert ablation.all_empty_by_class(tmp_path / "folds.csv", 0) == [0.75, 1.0, 0.5, 1.0]


HISTORY = ["epoch", "step", "val_dice", "dice_1", "dice_2", "dice_3", "dice_4"]


def write_run(folder, rows):
    folder.mkdir(parents=True)
    with (folder / "history.csv").open("w", newline="") as f:
        w = csv.writer(f)
        w.writerow(HISTORY)
        w.writerows(rows)


def test_the_table_by_hand(tmp_path, base, monkeypatch, capsys):
    """Two screened rows, stubbed training: row a (seed 0) has its best epoch 2 (0.80, the
    first of two equal maxima), where class 1 is above its all-empty 0.75 and class 3 at its
    0.5; row b's seeds 0 and 1 give val Dice 0.70 and 0.90: mean 0.80, sd 0.1414."""
    path = write_ablation(tmp_path, base, "  - {name: a}\n  - {name: b, seeds: [0, 1]}\n")
    runs = tmp_path / "runs"
    write_run(runs / "a-s0" / "fold0", [[1, 10, 0.70, 0.75, 1, 0.5, 1],
                                        [2, 20, 0.80, 0.80, 1, 0.5, 1],
                                        [3, 30, 0.80, 0.70, 1, 0.6, 1]])
    write_run(runs / "b-s0" / "fold0", [[1, 10, 0.70, 0.75, 1, 0.5, 1]])
    write_run(runs / "b-s1" / "fold0", [[1, 10, 0.90, 0.90, 1, 0.9, 1]])
    trained, folds_made = [], []
    monkeypatch.setattr(pipeline, "step_folds", lambda recipe, ctx: folds_made.append(recipe))
    monkeypatch.setattr(pipeline, "step_train",
                        lambda recipe, ctx: trained.append(recipe.models[0].run.name))
    from competition.cli.front import main

    assert main(["ablation", str(path)]) == 0
    assert trained == ["a-s0", "b-s0", "b-s1"]
    assert len(folds_made) == 1  # the folds file is checked (or made) once, before any row
    table = (tmp_path / "out" / "table.md").read_text().splitlines()
    assert table[2].startswith("| all-empty | | 0.8125 | 0.7500 | 1.0000 | 0.5000 | 1.0000 |")
    a, b = table[3].split(" | "), table[4].split(" | ")
    assert a[:8] == ["| a", "0", "0.8000", "0.8000", "1.0000", "0.5000", "1.0000",
                     "1:1/1 2:0/1 3:0/1 4:0/1"]
    sd = math.sqrt(((0.7 - 0.8) ** 2 + (0.9 - 0.8) ** 2) / 1)
    assert b[:3] == ["| b", "0,1", f"0.8000 ± {sd:.4f}"]
    assert b[7] == "1:1/2 2:0/2 3:1/2 4:0/2"
    rows = list(csv.DictReader((tmp_path / "out" / "table.csv").open()))
    assert [(r["row"], r["seed"], r["epoch"], r["leaves_1"]) for r in rows] == [
        ("a", "0", "2", "20"), ("b", "0", "1", ""), ("b", "1", "1", "10")]
    assert "wrote" in capsys.readouterr().out


def test_the_shipped_ablation_file_reads(monkeypatch):
    a = ablation.read(RECIPES / "ablation" / "demo.yaml")
    assert a.base == RECIPES.relative_to(ROOT) / "demo.yaml" and a.model == "deeplabv3"
    assert any(r.full for r in a.rows) and len({r.name for r in a.rows}) == len(a.rows)
