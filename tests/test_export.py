"""kata.realise.export on a real store: which steps, where, replacing what was there."""

from __future__ import annotations

import os

import pytest

from kata.errors import KataError
from kata.realise.export import export, exported
from store import Store


def test_which_steps_are_exported():
    rows = [("a", "passed", "t1", True), ("b", "passed", "t2", False), ("c", "failed", "", True),
            ("d", "skipped", "", True)]
    assert exported(rows) == [("a", "t1")]
    assert exported(rows, named=("b",)) == [("a", "t1"), ("b", "t2")]
    with pytest.raises(KataError) as e:
        exported(rows, named=("c",))
    assert e.value.reason == "export.no_output"


def test_export_replaces_only_what_the_tree_holds(tmp_path):
    src = tmp_path / "src"
    (src / "dist").mkdir(parents=True)
    (src / "dist/a.whl").write_text("new")
    (src / "run").write_text("#!/bin/sh\n")
    (src / "run").chmod(0o755)
    os.symlink("run", src / "link")
    with Store.open(tmp_path / "store") as store:
        tree = store.put_tree(src, paths=("dist", "run", "link"))
        out = tmp_path / "out"
        (out / "dist").mkdir(parents=True)
        (out / "dist/old.whl").write_text("old")
        (out / "keep.txt").write_text("mine")
        elsewhere = tmp_path / "elsewhere"
        elsewhere.mkdir()
        (elsewhere / "precious").write_text("x")
        os.symlink(elsewhere, out / "link")  # replaced as a link, never followed
        done = export(store, [("pkg", tree)], out, flat=True)
        assert [d.path for d in done] == [out]
        assert sorted(os.listdir(out)) == ["dist", "keep.txt", "link", "run"]
        assert os.listdir(out / "dist") == ["a.whl"]
        assert os.readlink(out / "link") == "run" and (elsewhere / "precious").exists()
        assert (out / "run").stat().st_mode & 0o777 == 0o755
        export(store, [("pkg", tree), ("other", tree)], out, flat=False)
        assert sorted(os.listdir(out / "pkg")) == ["dist", "link", "run"]
        assert not any(n.startswith(".kata-export-") for n in os.listdir(out))
