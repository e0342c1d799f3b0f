"""In-memory stand-ins for the realiser's tests: a runtime, a graph, a store.

``FakeRuntime`` runs a step's shell script on the host, in the directory the
step's workspace bind mount points at (so the overlay, artifacts and caches are
real), or follows a per-step script (exit status, sleep, wait for cancel).
``fake_graph`` compiles tiny pipelines with the same two keys the compiler
defines (derivation hash, resolved hash) so the scheduler and realiser can be
tested before, and independently of, the real compiler.
"""

from __future__ import annotations

import os
import subprocess
import threading
import time
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

from kata.runtimes.base import CANCEL_EXIT, TIMEOUT_EXIT, StepSpec

FAKE_DIGEST = "sha256:" + "0" * 64


@dataclass
class Behaviour:
    exit_status: int = 0
    sleep: float = 0.0
    wait_for_cancel: bool = False
    lines: tuple[str, ...] = ()
    # steps this one waits for to be running in the runtime first (a test's ordering,
    # never the scheduler's luck: under load a sibling can reach the runtime late)
    after: tuple[str, ...] = ()


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
        self._started = threading.Condition(self._lock)

    def resolve_image(self, ref: str) -> str:
        return FAKE_DIGEST

    def run(self, spec: StepSpec, sink, cancel: threading.Event, service_sink=None) -> int:
        name = spec.labels.get("kata.step", "?")
        for service in spec.services:  # a fake service says hello on its own log
            assert service_sink is not None
            service_sink(service.name, "stdout", f"{service.name} up".encode())
        with self._lock:
            self.started.append(name)
            self.specs[name] = spec
            self.running += 1
            self.max_running = max(self.max_running, self.running)
            self._started.notify_all()
        try:
            return self._run(name, spec, sink, cancel)
        finally:
            with self._lock:
                self.running -= 1

    def _run(self, name: str, spec: StepSpec, sink, cancel: threading.Event) -> int:
        behaviour = self.behaviours.get(name)
        if behaviour is not None:
            with self._started:
                assert self._started.wait_for(
                    lambda: all(s in self.started for s in behaviour.after), timeout=60), \
                    f"{name}: {behaviour.after} never started"
            raw = getattr(sink, "raw", False)
            for line in behaviour.lines:
                sink("stdout", line.encode() + b"\n" if raw else line.encode())
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
        argv = list(spec.argv)
        for other in spec.mounts:  # other bind mounts: point the script at their host paths
            if other is not mount and other.kind == "bind":
                argv = [a.replace(other.target, other.source) for a in argv]
        proc = subprocess.Popen(argv, cwd=mount.source, env=env,
                                stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
        assert proc.stdout is not None
        keep = getattr(sink, "raw", False)
        for raw in proc.stdout:
            sink("stdout", raw if keep else raw.rstrip(b"\n"))
        try:
            return proc.wait(timeout=spec.timeout)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
            return TIMEOUT_EXIT


# -- pipelines written as YAML and compiled by the real compiler ---------------------

@dataclass(frozen=True)
class FakeStep:
    """A step, as a test writes it; rendered into .kata-ci.yaml by ``compile_steps``."""

    name: str
    commands: tuple[str, ...] = ("true",)
    depends_on: tuple[str, ...] = ()
    artifacts: tuple[str, ...] = ()
    inputs: tuple[str, ...] = ()
    env: tuple[tuple[str, str], ...] = ()
    secrets: tuple[str, ...] = ()
    timeout: str | None = None
    cache: bool = True
    cache_paths: tuple[str, ...] = ()
    key_files: tuple[str, ...] = ()
    image: str = "kata.local/busybox:latest"
    services: tuple[dict, ...] = ()
    user: str | None = None
    network: str | None = None
    matrix: dict | None = None  # e.g. {"V": ["p", "q"]}
    when: str | None = None  # e.g. "failure()"
    reports: dict | None = None  # e.g. {"junit": ["reports/*.xml"]}
    allow_failure: bool = False

    def to_yaml(self) -> dict:
        out: dict = {"name": self.name, "image": self.image, "commands": list(self.commands)}
        for key in ("depends_on", "artifacts", "inputs", "secrets"):
            if getattr(self, key):
                out[key] = list(getattr(self, key))
        if self.env:
            out["env"] = dict(self.env)
        if self.timeout:
            out["timeout"] = self.timeout
        if self.user:
            out["user"] = self.user
        if self.network:
            out["network"] = self.network
        if self.services:
            out["services"] = [dict(s) for s in self.services]
        if self.matrix:
            out["matrix"] = dict(self.matrix)
        if self.when:
            out["when"] = self.when
        if self.reports:
            out["reports"] = dict(self.reports)
        if self.allow_failure:
            out["allow_failure"] = True
        if not self.cache:
            out["cache"] = False
        elif self.cache_paths:
            out["cache"] = {"paths": list(self.cache_paths), "key_files": list(self.key_files)}
        return out


def write_pipeline(repo: Path, steps: list[FakeStep], *, name: str = "fake",
                   settings: dict | None = None) -> Path:
    import yaml

    doc: dict = {"pipeline": name}
    if settings:
        doc["settings"] = settings
    doc["steps"] = [s.to_yaml() for s in steps]
    path = repo / ".kata-ci.yaml"
    path.write_text(yaml.safe_dump(doc, sort_keys=False))
    return path


def compile_steps(repo: Path, steps: list[FakeStep], *, digest: str = FAKE_DIGEST,
                  stat_cache=None, **kw):
    """Write the pipeline into ``repo`` and compile it with a resolver answering ``digest``."""
    from kata.compile import compile_pipeline
    from kata.loader import load_pipeline

    pipeline = load_pipeline(write_pipeline(repo, steps, **kw))
    return compile_pipeline(pipeline, resolver=lambda ref: digest, repo_root=repo,
                            stat_cache=stat_cache)
