"""The cached path: a fully cached ``kata run`` replayed from its no-op record.

A ``kata run`` in which every step was a hit by its derivation hash leaves a *no-op
record* (written by :func:`write_record`, called by the CLI after such a run): what the
run read, observed as git's index observes a work tree, and what it said and recorded.
The next ``kata run`` with the same command line checks the record before the command
line is even imported (:func:`replay`, called by ``kata/__main__.py``) and, when nothing
it depends on changed, prints the same lines and ``--json`` events and records the same
run, with a fresh run id and fresh times, without loading, compiling or planning.
Whenever anything differs or is not simple, :func:`replay` returns None and the full
path runs, deciding everything again (and writing a new record if the run is again a
no-op). The record is a cache of the full path's answer, never a second planner.

**What the record's key names.** ``sha256("kata-noop/1" NUL sys.version NUL sys.path NUL
<config path, resolved> NUL <store root>)``: a file under ``<store state dir>/noop/``.

**What is observed** (the lstat signature ``(dev, ino, mode, size, mtime_ns, ctime_ns)``
of each path, or "absent"; compared as one sha256):
- the config file; the host config (``KATA_CONFIG`` or ``/etc/kata/config.yaml``); kata's
  tag record (``<state>/image-tags.json``: a tag means what it meant);
- the inputs: every file the repository lists (``git ls-files -co --exclude-standard``
  or the walk, less ``.kataignore``: ``kata.inputs.Snapshot``), every directory below the
  repository root but ``.git`` (an added, removed or renamed file changes its directory),
  ``.kataignore``, every ``.gitignore`` from the work tree's top down, and in a git work
  tree its ``index``, ``info/exclude``, ``config`` and the user's and system's git config
  and ignore files (a record is not written when one names ``core.excludesFile``);
- the code: every ``.py``/``.lark`` file of ``kata``, ``store``, ``procs`` and
  ``grammar``, the modules of the libraries loading and hashing use, every ``sys.path``
  directory (a package installed there changes it).
Besides, by value: the commit and branch (``kata.githead.head``), the ``GIT_*``,
``KATA_CONFIG``, ``HOME`` and ``XDG_CONFIG_HOME`` environment variables (the last two
say which user config and ignore files git reads). Nothing else in the environment changes a hit:
secrets are read only for steps that run.

**Racily clean.** A record is written only when every observed path's ctime is older
than ``RACY_NS`` before the run began (git's rule): a file changed while the run read
it, or within the clock's granularity of that, makes no record (the next run writes one).
ctime cannot be set back, so a path whose signature is unchanged was not written since.
On a filesystem that does not keep ctime (``kata.inputs.ctime_is_kept``) no record is
written.

**What a replay still checks in the store**: each hit's record in the index, byte for
byte as the full path found it (a healed, replaced or collected record falls back), and
every object behind them present and whole (``Store.damaged``: a stat each, re-hashed
when the stat changed; a damaged one falls back, and the full path rebuilds). It counts
the hits, as the full path does.

**Which command lines**: ``kata [-f FILE] [--store DIR] [--containerd ADDR] run
[--json]`` (what a no-op is); on a terminal the lines are styled as the live view styles
them (its status block, which a 0.1 s run would draw at most once, is not). The full path writes a record only for such a run, in a trusted scope, without a
remote cache or executor, with no step skipped or run, no ``only:``/``when:``, and the
cache on. ``KATA_FAST_NOOP=0`` turns the replay off (the tests compare both paths).

Not replayed: the live journal (``kata.report.journal``): a replay lasts ~0.1 s and its
run is in ``kata runs`` and ``kata web`` when it ends.
"""

from __future__ import annotations

import hashlib
import operator
import os
import sys
import time
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from kata.compile import DerivationGraph
    from kata.realise.plan import Plan
    from kata.realise.results import RealiseOptions, RunResult
    from store import Run, Store

FORMAT = "kata-noop/1"
DIR_NAME = "noop"
KEEP = 32  # records kept per store (one per config and command line in use)
RACY_NS = 2_000_000_000
ENV_SWITCH = "KATA_FAST_NOOP"
#: the event kinds a no-op emits; a run that emitted any other is not recorded
NOOP_EVENTS = frozenset({"parse", "cache", "pass", "done"})
_LIBRARIES = ("yaml", "pathspec", "lark", "msgpack", "lmdb", "zstandard")
_CODE = ("kata", "store", "procs", "grammar")
_GIT_CONFIGS = ("~/.gitconfig", "~/.config/git/config", "/etc/gitconfig")
_GIT_IGNORES = ("~/.config/git/ignore",)

