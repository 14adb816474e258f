"""files.atomic_group: postprocess.json and cv_report/ replaced together, whenever a kill
comes (a KeyboardInterrupt raised at each step stands for the kill)."""
import json
import os

import pytest

from competition import files
from competition.infer.search import read_params

CLASSES = {c: {"threshold": 0.5, "min_component": 0, "min_area": 0} for c in "1234"}


def write_old(folder):
    (folder / "cv_report").mkdir(parents=True)
    (folder / "cv_report" / "cv_report.md").write_text("old")
    (folder / "postprocess.json").write_text(json.dumps({"classes": CLASSES, "tag": "old"}))
    (folder / "submission.csv").write_text("not part of the group")


def state(folder):
    """(cv_report.md's text, postprocess.json's tag, the hidden entries left)."""
    report = folder / "cv_report" / "cv_report.md"
    return (report.read_text() if report.is_file() else None,
            json.loads((folder / "postprocess.json").read_text())["tag"],
            sorted(p for p in os.listdir(folder) if p.startswith(".")))


def write_new(folder):
    with files.atomic_group(folder) as tmp:
        (tmp / "cv_report").mkdir()
        (tmp / "cv_report" / "cv_report.md").write_text("new")
        (tmp / "postprocess.json").write_text(json.dumps({"classes": CLASSES, "tag": "new"}))


def test_a_group_replaces_its_entries_and_nothing_else(tmp_path):
    write_old(tmp_path)
    write_new(tmp_path)
    assert state(tmp_path) == ("new", "new", [])
    assert (tmp_path / "submission.csv").read_text() == "not part of the group"


def test_a_failure_before_the_commit_leaves_both_old(tmp_path):
    write_old(tmp_path)
    with pytest.raises(KeyboardInterrupt):
        with files.atomic_group(tmp_path) as tmp:
            (tmp / "postprocess.json").write_text("{}")
            raise KeyboardInterrupt
    assert state(tmp_path) == ("old", "old", [])


@pytest.mark.parametrize("step", ["commit", "cv_report", "postprocess.json", "rmtree"])
def test_a_kill_at_any_step_reads_as_both_old_or_both_new(tmp_path, monkeypatch, step):
    write_old(tmp_path)
    real_replace, real_rename, real_rmtree = os.replace, os.rename, files.shutil.rmtree

    def dies(path):
        if step in str(path) or (step == "commit" and str(path).endswith(".group.commit")):
            raise KeyboardInterrupt

    def replace(src, dst):
        dies(dst)
        real_replace(src, dst)

    def rename(src, dst):
        dies(dst)
        real_rename(src, dst)

    def rmtree(path, *args, **kwargs):
        if step == "rmtree" and path == tmp_path / "cv_report":
            raise KeyboardInterrupt
        real_rmtree(path, *args, **kwargs)
    with monkeypatch.context() as patch:
        patch.setattr(files.os, "replace", replace)
        patch.setattr(files.os, "rename", rename)
        patch.setattr(files.shutil, "rmtree", rmtree)
        with pytest.raises(KeyboardInterrupt):
            write_new(tmp_path)
    # a reader first finishes a committed group: what it reads is one search's
    read_params(tmp_path / "postprocess.json")
    want = ("old", "old", []) if step == "commit" else ("new", "new", [])
    assert state(tmp_path) == want


def test_a_staging_folder_left_by_a_sigkill_is_removed_by_the_next_group(tmp_path):
    write_old(tmp_path)
    (tmp_path / ".group.abc.tmp" / "cv_report").mkdir(parents=True)  # killed before commit
    assert state(tmp_path)[:2] == ("old", "old")
    write_new(tmp_path)
    assert state(tmp_path) == ("new", "new", [])
