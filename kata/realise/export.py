"""Getting results out of the store: a step's artifacts as files on the host.

``kata build //step --out DIR``, ``kata run --out DIR`` and ``kata export --run ID --out DIR``
all end here. Which steps (``exported``): the ones that passed (ran or hit the cache) and
have something to give — a step that declares no artifacts is left out unless it was
named. Where (``export``): one step directly into DIR (a single target, as Nix's
``./result``), several each under ``DIR/<step>/`` (``step_dir_name``: '/' written %2F).

Each path the tree holds replaces the path of the same name at the destination (a file
or a whole directory; a symlink there is removed, never followed), and nothing else in
DIR is touched, so exporting twice gives the same DIR. The tree is first extracted into a
temporary directory inside DIR and then renamed into place, so an interrupted export
leaves no half-written artifact under its final name. Files keep their executable bit,
symlinks stay symlinks (the store's tree format: ``store.tree``).
"""

from __future__ import annotations

import os
import shlex
import stat
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Iterable, Protocol, Sequence

from kata.errors import KataError
from procs.leftovers import force_rmtree, remove_tree


class TreeStore(Protocol):
    def extract_tree(self, digest: str, dest: str | os.PathLike[str], *,
                     readonly: bool = False) -> None: ...

    def has_blob(self, digest: str) -> bool: ...


@dataclass(frozen=True, slots=True, kw_only=True)
class Exported:
    step: str
    tree: str   # the output tree digest
    path: Path  # where its artifacts went (DIR or DIR/<step>)


def exported(results: Iterable[tuple[str, str, str, bool]], named: Sequence[str] = ()
             ) -> list[tuple[str, str]]:
    """(step, tree) to export from ``(step, status, output tree, declares artifacts)``
    rows: passed steps with a tree that declare artifacts. KataError export.no_output
    (exit 1) for a named step with no tree, or whose tree is empty (it declares no
    ``artifacts``: an empty directory must not pass for an export)."""
    out = []
    for step, status, tree, declares in results:
        if step in named and (status != "passed" or not tree or not declares):
            why = ("did not pass" if status != "passed" else "has no output tree" if not tree
                   else "declares no artifacts: add `artifacts:` to the step to keep files")
            raise KataError("export.no_output", f"step {step} has no artifacts to export "
                            f"(it {why})", obj=step, exit_code=1)
        if status == "passed" and tree and declares:
            out.append((step, tree))
    return out


def fetch_missing(store, wanted: Sequence[tuple[str, str, str]], run: str,  # noqa: ANN001
                  remote_config) -> None:  # noqa: ANN001 - kata.remote.config.RemoteConfig | None
    """Bring into ``store`` each (step, output tree, key) of ``wanted`` whose tree it lacks:
    a remote cache hit no step of this host needed (``kata run`` fetches those lazily) is
    fetched from ``remote_config`` by ``key``, the key that hit ("": the step was no remote
    hit). Nothing is written outside the store. KataError (exit 1) naming the step and
    what to do when it cannot be: export.not_fetched (no remote named, or it cannot hand
    the result over), export.missing (no remote hit: the tree was collected since)."""
    missing = [(step, tree, key) for step, tree, key in wanted if not store.has_blob(tree)]
    for step, tree, key in missing:
        if not key:
            raise KataError("export.missing", f"step {step}'s artifacts ({tree}) are no longer "
                            f"in the store (collected since run {run}); run `kata run --step "
                            f"{shlex.quote(step)} --out DIR` to build them again", obj=step, exit_code=1)
    if not missing:
        return
    if remote_config is None:
        step = missing[0][0]
        raise KataError("export.not_fetched", f"step {step}'s artifacts ({missing[0][1]}) are "
                        f"not in the local store: run {run} found them in a remote cache and no "
                        "step of this host needed them; give --remote-cache grpc://HOST:PORT "
                        "(or set remote.cache in the host config) to fetch them, or run `kata "
                        f"run --step {shlex.quote(step)} --out DIR --remote-cache URL`", obj=step, exit_code=1)
    from kata.remote.cache import RemoteCache
    from kata.remote.cas import RemoteError

    cache = RemoteCache(remote_config, warn=lambda line: None, backoff=False)
    try:
        for step, tree, key in missing:
            rec = cache.lookup(key)
            if rec is not None and rec.realisation.outputs == tree:
                try:
                    cache.fetch(store, rec)
                except RemoteError:
                    pass  # down_reason says why
            if not store.has_blob(tree):
                why = cache.down_reason.splitlines()[0] if cache.down_reason \
                    else "it no longer holds that result"
                raise KataError("export.not_fetched", f"step {step}'s artifacts ({tree}) are "
                                f"not in the local store and the remote cache "
                                f"{remote_config.url} cannot hand them over ({why}); run "
                                f"`kata run --step {shlex.quote(step)} --out DIR` to build them "
                                "here",
                                obj=step, exit_code=1)
    finally:
        cache.close()


