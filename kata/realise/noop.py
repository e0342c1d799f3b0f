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

**What the record's key names.** ``sha256("kata-noop/2" NUL sys.version NUL sys.path NUL
<config path, resolved> NUL <store root>)``: a file under ``<store state dir>/noop/``, the
``marshal`` of a dict of plain values (its format is this interpreter's, whose version is
in the key; the file is the user's, 0600 in a 0700 directory, as the index beside it; a
torn or foreign one reads as absent). A local store's state directory is found beside it
(``<store>/local``, the record naming it) without asking statfs, which the full path
asked when it wrote the record: the store's directory is observed (through a final
symlink), so a store that is not the directory statfs saw falls back.

**What is observed** (the lstat signature ``(dev, ino, mode, size, mtime_ns, ctime_ns)``
of each path, or "absent"; compared as a list):
- the store's directory (above);
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
every object behind them present and whole as ``Store.damaged`` tests it: the object's
``ver`` row in the index (the stat signature at which its content was last hashed and
found whole) byte for byte as when the record was written, when it agreed with the file,
and the file still at that signature (a stat each; where ``Store.damaged`` would re-hash,
the replay falls back and the full path re-hashes, heals or rebuilds). It counts the
hits, as the full path does.

**What a replay writes**: the run record and its index summary are the bytes the full
path's own encoder (``Run.encode``, ``encode_summary``) gave for this run with stand-ins
for the run id, its start, its wall time and the steps' phases, cut at the stand-ins
(:func:`_template`) and filled with this run's (:func:`_fill`); the template is checked
against the encoder when it is made. So a replay imports neither msgpack nor
``store.runs`` (dataclasses); the record's file, the summary and the hit count are
written as ``Store.put_run`` and ``Store.count`` write them (file fsync'd, one index
transaction).

**Which command lines**: ``kata [-f FILE] [--store DIR] [--containerd ADDR] run
[--json]`` (what a no-op is); on a terminal the lines are styled as the live view styles
them (its status block, which a 0.1 s run would draw at most once, is not). The full path writes a record only for such a run, in a trusted scope, without a
remote cache or executor, with no step skipped or run, no ``only:``/``when:``, and the
cache on. ``KATA_FAST_NOOP=0`` turns the replay off (the tests compare both paths).

**What a killed kata left**: a replay connects to no containerd, so after it has replayed
it lists ``<state>/containerd-owners/`` (one syscall; ``kata.runtimes.sweepmarks``) and
sweeps the containerd a dead kata's owner marker names.