_signature = operator.attrgetter("st_dev", "st_ino", "st_mode", "st_size", "st_mtime_ns",
                                 "st_ctime_ns")


def new_run_id() -> str:
    """A run id: ``YYYYmmdd-HHMMSS-<6 hex>`` (local time, random suffix)."""
    return time.strftime("%Y%m%d-%H%M%S") + "-" + os.urandom(3).hex()


# -- the command line ------------------------------------------------------------------

def simple_run(argv: Sequence[str]) -> tuple[str | None, str | None, bool] | None:
    """``(config file, store, --json)`` of ``kata [-f F] [--store S] [--containerd A] run
    [--json]``; None for any other command line (``--containerd`` only says where
    containerd is: a no-op never connects)."""
    config = store = None
    json_out = False
    args = list(argv)
    i = 0
    while i < len(args) and args[i] != "run":
        arg = args[i]
        if arg in ("-f", "--file", "--store", "--containerd") and i + 1 < len(args):
            value = args[i + 1]
            if arg in ("-f", "--file"):
                config = value
            elif arg == "--store":
                store = value
            i += 2
            continue
        return None
    if i == len(args):
        return None
    for arg in args[i + 1:]:
        if arg != "--json" or json_out:
            return None
        json_out = True
    return config, store, json_out


# -- observing ---------------------------------------------------------------------------

def observe(paths: Iterable[str]) -> list[tuple[int, ...] | None]:
    """The lstat signature of each path (None: absent or unreadable)."""
    out: list[tuple[int, ...] | None] = []
    add = out.append
    lstat = os.lstat
    for p in paths:
        try:
            add(_signature(lstat(p)))
        except OSError:
            add(None)
    return out


def _digest(signatures: list[tuple[int, ...] | None]) -> bytes:
    import msgpack

    return hashlib.sha256(msgpack.packb(signatures)).digest()


def record_key(config: Path, store_root: str) -> str:
    """The record's file name for this config (resolved path) and store."""
    text = "\0".join((FORMAT, sys.version, "\n".join(sys.path), str(config), store_root))
    return hashlib.sha256(text.encode("utf-8", "surrogatepass")).hexdigest()


def _environment() -> list[list[str]]:
    """The environment variables a hit depends on: git's own, the host config's path, and
    where git finds the user's config and ignore files (another home can drop an input)."""
    return sorted([k, v] for k, v in os.environ.items()
                  if k.startswith("GIT_") or k in ("KATA_CONFIG", "HOME", "XDG_CONFIG_HOME"))


def _code_paths() -> list[str]:
    """kata's, the store's, procs' and the grammars' sources, the libraries' modules and the
    ``sys.path`` entries (absent ones too)."""
    import importlib.util

    top = Path(__file__).resolve().parent.parent.parent
    # every entry, present or not: a directory created later can shadow a library
    out: list[str] = [os.path.abspath(p) for p in sys.path]
    for name in _CODE:
        stack = [str(top / name)]
        while stack:
            d = stack.pop()
            out.append(d)
            try:
                entries = list(os.scandir(d))
            except OSError:
                continue
            for e in entries:
                if e.is_dir(follow_symlinks=False):
                    if e.name not in ("__pycache__", "_api", "static", "templates"):
                        stack.append(e.path)
                elif e.name.endswith((".py", ".lark")):
                    out.append(e.path)
    for lib in _LIBRARIES:
        module = sys.modules.get(lib)
        spec = module.__spec__ if module is not None else importlib.util.find_spec(lib)
        if spec is not None and spec.origin:
            out.append(spec.origin)
    return out


def _directories(root: str) -> list[str]:
    """Every directory below ``root`` (itself included), ``.git`` left out."""
    out: list[str] = []
    stack = [root]
    while stack:
        d = stack.pop()
        out.append(d)
        try:
            with os.scandir(d) as it:
                stack.extend(e.path for e in it
                             if e.name != ".git" and e.is_dir(follow_symlinks=False))
        except OSError:
            continue
    return out


