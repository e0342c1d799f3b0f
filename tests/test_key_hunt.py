"""Needless misses and wrong hits, pure (no container): what must not change a key does not,
and what a step sees changes it (branch cache-trust; the real-containerd side is
tests/test_key_hunt_e2e.py)."""

from __future__ import annotations

from pathlib import Path

from kata.compile import compile_pipeline
from kata.loader import load_pipeline

CONFIG = """\
pipeline: p
env:
  B: "2"
  A: "1"
steps:
  - name: build
    image: alpine@sha256:{a}
    commands:
      - |
        echo one
        echo two
    artifacts: [dist/]
  - name: test
    image: alpine@sha256:{a}
    depends_on: [build]
    commands: ["true"]
""".format(a="a" * 64)


def _keys(repo: Path, text: str, *, name: str = ".kata-ci.yaml") -> dict[str, str | None]:
    config = repo / name
    config.write_bytes(text.encode())
    graph = compile_pipeline(load_pipeline(config), repo_root=repo)
    return {n: graph.nodes[n].drv_hash for n in graph.order}


def test_a_config_with_crlf_line_ends_keys_as_with_lf(tmp_path) -> None:
    """A config checked out on Windows (``core.autocrlf``) runs the same commands: YAML
    folds CRLF to LF, so the keys are the LF config's (no needless miss, and no ``\\r``
    reaching a shell)."""
    (tmp_path / "src.txt").write_text("x\n")
    lf = _keys(tmp_path, CONFIG)
    crlf = _keys(tmp_path, CONFIG.replace("\n", "\r\n"))
    assert None not in lf.values()
    assert crlf == lf


def test_the_order_of_steps_and_env_in_the_file_is_no_key(tmp_path) -> None:
    """Steps listed in another order, env in another order: the same keys."""
    (tmp_path / "src.txt").write_text("x\n")
    before = _keys(tmp_path, CONFIG)
    head, steps = CONFIG.split("steps:\n")
    build, test = steps.split("  - name: test\n")
    swapped = head.replace('  B: "2"\n  A: "1"\n', '  A: "1"\n  B: "2"\n')
    assert swapped != head
    after = _keys(tmp_path, swapped + "steps:\n  - name: test\n" + test + build)
    assert after == before


def test_the_checkout_path_is_no_key(tmp_path) -> None:
    """The same files under another absolute path (another clone, another user's home)."""
    one, two = tmp_path / "a", tmp_path / "elsewhere" / "b"
    for root in (one, two):
        (root / "src").mkdir(parents=True)
        (root / "src" / "x.txt").write_text("x\n")
    assert _keys(one, CONFIG) == _keys(two, CONFIG)


def _repo_with_submodule(tmp_path: Path) -> Path:
    from support.git import git

    lib = tmp_path / "lib"
    (lib / "inc").mkdir(parents=True)
    (lib / "inc" / "z.h").write_text("#define Z 1\n")
    (lib / ".gitignore").write_text("*.o\n")
    git(lib, "init", "-q", "-b", "main")
    git(lib, "add", "-A")
    git(lib, "commit", "-q", "-m", "lib")
    app = tmp_path / "app"
    app.mkdir()
    (app / "main.c").write_text("int main(void) { return 0; }\n")
    git(app, "init", "-q", "-b", "main")
    git(app, "-c", "protocol.file.allow=always", "submodule", "add", "-q", str(lib), "vendor/lib")
    git(app, "add", "-A")
    git(app, "commit", "-q", "-m", "app")
    return app


def test_a_submodules_files_are_inputs(tmp_path) -> None:
    """git lists a checked-out submodule as one entry (a gitlink, a directory): its files
    were neither seen by a step nor in any key, so a build that includes them failed with a
    missing file. They are inputs now, as the repository's own are (its ignored files are
    not), and an edit in the submodule changes the key."""
    from kata.inputs import Snapshot

    app = _repo_with_submodule(tmp_path)
    (app / "vendor" / "lib" / "inc" / "z.o").write_text("ignored by the submodule\n")
    (app / "vendor" / "lib" / "new.txt").write_text("untracked in the submodule\n")
    snap = Snapshot(app)
    assert "vendor/lib" not in snap.paths
    assert {"vendor/lib/inc/z.h", "vendor/lib/.gitignore", "vendor/lib/new.txt"} <= set(snap.paths)
    assert "vendor/lib/inc/z.o" not in snap.paths
    before = snap.input_set().digest
    (app / "vendor" / "lib" / "inc" / "z.h").write_text("#define Z 2\n")
    assert Snapshot(app).input_set().digest != before


def test_unicode_forms_of_a_name_are_two_files(tmp_path) -> None:
    """File names are bytes: an NFC and an NFD "é" are two names on Linux, so two keys (a
    step sees the name as it is; no normalisation could make them one file there)."""
    import unicodedata

    from kata.inputs import Snapshot

    digests = []
    for form in ("NFC", "NFD"):
        root = tmp_path / form
        root.mkdir()
        (root / unicodedata.normalize(form, "café.txt")).write_text("x\n")
        digests.append(Snapshot(root).input_set().digest)
    assert digests[0] != digests[1]


def test_the_no_op_record_observes_a_submodules_index_and_ignore_files(tmp_path) -> None:
    """A replayed no-op must fall back when a submodule's listing may change: its index
    (``git rm --cached`` of an ignored file unlists it with no file touched), its
    info/exclude and its config are observed, as the repository's own are."""
    from kata.realise.noop import _git_paths

    app = _repo_with_submodule(tmp_path)
    observed = _git_paths(str(app), [])
    assert observed is not None
    gitdir = app / ".git" / "modules" / "vendor" / "lib"
    assert {str(gitdir / "index"), str(gitdir / "info/exclude"), str(gitdir / "config")} \
        <= set(observed)
    assert not any("/objects" in p for p in observed)


def test_an_empty_directory_is_no_input_and_no_key(tmp_path) -> None:
    """Directories exist only through their files (docs/config.md, inputs): an empty one
    is not seen (the snapshot has no entry for it), so it changes no key, and a file
    added in it does."""
    from kata.inputs import Snapshot

    (tmp_path / "src").mkdir()
    (tmp_path / "src" / "a.txt").write_text("a\n")
    before = Snapshot(tmp_path).input_set().digest
    (tmp_path / "empty" / "deeper").mkdir(parents=True)
    assert Snapshot(tmp_path).input_set().digest == before
    (tmp_path / "empty" / "deeper" / "f").write_text("")
    assert Snapshot(tmp_path).input_set().digest != before


def test_a_broken_submodule_checkout_is_left_unseen_not_a_directory_walk(tmp_path) -> None:
    """A submodule whose ``.git`` names no repository cannot be listed: it stays unseen
    (as every submodule was before), and the repository is still listed by git (a walk
    would take its ignored files)."""
    from kata.inputs import Snapshot

    app = _repo_with_submodule(tmp_path)
    (app / "build.log").write_text("ignored\n")
    (app / ".gitignore").write_text("*.log\n")
    (app / "vendor" / "lib" / ".git").write_text("gitdir: /nowhere\n")
    paths = Snapshot(app).paths
    assert "build.log" not in paths and "main.c" in paths
    assert not any(p.startswith("vendor/lib/") for p in paths)
