"""Loaded pipelines, kept by content: a config whose bytes did not change is not parsed again.

Loading is a pure function of the config's bytes, the name it is loaded under (positions
carry it), and the code that loads it (this package's compiler modules, the grammars, the
YAML, glob and grammar libraries, the Python that runs them). ``load_cached`` names the
result by the sha256 of all of that and keeps it as one pickle file in a host-local
directory (``<store state dir>/loaded/``): a fully cached ``kata run`` of a 1,000-step
config skips the YAML parser, the walk and the glob checks, and the imports they need.

Key (``kata-loaded/1``): sha256 of ``"kata-loaded/1" NUL <code fingerprint> NUL <file name>
NUL <config bytes>``, the code fingerprint being the sha256 of the bytes of every
``kata/*.py`` and ``grammar/*`` file (sorted by name), the stat signature
``(size, mtime_ns, ino)`` of the ``yaml``, ``pathspec``, ``lark`` and ``msgpack`` packages'
``__init__`` files and ``sys.version``. Any edit of the config, a rename, an upgrade of
kata or of those libraries gives another key; an entry is never updated in place.

The file is a pickle: it is read only from the state directory, which only kata writes
(mode 0700, as the index beside it; a step never sees it). A file that does not load (torn,
foreign, from other code) counts as absent and is replaced. ``kata validate`` never uses
this: it always parses.
"""

from __future__ import annotations

import dataclasses
import functools
import gc
import hashlib
import io
import os
import pickle
import sys
import time
from pathlib import Path

from kata.atomicfile import write_atomic
from kata.configfile import read_config
from kata.model import Pipeline

FORMAT = "kata-loaded/1"
DIR_NAME = "loaded"
KEEP = 32  # entries kept (one per config version and kata version seen)
_LIBRARIES = ("yaml", "pathspec", "lark", "msgpack")


@functools.cache
def code_fingerprint() -> bytes:
    """sha256 over the loader's code: kata/*.py, grammar/*, the libraries it calls, Python."""
    here = Path(__file__).resolve().parent
    return fingerprint(((here, ".py"), (here.parent / "grammar", "")), _LIBRARIES)


def fingerprint(folders: tuple[tuple[Path, str], ...], libraries: tuple[str, ...]) -> bytes:
    """sha256 of ``sys.version``, then per folder the name, length and bytes of each file
    whose name ends with its suffix (sorted), then per library the path, size, mtime_ns
    and inode of its ``__init__`` (or "-" when it is not installed)."""
    import importlib.util

    h = hashlib.sha256(sys.version.encode())
    for folder, suffix in folders:
        try:
            names = sorted(os.listdir(folder))
        except OSError:
            continue
        for name in names:
            if not name.endswith(suffix):
                continue
            try:
                with open(folder / name, "rb") as f:
                    data = f.read()
            except OSError:  # a directory (__pycache__), a file gone meanwhile
                continue
            h.update(b"\0%s\0%d\0" % (os.fsencode(name), len(data)))
            h.update(data)
    for lib in libraries:
        spec = importlib.util.find_spec(lib)
        origin = spec.origin if spec is not None else None
        sig = b"-"
        if origin:
            try:
                st = os.stat(origin)
                sig = b"%s %d %d %d" % (os.fsencode(origin), st.st_size, st.st_mtime_ns,
                                        st.st_ino)
            except OSError:
                pass
        h.update(b"\0" + lib.encode() + b"\0" + sig)
    return h.digest()


def key(data: bytes, file: str) -> str:
    """The hex name of the loaded pipeline of config ``data`` loaded as ``file``."""
    h = hashlib.sha256(FORMAT.encode() + b"\0" + code_fingerprint() + b"\0")
    h.update(os.fsencode(file) + b"\0")
    h.update(data)
    return h.hexdigest()


def load_cached(path: str | os.PathLike[str], cache_dir: str | os.PathLike[str] | None
                ) -> Pipeline:
    """``kata.loader.load_pipeline(path)``, kept in ``cache_dir`` (None: no cache).

    The same errors as ``load_pipeline`` (a bad config is never kept: only a loaded
    pipeline is written). A cache directory that cannot be written is not an error.
    """
    data = read_config(Path(path))
    if cache_dir is None:
        return _load(data, path)
    name = key(data, str(path))
    entry = os.path.join(cache_dir, name)
    found = _read(entry)
    if found is not None and found.file == str(path):
        return found
    pipeline = _load(data, path)
    _write(entry, pipeline)
    return pipeline


def _load(data: bytes, path: str | os.PathLike[str]) -> Pipeline:
    from kata.loader import load_bytes

    return load_bytes(data, str(path))


_FIELDS: dict[type, tuple[str, ...]] = {}


def _rebuild(cls: type, names: tuple[str, ...], values: tuple) -> object:
    """A frozen dataclass instance from its field values, without ``__init__`` (the values
    were checked when the config was loaded) and without ``dataclasses.fields`` per object
    (the default ``__setstate__`` of a slotted dataclass calls it: twice as slow)."""
    obj = object.__new__(cls)
    for name, value in zip(names, values):
        _setattr(obj, name, value)
    return obj


_setattr = object.__setattr__


class _Pickler(pickle.Pickler):
    """Pickles dataclass instances as ``_rebuild(cls, names, values)``."""

    def reducer_override(self, obj: object):  # noqa: ANN201
        cls = type(obj)
        names = _FIELDS.get(cls)
        if names is None:
            if not dataclasses.is_dataclass(cls) or isinstance(obj, type):
                return NotImplemented
            names = _FIELDS[cls] = tuple(f.name for f in dataclasses.fields(cls))
        return _rebuild, (cls, names, tuple(getattr(obj, n) for n in names))


def _read(entry: str) -> Pipeline | None:
    try:
        with open(entry, "rb") as f:
            raw = f.read()
    except OSError:
        return None
    enabled = gc.isenabled()
    gc.disable()  # tens of thousands of objects, none garbage
    try:
        value = pickle.loads(raw)
    except Exception:  # noqa: BLE001 - torn or foreign: absent, rewritten below
        return None
    finally:
        if enabled:
            gc.enable()
    return value if isinstance(value, Pipeline) else None


def _write(entry: str, pipeline: Pipeline) -> None:
    folder = os.path.dirname(entry)
    buf = io.BytesIO()
    _Pickler(buf, protocol=pickle.HIGHEST_PROTOCOL).dump(pipeline)
    try:
        os.makedirs(folder, mode=0o700, exist_ok=True)
        write_atomic(entry, buf.getvalue())  # a reader sees the whole file or none
    except OSError:
        return
    _evict(folder, keep=KEEP)


def _evict(folder: str, *, keep: int) -> None:
    """Remove all but the ``keep`` newest entries (an entry is written only on a miss: an
    edited config, a new kata); temporary files of writers gone for an hour go too."""
    try:
        with os.scandir(folder) as it:
            found = [(e.stat().st_mtime_ns, e.path, e.name) for e in it if e.is_file()]
    except OSError:
        return
    now = time.time_ns()
    stale = [p for t, p, n in found if ".tmp." in n and now - t > 3600 * 10**9]
    entries = sorted((t, p) for t, p, n in found if ".tmp." not in n)
    for path in stale + [p for _, p in entries[:-keep]]:
        try:
            os.unlink(path)
        except OSError:
            pass