Not replayed: the live journal (``kata.report.journal``): a replay lasts ~0.1 s and its
run is in ``kata runs`` and ``kata web`` when it ends.
"""

from __future__ import annotations

import marshal
import operator
import os
import struct
import sys
import time

try:  # the interpreter's own sha256 (hashlib loads OpenSSL: ~11 M instructions); same digest
    from _sha256 import sha256
except ImportError:  # a build without it
    from hashlib import sha256

# neither typing nor pathlib on the replay's path (with re, ~35 M instructions in a clean
# interpreter): annotations are strings, and paths are os.path's
TYPE_CHECKING = False  # typing.TYPE_CHECKING without importing typing
if TYPE_CHECKING:
    from collections.abc import Iterable, Sequence
    from pathlib import Path
    from typing import Any

    from kata.compile import DerivationGraph
    from kata.realise.plan import Plan
    from kata.realise.results import RealiseOptions, RunResult
    from store import Run, Store

FORMAT = "kata-noop/2"
DIR_NAME = "noop"
MARKERS = "containerd-owners"  # kata.runtimes.sweepmarks.DIR_NAME (not imported unless needed)
LOCAL_STATE = "local"  # a local store's state directory, beside it (store.index.default_state_dir)
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
_ver_signature = operator.attrgetter("st_dev", "st_ino", "st_size", "st_mtime_ns", "st_ctime_ns")

# The run record and its index summary are msgpack (store.runs); a replay writes them from
# the bytes the full path's encoder gave, with these stand-ins cut out and this run's id,
# times and phases put in their place (see _template): no msgpack, no store.runs.
_pack_double = struct.Struct(">d").pack
_STAND_IN_ID = "kata.noop-stand-in.run-id"  # an id no run takes (found once, or no record)
_STAND_IN = {  # float stand-ins: finite, and nothing a run or a step holds
    "started": struct.unpack(">d", b"\x01kata\x00s\x01")[0],
    "wall": struct.unpack(">d", b"\x01kata\x00w\x01")[0],
    "now": struct.unpack(">d", b"\x01kata\x00n\x01")[0],
}


def new_run_id() -> str:
    """A run id: ``YYYYmmdd-HHMMSS-<6 hex>``, the time in UTC (hosts sharing a store, or
    one host across a DST change, name runs alike), a random suffix. The one definition:
    the realiser's runs take theirs here too (this module imports only the stdlib).

    Ids of runs recorded before were in the host's local time; nothing parses an id for
    its time or orders by it (records are named and ordered by ``started``)."""
    return time.strftime("%Y%m%d-%H%M%S", time.gmtime()) + "-" + os.urandom(3).hex()


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


def record_key(config: "Path | str", store_root: str) -> str:
    """The record's file name for this config (resolved path) and store."""
    text = "\0".join((FORMAT, sys.version, "\n".join(sys.path), str(config), store_root))
    return sha256(text.encode("utf-8", "surrogatepass")).hexdigest()


def _environment() -> list[list[str]]:
    """The environment variables a hit depends on: git's own, the host config's path, and
    where git finds the user's config and ignore files (another home can drop an input)."""
    return sorted([k, v] for k, v in os.environ.items()
                  if k.startswith("GIT_") or k in ("KATA_CONFIG", "HOME", "XDG_CONFIG_HOME"))


def _code_paths() -> list[str]:
    """kata's, the store's, procs' and the grammars' sources, the libraries' modules and the
    ``sys.path`` entries (absent ones too)."""
    import importlib.util

    from pathlib import Path

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


def _module_dirs(modules: str) -> list[str]:
    """The git directories of submodules under ``<.git>/modules`` (a name may hold '/'),
    nested ones too, without walking their objects."""
    out = []
    for d, subdirs, names in os.walk(modules):
        if "index" in names or "HEAD" in names:
            out.append(d)
            subdirs[:] = [x for x in subdirs if x == "modules"]
    return out