def export(store: TreeStore, outputs: Sequence[tuple[str, str]], out_dir: Path, *,
           flat: bool, owner: tuple[int, int] | None = None) -> list[Exported]:
    """Extract each (step, tree) under ``out_dir`` (``flat``: one step, directly in it).
    ``owner`` (uid, gid): what is written is given to that user (links themselves, never
    their targets), as kata's server does for the group member who asked (``--out``)."""
    assert not flat or len(outputs) <= 1, outputs
    made = not out_dir.exists()
    try:
        out_dir.mkdir(parents=True, exist_ok=True)
        if made and owner is not None:
            os.chown(out_dir, *owner)
    except OSError as err:
        raise KataError("export.out_dir", f"--out {out_dir}: {err.strerror}", obj=str(out_dir)) from None
    if not out_dir.is_dir():
        raise KataError("export.out_dir", f"--out {out_dir} is not a directory", obj=str(out_dir))
    done = []
    for step, tree in outputs:
        dest = out_dir if flat else out_dir / step_dir_name(step)
        staging = Path(tempfile.mkdtemp(prefix=".kata-export-", dir=out_dir))
        try:
            store.extract_tree(tree, staging / "t")
            if owner is not None:
                _give(staging / "t", owner)
            if flat:
                for name in sorted(os.listdir(staging / "t")):
                    _replace(staging / "t" / name, dest / name)
            else:
                _replace(staging / "t", dest)
        finally:
            force_rmtree(str(staging))
        done.append(Exported(step=step, tree=tree, path=dest))
    return done


def step_dir_name(step: str) -> str:
    """The one directory name a step's artifacts get under ``--out DIR``: its name with
    '%' and '/' written %25 and %2F. A matrix value may hold '/' (``linux/amd64``), and
    joined as a path ``t (X=a/../../x)`` would land outside DIR; a step name never is
    ``.`` or ``..`` (names start with a letter, digit or '_')."""
    return step.replace("%", "%25").replace("/", "%2F")


def _replace(new: Path, dest: Path) -> None:
    """Put ``new`` at ``dest``, removing what was there (a link itself, not its target)."""
    try:
        st = os.lstat(dest)
    except FileNotFoundError:
        pass
    else:
        if stat.S_ISDIR(st.st_mode):
            remove_tree(str(dest))  # never follows a link inside; any depth
        else:
            os.unlink(dest)
    os.rename(new, dest)


def _give(root: Path, owner: tuple[int, int]) -> None:
    """``lchown`` everything below and including ``root`` (a tree just extracted)."""
    os.lchown(root, *owner)
    todo = [str(root)]  # iterative: an artifact may nest deeper than Python recurses
    while todo:
        with os.scandir(todo.pop()) as entries:
            for entry in entries:
                os.lchown(entry.path, *owner)
                if entry.is_dir(follow_symlinks=False):  # never follows a link
                    todo.append(entry.path)
