"""Merged stacks: overlayfs' layering rules with hard links, prefix reuse, eviction by gc."""

from __future__ import annotations

import os
from pathlib import Path

from store import Store
from store.merged import merged_name


def _tree(s: Store, root: Path, files: dict[str, str | None], links: dict[str, str] = {}) -> str:
    """A tree of ``files`` (path -> text; None: an empty directory) and symlinks."""
    root.mkdir(parents=True)
    for rel, text in files.items():
        p = root / rel
        if text is None:
            p.mkdir(parents=True, exist_ok=True)
        else:
            p.parent.mkdir(parents=True, exist_ok=True)
            p.write_text(text)
    for rel, target in links.items():
        (root / rel).symlink_to(target)
    return s.put_tree(root)


def _listing(path: Path) -> dict[str, str]:
    out = {}
    for dirpath, dirs, files in os.walk(path):
        for name in dirs + files:
            p = Path(dirpath) / name
            rel = str(p.relative_to(path))
            if p.is_symlink():
                out[rel] = "-> " + os.readlink(p)
            elif p.is_dir():
                out[rel] = "dir"
            else:
                out[rel] = p.read_text()
    return out


def test_a_later_tree_hides_an_earlier_one_and_directories_merge(tmp_path: Path) -> None:
    with Store.open(tmp_path / "store") as s:
        a = _tree(s, tmp_path / "a", {"x": "a", "d/f": "a", "d/g": "a", "gone/h": "a",
                                      "file-then-dir": "a", "keep": "a"})
        b = _tree(s, tmp_path / "b", {"x": "b", "d/g": "b", "d/new": "b", "gone": "b",
                                      "file-then-dir/inner": "b", "e": None},
                  links={"l": "x"})
        p = Path(s.merged([a, b]))
        assert _listing(p) == {
            "x": "b", "d": "dir", "d/f": "a", "d/g": "b", "d/new": "b",
            "gone": "b",  # b's file hides a's directory entirely
            "file-then-dir": "dir", "file-then-dir/inner": "b", "keep": "a", "e": "dir",
            "l": "-> x",
        }
        # hard links into the read-only unpacked copies: no data copied, nothing writable
        assert os.stat(p / "d" / "f").st_ino == os.stat(Path(s.unpacked(a)) / "d" / "f").st_ino
        assert os.stat(p / "x").st_mode & 0o222 == 0
        assert os.stat(p / "d").st_mode & 0o222 == 0
        assert p.name == merged_name([a, b])
        # the other order: a's files win
        q = Path(s.merged([b, a]))
        assert q != p and (q / "x").read_text() == "a" and (q / "gone" / "h").read_text() == "a"
        assert (q / "file-then-dir").read_text() == "a"


def test_a_stack_is_built_from_its_longest_merged_prefix_and_reused(tmp_path: Path) -> None:
    with Store.open(tmp_path / "store") as s:
        trees = [_tree(s, tmp_path / f"t{i}", {f"f{i}": str(i), "same": str(i)})
                 for i in range(5)]
        first = Path(s.merged(trees[:3]))
        ino = os.stat(first / "f0").st_ino
        whole = Path(s.merged(trees))
        assert _listing(whole) == {**{f"f{i}": str(i) for i in range(5)}, "same": "4"}
        assert os.stat(whole / "f0").st_ino == ino
        assert _listing(first) == {"f0": "0", "f1": "1", "f2": "2", "same": "2"}  # untouched
        assert s.merged(trees) == str(whole)
        assert not [n for n in os.listdir(s.merged_dir) if n.startswith(".")]
        # the unpacked copies may go: the merged directory holds its own links
        s.evict_unpacked(trees[0])
        assert (whole / "f0").read_text() == "0"


def test_gc_evicts_merged_stacks_whose_trees_left_the_store(tmp_path: Path) -> None:
    with Store.open(tmp_path / "store") as s:
        a = _tree(s, tmp_path / "a", {"a": "a"})
        b = _tree(s, tmp_path / "b", {"b": "b"})
        c = _tree(s, tmp_path / "c", {"c": "c"})
        ab, ac = Path(s.merged([a, b])), Path(s.merged([a, c]))
        s.objects.delete(b)
        s.gc(grace=3600)  # a and c are young: kept
        assert s.has_blob(a) and s.has_blob(c)
        assert not ab.exists() and not Path(str(ab) + ".trees").exists()
        assert ac.exists()  # its trees are all still stored
        assert s.evict_unpacked() >= 1 and not ac.exists()  # evicting everything: merged too
        assert s.merged([a, c]) == str(ac) and (ac / "c").read_text() == "c"


def test_what_a_step_sees_has_one_mtime_on_every_host(tmp_path: Path) -> None:
    """Two hosts unpack the same trees at different times; an archiving step (zip, tar,
    a wheel) records its inputs' mtimes, so they must be the same everywhere, or its
    output differs per host and early cutoff never holds across machines."""
    from store.tree import STEP_MTIME_NS

    for host in ("a", "b"):
        with Store.open(tmp_path / host / "store") as s:
            bottom = _tree(s, tmp_path / host / "bottom", {"src/a.py": "a", "src/sub/b.py": "b",
                                                           "empty": None}, {"src/l": "a.py"})
            top = _tree(s, tmp_path / host / "top", {"src/c.py": "c", "dist/x.zip": "z"})
            seen = {}
            for path in (Path(s.unpacked(bottom)), Path(s.merged([bottom, top]))):
                for dirpath, dirs, files in os.walk(path):
                    for name in dirs + files:
                        p = Path(dirpath) / name
                        seen[str(p.relative_to(path))] = os.lstat(p).st_mtime_ns
            assert seen and set(seen.values()) == {STEP_MTIME_NS}, seen


def test_an_older_katas_copies_get_the_step_mtime_when_used(tmp_path: Path) -> None:
    """Unpacked trees and merged stacks made before extractions were stamped keep the time
    they were made; the next use stamps them (times only, contents untouched), so a host
    that upgraded gives steps the same mtimes as a fresh one."""
    from store.tree import STEP_MTIME_NS

    with Store.open(tmp_path / "store") as s:
        bottom = _tree(s, tmp_path / "bottom", {"src/a.py": "a", "src/sub/b.py": "b"},
                       {"src/l": "a.py"})
        top = _tree(s, tmp_path / "top", {"src/c.py": "c"})
        paths = (Path(s.unpacked(bottom)), Path(s.merged([bottom, top])))
        for path in paths:  # as an older kata left them: the time they were made
            for dirpath, dirs, files in os.walk(path, topdown=False):
                for name in dirs + files:
                    os.utime(Path(dirpath) / name, follow_symlinks=False)
            os.utime(path)
        assert os.lstat(paths[0] / "src" / "a.py").st_mtime_ns != STEP_MTIME_NS
        again = (Path(s.unpacked(bottom)), Path(s.merged([bottom, top])))
        assert again == paths
        for path in paths:
            seen = {str(Path(d) / n): os.lstat(Path(d) / n).st_mtime_ns
                    for d, dirs, files in os.walk(path) for n in dirs + files}
            assert seen and set(seen.values()) == {STEP_MTIME_NS}, seen
            assert os.lstat(path).st_mtime_ns == STEP_MTIME_NS
        assert (paths[1] / "src" / "c.py").read_text() == "c"