def _git_paths(root: str, dirs: Sequence[str]) -> list[str] | None:
    """What a ``git ls-files -co --exclude-standard`` listing depends on beyond the
    directories: the index, the ignore files and the git config; [] outside a work tree;
    None when it cannot be observed simply (a linked work tree, ``core.excludesFile``)."""
    top = None
    for d in (Path(root), *Path(root).parents):
        if os.path.lexists(d / ".git"):
            top = d
            break
    if top is None:
        return []
    git = top / ".git"
    if not git.is_dir():
        return None
    configs = [str(git / "config"), *(os.path.expanduser(p) for p in _GIT_CONFIGS)]
    xdg = os.environ.get("XDG_CONFIG_HOME")
    if xdg:
        configs += [os.path.join(xdg, "git", "config")]
    for path in configs:
        try:
            with open(path, "rb") as f:
                if b"excludesfile" in f.read().lower():
                    return None
        except OSError:
            continue
    out = [str(git / "index"), str(git / "info" / "exclude"), *configs,
           *(os.path.expanduser(p) for p in _GIT_IGNORES)]
    if xdg:
        out.append(os.path.join(xdg, "git", "ignore"))
    here = Path(root)
    out += [str(d / ".gitignore") for d in (here, *here.parents) if d == top or top in d.parents]
    out += [os.path.join(d, ".gitignore") for d in dirs]
    return out


# -- writing (the full path, after a run that was a no-op) ------------------------------

def eligible(graph: "DerivationGraph", plan: "Plan", result: "RunResult",
             options: "RealiseOptions", kinds: Iterable[str]) -> bool:
    """Whether a finished run is one a replay may stand for: every step a local hit by its
    derivation hash, nothing skipped, no condition, a trusted scope, the cache on."""
    if not options.use_cache or not options.record or options.targets is not None:
        return False
    if not options.scope.trusted or options.skip or options.statuses:
        return False
    if plan.to_run or plan.skipped or len(plan.order) != len(graph.order):
        return False
    for step in graph.pipeline.steps:
        if step.only is not None or step.when is not None:
            return False
    for name in graph.order:
        p = plan.steps[name]
        if p.action != "hit" or p.found is None or p.found.remote is not None:
            return False
        r = result.steps.get(name)
        if r is None or r.status != "passed" or r.cache != "HIT":
            return False
    if result.exit_code or result.interrupted:
        return False
    return all(kind in NOOP_EVENTS for kind in kinds)


