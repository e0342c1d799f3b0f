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
    with pytest.raises(KataError) as e:
        exported(rows, named=("c",))
    assert e.value.reason == "export.no_output"
    # a newcomer's `kata export --step smoke` of a step with no artifacts: '[OUT] smoke ->
    # DIR', exit 0, and an empty DIR (the README: "nothing to export: exit 1")
    with pytest.raises(KataError) as e:
        exported(rows, named=("b",))
    assert e.value.reason == "export.no_output" and e.value.exit_code == 1
    assert "declares no artifacts: add `artifacts:`" in e.value.message


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


def test_a_matrix_instance_with_a_slash_exports_into_one_directory_of_out(tmp_path):
    """Found by a review: a matrix value may hold '/' (``X: ["linux/amd64"]``), and the
    instance's name was joined to ``--out`` as a path: ``t (X=a/../../../victim)`` put its
    artifacts outside DIR, replacing (rmtree) the directory it named there, and a value
    like ``a/b`` failed the export with a bare "No such file or directory". Each step
    gets exactly one directory of DIR, its name with '/' written %2F."""
    src = tmp_path / "src"
    src.mkdir()
    (src / "f").write_text("artifact")
    victim = tmp_path / "victim"
    victim.mkdir()
    (victim / "precious").write_text("x")
    with Store.open(tmp_path / "store") as store:
        tree = store.put_tree(src, paths=("f",))
        out = tmp_path / "a" / "b" / "out"
        names = ["t (X=a/b)", "t (X=a/../../../victim)", "t (X=..)"]
        done = export(store, [(n, tree) for n in names], out, flat=False)
        assert (victim / "precious").exists() and not (victim / "f").exists()
        assert sorted(os.listdir(out)) == ["t (X=..)", "t (X=a%2F..%2F..%2F..%2Fvictim)",
                                           "t (X=a%2Fb)"]
        assert all(d.path.parent == out and (d.path / "f").read_text() == "artifact"
                   for d in done)