def _git_paths(root: str, dirs: Sequence[str]) -> list[str] | None:
    """What a ``git ls-files -co --exclude-standard`` listing depends on beyond the
    directories: the index, the ignore files and the git config; [] outside a work tree;
    None when it cannot be observed simply (a linked work tree, ``core.excludesFile``)."""
    from pathlib import Path

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
    # a submodule's listing (kata.inputs._with_submodules) depends on its own index, ignore
    # file and config, in its git directory under .git/modules (nested ones below it)
    modules = _module_dirs(str(git / "modules"))
    configs = [str(git / "config"), *(os.path.join(d, "config") for d in modules),
               *(os.path.expanduser(p) for p in _GIT_CONFIGS)]
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
           *(os.path.join(d, f) for d in modules for f in ("index", "info/exclude")),
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
    # the store's directory, through a final symlink: a replay finds a local store's state
    # beside it without statfs (default_state_dir), and this directory, unchanged, is on
    # the filesystem that statfs said was local
    paths = [os.path.join(store.root, "."), str(config), str(config_path()[0]),
             os.path.join(store.state_dir, FILE_NAME),
             os.path.join(root, ".kataignore"), *git, *dirs,
             *(os.path.join(root, p) for p in listing), *_code_paths()]
    signatures = observe(paths)
    limit = started_ns - RACY_NS
    for path, sig in zip(paths, signatures):
        if sig is not None and max(sig[4], sig[5]) >= limit:
            return f"{path} changed too recently"
    if record is None:
        return "the run was not recorded"
    hits: list[tuple[bytes, bytes]] = []
    digests: dict[str, None] = dict.fromkeys(ALWAYS_WRITTEN)
    for name in graph.order:
        found = plan.steps[name].found
        assert found is not None and found.record is not None
        raw = store.index.get_realisation(found.key)
        if raw is None:
            return f"step {name}'s record is not in the index"
        hits.append((found.key.encode(), raw))
        digests.update(dict.fromkeys(found.record.objects()))
    store.flush()  # the signatures this run verified, as the index will hold them
    objects = []
    for digest in digests:  # as Store.damaged finds them now: verified at this signature
        path = store.objects.path(digest)
        ver = store.index.get("ver", digest.encode())
        try:
            now = _ver_signature(os.stat(path))
        except OSError:
            return f"object {digest} is missing"
        if ver is None or tuple(msgpack.unpackb(ver)) != now:
            return f"object {digest} is not verified at its current signature"
        objects.append((digest.encode(), ver, path, now))
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
    template = _template(record)
    if isinstance(template, str):
        return template
    state = store.state_dir
    from kata.compile import unmatched_patterns

    # what the run warned of on stderr, warned again by each replay (kata run's warnings)
    warned = "".join(f"warning: {w}\n" for w in unmatched_patterns(
        graph.pipeline, root, graph.repo_paths))
    doc = {
        "format": FORMAT, "stderr": warned, "state": state, "paths": paths, "observed": signatures,
        "environment": _environment(), "head": (commit, branch),
        # one string and one marshalled list: each read only by the mode that prints it
        "plain": "".join(line + "\n" for line in plain), "events": marshal.dumps(body),
        "done": done, "hits": hits, "objects": objects, **template,
    }
    directory = os.path.join(state, DIR_NAME)
    os.makedirs(directory, mode=0o700, exist_ok=True)
    from kata.atomicfile import write_atomic  # the replay path does not import it

    write_atomic(os.path.join(directory, record_key(config, store.root)), marshal.dumps(doc))
    _prune(directory)
    return ""


def _template(record: "Run") -> dict[str, Any] | str:
    """The run record and index summary of a replay of ``record``, as byte templates:
    ``run``/``summary`` are lists alternating the encoder's bytes and the name of what a
    replay puts between them (``id``, ``started``, ``wall``, ``phases``), as
    :func:`_fill` reads them. Checked here against the encoder itself (a sample filled
    in must give ``Run.encode``'s and ``encode_summary``'s bytes exactly); a string says
    why it could not be made (then no record is written)."""
    import dataclasses

    from store.runs import Phases, encode_summary, summarise

    def runs(run_id: str, started: float, wall: float, now: float) -> "Run":
        phases = Phases(ready=now, started=now, running=now, ended=now)
        steps = tuple(dataclasses.replace(s, phases=phases) for s in record.steps)
        return dataclasses.replace(record, id=run_id, started=started, wall=wall,
                                   status="passed", targets=(), realisations=(), steps=steps)

    stand_in = runs(_STAND_IN_ID, _STAND_IN["started"], _STAND_IN["wall"], _STAND_IN["now"])
    markers = {_mp_str(_STAND_IN_ID): "id", b"\xcb" + _pack_double(_STAND_IN["started"]): "started",
               b"\xcb" + _pack_double(_STAND_IN["wall"]): "wall",
               _mp_phases(_STAND_IN["now"]): "phases"}
    out: dict[str, Any] = {}
    for what, raw, expected in (
            ("run", stand_in.encode(), {"id": 1, "started": 1, "wall": 1,
                                        "phases": len(record.steps)}),
            ("summary", encode_summary(summarise(stand_in)), {"id": 1, "started": 1, "wall": 1})):
        parts = _cut(raw, markers)
        found: dict[str, int] = {}
        for name in parts[1::2]:
            found[name] = found.get(name, 0) + 1
        if found != expected:
            return f"the {what} record does not cut at its stand-ins ({found})"
        out[what] = parts
    sample = runs(new_run_id(), time.time(), 0.25, time.time())
    values = _values(sample.id, sample.started, sample.wall, sample.steps[0].phases.ended
                     if sample.steps else 0.0)
    if _fill(out["run"], values) != sample.encode() or \
            _fill(out["summary"], values) != encode_summary(summarise(sample)):
        return "the run record's encoding is not what the template gives"
    return out