def write_record(store: "Store", *, config: Path, repo_root: Path, graph: "DerivationGraph",
                 plan: "Plan", record: "Run | None", commit: str, branch: str,
                 events: Sequence[Any], started_ns: int) -> str:
    """Write the no-op record of the run ``record`` (as the store holds it; None: not
    recorded) (eligible: :func:`eligible`; ``events``:
    what it emitted, ``kata.realise.events`` values, the lines replayed); returns
    "" when written, else why not (a fresh path, an unusual git layout...). Never raises
    for what it observes: a record not written only means the next run takes the full path.
    ``started_ns``: the process's start, unix ns (observed paths must be older)."""
    import msgpack

    from kata.hostconfig import config_path
    from kata.inputs import MemoryStatCache, Snapshot, ctime_is_kept
    from kata.realise.lookup import ALWAYS_WRITTEN
    from kata.report.plain import RunLines
    from kata.runtimes.tags import FILE_NAME

    from kata.realise import events as ev

    root = str(repo_root)
    if not ctime_is_kept(root):
        return "ctime is not kept here"
    config = config.resolve()
    rel = os.path.relpath(config, root).replace(os.sep, "/")
    listing = Snapshot(root, MemoryStatCache(), exclude=(rel,)).paths
    dirs = _directories(root)
    git = _git_paths(root, dirs)
    if git is None:
        return "an unusual git layout (a linked work tree, core.excludesFile)"
    paths = [str(config), str(config_path()[0]), os.path.join(store.state_dir, FILE_NAME),
             os.path.join(root, ".kataignore"), *git, *dirs,
             *(os.path.join(root, p) for p in listing), *_code_paths()]
    signatures = observe(paths)
    limit = started_ns - RACY_NS
    for path, sig in zip(paths, signatures):
        if sig is not None and max(sig[4], sig[5]) >= limit:
            return f"{path} changed too recently"
    if record is None:
        return "the run was not recorded"
    hits: list[list[Any]] = []
    objects: dict[str, None] = dict.fromkeys(ALWAYS_WRITTEN)
    for name in graph.order:
        found = plan.steps[name].found
        assert found is not None and found.record is not None
        raw = store.index.get_realisation(found.key)
        if raw is None:
            return f"step {name}'s record is not in the index"
        hits.append([found.key, raw])
        objects.update(dict.fromkeys(found.record.objects()))
    lines = RunLines()
    plain: list[str] = []
    body: list[dict[str, Any]] = []
    done: dict[str, Any] = {}
    for event in events:
        data = ev.to_dict(event)
        if data["event"] == "done":
            done = data
            continue
        body.append(data)
        plain += lines.feed(event)
    plain += lines.flush()
    from store.runs import summarise

    steps = [s.to_obj() for s in record.steps]  # "phases" replaced when replayed
    doc = {
        "format": FORMAT, "paths": paths, "observed": _digest(signatures),
        "environment": _environment(), "head": [commit, branch],
        # one string and one packed list: each parsed only by the mode that prints it
        "plain": "".join(line + "\n" for line in plain),
        "events": msgpack.packb(body, use_bin_type=True), "done": done, "hits": hits, "objects": list(objects),
        "run": {"pipeline": record.pipeline, "commit": record.commit, "branch": record.branch,
                "event": record.event, "tag": record.tag, "scope": record.scope},
        "steps": steps, "summary": list(summarise(record)),
    }
    directory = os.path.join(store.state_dir, DIR_NAME)
    os.makedirs(directory, mode=0o700, exist_ok=True)
    from kata.atomicfile import write_atomic  # the replay path does not import it

    write_atomic(os.path.join(directory, record_key(config, store.root)),
                 msgpack.packb(doc, use_bin_type=True))
    _prune(directory)
    return ""


def forget(store_state_dir: str, config: Path, store_root: str) -> None:
    """Remove the record of ``config`` (a run that was not a no-op: the record is stale)."""
    try:
        os.unlink(os.path.join(store_state_dir, DIR_NAME, record_key(config.resolve(), store_root)))
    except OSError:
        pass


def _prune(directory: str) -> None:
    try:
        entries = sorted(os.scandir(directory), key=lambda e: e.stat().st_mtime, reverse=True)
    except OSError:
        return
    for e in entries[KEEP:]:
        try:
            os.unlink(e.path)
        except OSError:
            pass


# -- replaying (before the command line is imported) ------------------------------------

def replay(argv: Sequence[str]) -> int | None:
    """Run ``argv`` from its no-op record: the exit status (0), or None when the full path
    must run (not a simple ``kata run``, no record, anything observed changed, a record or
    object in the store not as it was)."""
    if os.environ.get(ENV_SWITCH) == "0":
        return None
    parsed = simple_run(argv)
    if parsed is None:
        return None
    config_file, store_arg, json_out = parsed
    live = not json_out and sys.stdout.isatty() and os.environ.get("TERM") != "dumb"
    from kata.configfile import find_config
    from kata.errors import KataError
    from kata.locations import store_location

    try:
        config = find_config(os.getcwd(), config_file).resolve()
    except (KataError, OSError):
        return None  # the full path says what is wrong
    root = store_location(store_arg)
    if not os.path.isdir(root):
        return None
    from store.index import default_state_dir

    try:
        state = default_state_dir(root)
        with open(os.path.join(state, DIR_NAME, record_key(config, root)), "rb") as f:
            raw = f.read()
    except OSError:
        return None
    import msgpack

    try:
        doc = msgpack.unpackb(raw, raw=False)
    except (ValueError, msgpack.UnpackException):
        return None
    try:
        if not isinstance(doc, dict) or doc.get("format") != FORMAT:
            return None
        if doc["environment"] != _environment():
            return None
        from kata.githead import head

        if list(head(config.parent)) != doc["head"]:
            return None
        if _digest(observe(doc["paths"])) != doc["observed"]:
            return None
    except (KeyError, TypeError, ValueError):  # a record of another shape: as absent
        return None
    return _replay(doc, root, state, "json" if json_out else "live" if live else "plain")


