"""Which paths ``artifacts:`` entries select (kata.realise.artifacts), on a real directory."""

from __future__ import annotations

import os

from kata.realise.artifacts import missing_message, select


def _tree(root, files):
    for rel in files:
        p = root / rel
        p.parent.mkdir(parents=True, exist_ok=True)
        p.write_text(rel)


def test_globs_are_anchored_gitignore_patterns(tmp_path):
    _tree(tmp_path, ["dist/a.whl", "dist/b.whl", "dist/a.tar.gz", "dist/sub/c.whl",
                     "build/x.log", "build/deep/y.log", "top.whl"])
    assert select(tmp_path, ["dist/*.whl"]) == (["dist/a.whl", "dist/b.whl"], [])
    assert select(tmp_path, ["*.whl"]) == (["top.whl"], [])  # anchored at the workdir
    assert select(tmp_path, ["**/*.log"]) == (["build/deep/y.log", "build/x.log"], [])
    assert select(tmp_path, ["dist/", "dist/*.whl"]) == (["dist"], [])  # kept once
    assert select(tmp_path, ["dist/*.exe", "missing/"]) == ([], ["dist/*.exe", "missing/"])
    assert missing_message(["dist/*.exe"]) == \
        "declared artifact dist/*.exe was not produced (no path matches it)"


def test_glob_walk_never_follows_a_link_out_of_the_workdir(tmp_path):
    outside = tmp_path / "host"
    _tree(outside, ["secret.whl"])
    work = tmp_path / "work"
    work.mkdir()
    os.symlink(outside, work / "dist")
    os.symlink(outside, work / "link")
    assert select(work, ["dist/*.whl"]) == ([], ["dist/*.whl"])
    # a link the glob names is taken as a link (not walked into)
    assert select(work, ["**/*.whl"]) == ([], ["**/*.whl"])
    assert select(work, ["li*"]) == (["link"], [])


def test_a_named_link_to_a_directory_inside_the_workdir_resolves_there(tmp_path):
    """dir_links: only a link the entry names itself, only into the working directory
    (relative, or absolute under the step's workdir), never the working directory itself."""
    from kata.realise.artifacts import dir_links
    work = tmp_path / "work"
    _tree(work, ["build/out/app", "file"])
    _tree(tmp_path, ["host/secret"])
    links = {"result": "build/out", "abs": "/workspace/build/out", "chain": "result",
             "viaup": "build/../build/out", "tofile": "file", "out": str(tmp_path / "host"),
             "escape": "../host", "dangling": "nope", "root": ".", "loop": "loop",
             "absout": "/etc"}
    for name, target in links.items():
        os.symlink(target, work / name)
    got = dir_links(work, sorted(links) + ["build", "file"], "/workspace")
    assert got == {"result": "build/out", "abs": "build/out", "chain": "build/out",
                   "viaup": "build/out"}
    assert dir_links(work, ["abs"], "/src") == {}  # the container saw it elsewhere


def test_a_missing_artifact_names_where_a_file_of_that_name_went(tmp_path):
    """A newcomer's `artifacts: ["build/*.whl"]` for `python -m build --outdir dist` said
    only that no path matches it; the workspace had dist/click-8.1.7-py3-none-any.whl."""
    _tree(tmp_path, ["dist/click-8.1.7-py3-none-any.whl", "src/click/core.py"])
    _, missing = select(tmp_path, ["build/*.whl"])
    assert missing_message(missing, tmp_path) == (
        "declared artifact build/*.whl was not produced (no path matches it); the workspace "
        "has dist/click-8.1.7-py3-none-any.whl: fix the path in artifacts:")
    _, missing = select(tmp_path, ["out/"])  # nothing of that name anywhere: no guess
    assert missing_message(missing, tmp_path) == "declared artifact out/ was not produced"