def _cut(raw: bytes, markers: dict[bytes, str]) -> list[Any]:
    """``raw`` split at every occurrence of each marker: bytes, name, bytes, name, ... bytes."""
    hits = []
    for marker, name in markers.items():
        at = raw.find(marker)
        while at >= 0:
            hits.append((at, len(marker), name))
            at = raw.find(marker, at + len(marker))
    hits.sort()
    parts: list[Any] = []
    last = 0
    for at, size, name in hits:
        if at < last:  # overlapping markers: not a cut a replay could fill
            return []
        parts += [raw[last:at], name]
        last = at + size
    parts.append(raw[last:])
    return parts


def _mp_str(text: str) -> bytes:
    """msgpack's encoding of a str (msgpack.packb, use_bin_type=True)."""
    data = text.encode("utf-8", "surrogatepass")
    n = len(data)
    if n < 32:
        return bytes((0xA0 | n,)) + data
    if n < 1 << 8:
        return b"\xd9" + bytes((n,)) + data
    if n < 1 << 16:
        return b"\xda" + n.to_bytes(2, "big") + data
    return b"\xdb" + n.to_bytes(4, "big") + data


def _mp_phases(now: float) -> bytes:
    """msgpack's encoding of ``Phases`` all at ``now``: ``[1, now, now, now, now]``."""
    return b"\x95\x01" + (b"\xcb" + _pack_double(now)) * 4


def _values(run_id: str, started: float, wall: float, now: float) -> dict[str, bytes]:
    return {"id": _mp_str(run_id), "started": b"\xcb" + _pack_double(started),
            "wall": b"\xcb" + _pack_double(wall), "phases": _mp_phases(now)}


def _fill(parts: list[Any], values: dict[str, bytes]) -> bytes:
    """A template (:func:`_template`) with ``values`` put in."""
    out = parts[:]
    out[1::2] = [values[name] for name in parts[1::2]]
    return b"".join(out)


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
    from kata.configfile import locate_config
    from kata.locations import store_location

    try:  # the full path's find_config(...).resolve(), as a string
        config = os.path.realpath(locate_config(os.getcwd(), config_file))
    except Exception:  # noqa: BLE001 (KataError, OSError, a symlink loop): the full path says
        return None
    root = store_location(store_arg)
    doc = _read_record(config, root)
    if doc is None:
        return None
    try:
        if doc["environment"] != _environment():
            return None
        from kata.githead import head

        if head(os.path.dirname(config)) != doc["head"]:
            return None
        if observe(doc["paths"]) != doc["observed"]:
            return None
    except (KeyError, TypeError, ValueError):  # a record of another shape: as absent
        return None
    status = _replay(doc, root, doc["state"], "json" if json_out else "live" if live else "plain")
    if status is not None:
        _sweep_left(doc["state"])
    return status


def _sweep_left(state: str) -> None:
    """What a killed kata left on a containerd (``kata.runtimes.sweepmarks``): a replay never
    connects, so it sweeps where a dead owner's marker says; one listdir when none is
    there (the module is imported only then)."""
    try:
        if not os.listdir(os.path.join(state, MARKERS)):
            return
    except OSError:
        return
    from kata.runtimes.sweepmarks import sweep_dead

    sys.stdout.flush()  # the run's lines first, a warning after them
    sweep_dead(state, warn=lambda message: print(f"kata: warning: {message}", file=sys.stderr))