def _replay(doc: dict[str, Any], root: str, state: str, mode: str) -> int | None:
    """Check the store as the full path would find it, then replay (None: fall back)."""
    from store.errors import StoreError
    from store.index import LmdbIndex

    created = time.time()
    try:
        index = LmdbIndex(os.path.join(state, "index"))
    except StoreError:
        return None
    try:
        import lmdb

        try:
            if index.discarded or not _same_records(index, doc["hits"]):
                return None
            if not _intact(index, root, doc["objects"]):
                return None  # the full path re-hashes, heals and rebuilds
        except (StoreError, lmdb.Error, OSError, KeyError, TypeError, ValueError):
            return None  # the full path meets it again and says what it is
        return _emit(index, root, doc, mode, created)
    finally:
        index.close()


def _same_records(index: Any, hits: list[list[Any]]) -> bool:
    """Whether the index holds each hit's record exactly as the full path found it (one
    read transaction)."""
    db = index.db["real"]

    def check(txn: Any) -> bool:
        get = txn.get
        for key, raw in hits:
            if get(key.encode(), db=db) != raw:
                return False
        return True

    return index.read(check)


def _intact(index: Any, root: str, objects: list[str]) -> bool:
    """Whether every object's file still has the stat signature it had when its content was
    last hashed and found whole (``Store.damaged``'s test; an object it would re-hash
    makes the full path run)."""
    import msgpack

    from store.objects import ObjectStore

    path = ObjectStore(root).path
    db = index.db["ver"]

    def check(txn: Any) -> bool:
        for digest in objects:
            try:
                st = os.stat(path(digest))
            except OSError:
                return False
            raw = txn.get(digest.encode(), db=db)
            if raw is None or tuple(msgpack.unpackb(raw)) != (
                    st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns, st.st_ctime_ns):
                return False
        return True

    return index.read(check)


def _emit(index: Any, root: str, doc: dict[str, Any], mode: str, created: float) -> int:
    """Print the run, record it, print its end: the realiser's order, and what
    ``Store.put_run`` and ``Store.count`` write. ``mode``: ``json`` (the ``--json``
    lines), ``plain`` (the plain lines) or ``live`` (on a terminal: the plain lines styled
    as the live view styles them, in two frames without a status block: what the live view
    writes for a run over before its first status frame)."""
    from store.errors import StoreError
    from store.files import write_immutable
    from store.runs import Phases, RunSummary, encode_run, encode_summary

    from kata.realise.wire import event_line, process_started
    from kata.report.text import FRAME_MARK, SHOW_CURSOR, done_line, styled

    run_id = new_run_id()
    out = sys.stdout
    if mode == "json":
        import msgpack

        events = msgpack.unpackb(doc["events"], raw=False)
        out.write("".join(event_line(e) + "\n" for e in events))
    elif mode == "live":
        out.write(FRAME_MARK + "".join(styled(line) + "\n" for line in doc["plain"].splitlines()))
    else:
        out.write(doc["plain"])
    out.flush()
    now = time.time()
    phases = Phases(ready=now, started=now, running=now, ended=now).encode()
    steps = doc["steps"]
    for obj in steps:
        obj["phases"] = phases
    wall = time.monotonic() - process_started()
    run = dict(doc["run"], id=run_id, started=created, wall=wall, status="passed", targets=[],
               steps=steps, realisations=[])
    try:
        raw = encode_run(run)
        name = f"{int(float(created) * 1e9):020d}-{run_id}"  # store.runs.record_name
        summary = RunSummary(*doc["summary"])._replace(id=run_id, started=float(created),
                                                        duration=float(wall))
        write_immutable(os.path.join(root, "tmp"), os.path.join(root, "runs", name), raw)
        index.put_run(run_id, raw, name, encode_summary(summary))
        index.count("hits", len(steps))
    except (StoreError, OSError) as err:  # as the realiser: the outcome is still told
        print(f"run {run_id} not recorded: {getattr(err, 'message', None) or err}",
              file=sys.stderr)
    done = dict(doc["done"], run_id=run_id, wall=wall)
    if mode == "json":
        out.write(event_line(done) + "\n")
    else:
        from types import SimpleNamespace

        text = done_line(SimpleNamespace(**done))
        out.write(f"{FRAME_MARK}{styled(text)}\n{SHOW_CURSOR}" if mode == "live" else text + "\n")
    out.flush()
    return 0
