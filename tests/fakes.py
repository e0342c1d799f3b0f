"""In-memory stand-ins for the realiser's tests: a runtime, a graph, a store.

``FakeRuntime`` runs a step's shell script on the host, in the directory the
step's workspace bind mount points at (so the overlay, artifacts and caches are
real), or follows a per-step script (exit status, sleep, wait for cancel).
``fake_graph`` compiles tiny pipelines with the same two keys the compiler
defines (derivation hash, resolved hash) so the scheduler and realiser can be
tested before, and independently of, the real compiler.
"""

from __future__ import annotations

import hashlib
import os
import subprocess
import threading
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path

from kata.runtimes.base import CANCEL_EXIT, TIMEOUT_EXIT, StepSpec

FAKE_DIGEST = "sha256:" + "0" * 64


@dataclass
class Behaviour:
    exit_status: int = 0
    sleep: float = 0.0
    wait_for_cancel: bool = False
    lines: tuple[str, ...] = ()


class FakeRuntime:
    """Runs steps on the host (``sh -c`` in the workspace), or as scripted."""

    def __init__(self, behaviours: Mapping[str, Behaviour] | None = None) -> None:
        self.behaviours = dict(behaviours or {})
        self.started: list[str] = []
        self.cancelled: list[str] = []
        self.specs: dict[str, StepSpec] = {}
        self.running = 0
        self.max_running = 0
        self._lock = threading.Lock()

    def resolve_image(self, ref: str) -> str:
        return FAKE_DIGEST

    def run(self, spec: StepSpec, sink, cancel: threading.Event) -> int:
        name = spec.labels.get("kata.step", "?")
        with self._lock:
            self.started.append(name)
            self.specs[name] = spec
            self.running += 1
            self.max_running = max(self.max_running, self.running)
        try:
            return self._run(name, spec, sink, cancel)
        finally:
            with self._lock:
                self.running -= 1

    def _run(self, name: str, spec: StepSpec, sink, cancel: threading.Event) -> int:
        behaviour = self.behaviours.get(name)
        if behaviour is not None:
            for line in behaviour.lines:
                sink("stdout", line.encode())
            deadline = time.monotonic() + (spec.timeout or 1e9)
            end = time.monotonic() + behaviour.sleep
            while behaviour.wait_for_cancel or time.monotonic() < end:
                if cancel.wait(0.01):
                    self.cancelled.append(name)
                    return CANCEL_EXIT
                if time.monotonic() > deadline:
                    return TIMEOUT_EXIT
            return behaviour.exit_status
        (mount,) = [m for m in spec.mounts if m.target == spec.workdir]
        env = {"PATH": os.environ.get("PATH", "/usr/bin:/bin"), **spec.env}
        proc = subprocess.Popen(list(spec.argv), cwd=mount.source, env=env,
                                stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
        assert proc.stdout is not None
        for raw in proc.stdout:
            sink("stdout", raw.rstrip(b"\n"))
        try:
            return proc.wait(timeout=spec.timeout)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
            return TIMEOUT_EXIT


# -- a tiny compiler with the real one's two keys --------------------------------------

@dataclass(frozen=True)
class FakeImage:
    name: str = "kata.local/fake"
    digest: str = FAKE_DIGEST


@dataclass(frozen=True)
class FakeCache:
    enabled: bool = True
    paths: tuple[str, ...] = ()
    key_files: tuple[str, ...] = ()


@dataclass(frozen=True)
class FakeDuration:
    seconds: float

    def __str__(self) -> str:
        return f"{self.seconds:g}s"


@dataclass(frozen=True)
class FakeStep:
    name: str
    commands: tuple[str, ...] = ()
    depends_on: tuple[str, ...] = ()
    artifacts: tuple[str, ...] = ()
    inputs: tuple[str, ...] = ()
    env: tuple[tuple[str, str], ...] = ()
    secrets: tuple[str, ...] = ()
    timeout: FakeDuration | None = None
    cache: FakeCache = FakeCache()
    workdir: str = "/workspace"
    network: str = "none"
    image: FakeImage = FakeImage()


@dataclass(frozen=True)
class FakeInputFile:
    path: str
    digest: str


@dataclass(frozen=True)
class FakeInputs:
    files: tuple[FakeInputFile, ...]
    digest: str


@dataclass(frozen=True)
class FakeDerivation:
    image_digest: str


def _h(*parts: str) -> str:
    return hashlib.sha256("\0".join(parts).encode()).hexdigest()


@dataclass
class FakeNode:
    step: FakeStep
    inputs: FakeInputs
    own: str  # hash of everything but the dependencies
    drv_hash: str = ""
    derivation: FakeDerivation = field(default_factory=lambda: FakeDerivation(FAKE_DIGEST))

    def resolved_hash(self, outputs: Mapping[str, str]) -> str:
        return _h("resolved", self.own, *(f"{d}={outputs[d]}" for d in self.step.depends_on))


@dataclass
class FakeGraph:
    order: tuple[str, ...]
    levels: tuple[tuple[str, ...], ...]
    nodes: dict[str, FakeNode]
    pipeline: str = "fake"


def _inputs(repo: Path, globs: tuple[str, ...]) -> FakeInputs:
    import pathspec

    spec = pathspec.PathSpec.from_lines("gitignore", globs) if globs else None
    files = []
    for path in sorted(p for p in repo.rglob("*") if p.is_file() or p.is_symlink()):
        rel = path.relative_to(repo).as_posix()
        if rel.startswith(".") or (spec is not None and not spec.match_file(rel)):
            continue
        files.append(FakeInputFile(rel, _h(path.read_bytes().hex(), str(os.access(path, os.X_OK)))))
    return FakeInputs(tuple(files), _h("inputs", *(f"{f.path}:{f.digest}" for f in files)))


def fake_graph(steps: list[FakeStep], repo: Path, pipeline: str = "fake") -> FakeGraph:
    by_name = {s.name: s for s in steps}
    order: list[str] = []
    level: dict[str, int] = {}
    pending = list(steps)
    while pending:
        for s in pending:
            if all(d in level for d in s.depends_on):
                level[s.name] = 1 + max((level[d] for d in s.depends_on), default=-1)
                order.append(s.name)
                pending.remove(s)
                break
        else:
            raise ValueError("cycle")
    nodes: dict[str, FakeNode] = {}
    for name in order:
        s = by_name[name]
        inputs = _inputs(repo, s.inputs)
        own = _h(repr((s.commands, s.artifacts, s.env, s.secrets, s.cache, s.workdir,
                       s.image)), inputs.digest)
        node = FakeNode(step=s, inputs=inputs, own=own)
        node.drv_hash = _h("drv", own, *(f"{d}={nodes[d].drv_hash}" for d in s.depends_on))
        nodes[name] = node
    levels = tuple(tuple(n for n in order if level[n] == i) for i in range(max(level.values()) + 1))
    return FakeGraph(order=tuple(order), levels=levels, nodes=nodes, pipeline=pipeline)


# -- a store stand-in (dir copies), until and besides the real one ---------------------

@dataclass(frozen=True)
class FakeRealisation:
    outputs: str
    log: str
    exit_status: int = 0
    duration: float = 0.0
    host: str = ""
    created: float = 0.0
    meta: dict = field(default_factory=dict)


class FakeStore:
    """Blobs in a dict, trees as copied directories: the verbs the realiser uses."""

    def __init__(self, root: Path) -> None:
        import shutil

        self._copy = shutil.copytree
        self.root = root
        self.blobs: dict[str, bytes] = {}
        self.realisations: dict[str, FakeRealisation] = {}
        self.derivations: dict[str, bytes] = {}
        self.runs: list[dict] = []
        self.hits = self.misses = 0
        self._lock = threading.Lock()

    def put_blob(self, data) -> str:
        raw = data if isinstance(data, bytes) else data.read()
        digest = "sha256:" + hashlib.sha256(raw).hexdigest()
        self.blobs[digest] = raw
        return digest

    def has_blob(self, digest: str) -> bool:
        return digest in self.blobs

    def open_blob(self, digest: str):
        import io

        return io.BytesIO(self.blobs[digest])

    def put_tree(self, root, paths=()) -> str:
        import shutil
        import tarfile
        import io

        buf = io.BytesIO()
        with tarfile.open(fileobj=buf, mode="w", format=tarfile.PAX_FORMAT) as tar:
            for p in sorted(paths):
                def norm(info):
                    info.mtime = 0
                    info.uid = info.gid = 0
                    info.uname = info.gname = ""
                    return info
                tar.add(os.path.join(root, p), arcname=p, filter=norm)
        digest = self.put_blob(buf.getvalue())
        return digest

    def unpacked(self, digest: str) -> Path:
        import io
        import tarfile

        with self._lock:
            dest = self.root / "unpacked" / digest.split(":")[1]
            if not dest.exists():
                tmp = dest.with_suffix(".tmp")
                tmp.mkdir(parents=True)
                with tarfile.open(fileobj=io.BytesIO(self.blobs[digest])) as tar:
                    tar.extractall(tmp, filter="tar")
                tmp.rename(dest)
            return dest

    def put_realisation(self, key: str, real) -> None:
        self.realisations.setdefault(key, real)

    def get_realisation(self, key: str):
        return self.realisations.get(key)

    def put_derivation(self, drv_hash: str, raw: bytes) -> None:
        self.derivations[drv_hash] = raw

    def get_derivation(self, drv_hash: str):
        return self.derivations.get(drv_hash)

    def put_run(self, run: dict) -> None:
        self.runs.append(run)

    def get_run(self, run_id: str):
        return next((r for r in self.runs if r["id"] == run_id), None)

    def list_runs(self, pipeline=None, limit=20):
        runs = [r for r in reversed(self.runs) if pipeline is None or r["pipeline"] == pipeline]
        return runs[:limit]

    def count(self, hit: bool) -> None:
        with self._lock:
            if hit:
                self.hits += 1
            else:
                self.misses += 1