def _read_record(config: str, root: str) -> dict[str, Any] | None:
    """The record for ``config`` and the store at ``root``, if one was written (None
    otherwise, or when unreadable). A local store's state directory is beside it (a record
    there names it, and observes the store's directory as it was when statfs said it was
    local); a store on a network filesystem has it elsewhere (``default_state_dir``,
    which asks statfs)."""
    name = record_key(config, root)
    beside = os.path.join(root, LOCAL_STATE)
    doc = _load(os.path.join(beside, DIR_NAME, name))
    if doc is not None:
        return doc if doc.get("state") == beside else None
    from store.index import default_state_dir

    try:
        state = default_state_dir(root)
    except OSError:
        return None
    if state == beside:
        return None
    doc = _load(os.path.join(state, DIR_NAME, name))
    return doc if doc is not None and doc.get("state") == state else None


def _load(path: str) -> dict[str, Any] | None:
    try:
        with open(path, "rb") as f:
            raw = f.read()
    except OSError:
        return None
    try:
        doc = marshal.loads(raw)
    except (EOFError, ValueError, TypeError):  # torn or foreign: as absent
        return None
    return doc if isinstance(doc, dict) and doc.get("format") == FORMAT else None


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
            if index.discarded or not index.read(lambda txn: _same(txn, index, doc)):
                return None  # the full path re-reads, re-hashes, heals and rebuilds
        except (StoreError, lmdb.Error, OSError, KeyError, TypeError, ValueError):
            return None  # the full path meets it again and says what it is
        return _emit(index, root, doc, mode, created)
    finally:
        index.close()


def _same(txn: Any, index: Any, doc: dict[str, Any]) -> bool:
    """In one read transaction: whether the index holds each hit's record exactly as the
    full path found it, and each object is as it was when the record was written: its
    ``ver`` row (when its content was last hashed and found whole, at which stat
    signature) unchanged and its file at that signature (``Store.damaged``'s test; an
    object it would re-hash makes the full path run)."""
    get = txn.get
    db = index.db["real"]
    for key, raw in doc["hits"]:
        if get(key, db=db) != raw:
            return False
    db = index.db["ver"]
    stat = os.stat
    for digest, ver, path, signature in doc["objects"]:
        if get(digest, db=db) != ver:
            return False
        try:
            if _ver_signature(stat(path)) != signature:
                return False
        except OSError:
            return False
    return True


def _emit(index: Any, root: str, doc: dict[str, Any], mode: str, created: float) -> int:
    """Print the run, record it, print its end: the realiser's order, and what
    ``Store.put_run`` and ``Store.count`` write. ``mode``: ``json`` (the ``--json``
    lines), ``plain`` (the plain lines) or ``live`` (on a terminal: the plain lines styled
    as the live view styles them, in two frames without a status block: what the live view
    writes for a run over before its first status frame)."""
    from store.errors import StoreError
    from store.files import write_immutable

    from kata.realise.wire import event_line, process_started
    from kata.report.text import FRAME_MARK, SHOW_CURSOR, done_line, styled

    run_id = new_run_id()
    out = sys.stdout
    if doc.get("stderr"):  # the warnings the recorded run gave, before its lines as there
        sys.stderr.write(doc["stderr"])
        sys.stderr.flush()
    if mode == "json":
        events = marshal.loads(doc["events"])
        out.write("".join(event_line(e) + "\n" for e in events))
    elif mode == "live":
        out.write(FRAME_MARK + "".join(styled(line) + "\n" for line in doc["plain"].splitlines()))
    else:
        out.write(doc["plain"])
    out.flush()
    wall = time.monotonic() - process_started()
    values = _values(run_id, created, wall, time.time())
    try:
        name = f"{int(float(created) * 1e9):020d}-{run_id}"  # store.runs.record_name
        raw = _fill(doc["run"], values)
        write_immutable(os.path.join(root, "tmp"), os.path.join(root, "runs", name), raw)
        index.put_run(run_id, raw, name, _fill(doc["summary"], values),
                      counts={"hits": len(doc["hits"])})
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
