"""The pipeline model: frozen values parsed once from `.kata-ci.yaml`.

A value here cannot hold a bad duration, image reference or label; the loader
(`kata.loader`) builds them and turns every ValueError into a positioned
`KataError`. Positions are kept beside the values (never hashed) so later
stages (cycle detection, conditions, unknown dependencies) can point at the file.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from kata.errors import Position
from kata.resources import Resources

if TYPE_CHECKING:
    from kata.conditions import Expr

_DURATION = re.compile(r"(?:(\d+)h)?(?:(\d+)m(?!s))?(?:(\d+)s)?(?:(\d+)ms)?")


@dataclass(frozen=True, slots=True, kw_only=True)
class Duration:
    """A length of time, parsed from `90s`, `15m`, `1h30m`, `250ms`."""

    millis: int

    @classmethod
    def parse(cls, text: str) -> "Duration":
        m = _DURATION.fullmatch(text.strip()) if isinstance(text, str) else None
        if not text or m is None or not any(m.groups()):
            raise ValueError(f"bad duration {text!r}: expected e.g. 90s, 15m, 1h30m")
        h, mi, s, ms = (int(g or 0) for g in m.groups())
        return cls(millis=((h * 60 + mi) * 60 + s) * 1000 + ms)

    @property
    def seconds(self) -> float:
        return self.millis / 1000

    def __str__(self) -> str:
        ms, rest = self.millis % 1000, self.millis // 1000
        h, m, s = rest // 3600, rest // 60 % 60, rest % 60
        out = "".join(f"{v}{u}" for v, u in ((h, "h"), (m, "m"), (s, "s")) if v)
        return out + (f"{ms}ms" if ms else "") or "0s"


_COMPONENT = r"[a-z0-9]+(?:(?:[._]|__|-+)[a-z0-9]+)*"
_DOMAIN = r"(?:[a-zA-Z0-9](?:[a-zA-Z0-9-]*[a-zA-Z0-9])?)(?:\.[a-zA-Z0-9](?:[a-zA-Z0-9-]*[a-zA-Z0-9])?)*(?::[0-9]+)?"
_REF = re.compile(
    rf"(?:(?P<domain>{_DOMAIN})/)?(?P<path>{_COMPONENT}(?:/{_COMPONENT})*)"
    r"(?::(?P<tag>[\w][\w.-]{0,127}))?(?:@(?P<digest>sha256:[0-9a-f]{64}))?"
)
_PATH = re.compile(rf"{_COMPONENT}(?:/{_COMPONENT})*")
DIGEST_RE = re.compile(r"sha256:[0-9a-f]{64}")


@dataclass(frozen=True, slots=True, kw_only=True)
class ImageRef:
    """A normalised image reference: `node:20-alpine` is `docker.io/library/node:20-alpine`."""

    registry: str
    repository: str
    tag: str | None = None
    digest: str | None = None

    @classmethod
    def parse(cls, text: str) -> "ImageRef":
        m = _REF.fullmatch(text) if isinstance(text, str) else None
        if m is None:
            raise ValueError(f"bad image reference {text!r}: expected e.g. alpine:3.19 or "
                             "registry.example.com/team/app@sha256:<64 hex>")
        domain, path = m["domain"], m["path"]
        # the first component is a registry only if it looks like a host (Docker's rule)
        if domain is not None and not ("." in domain or ":" in domain or domain == "localhost"):
            path, domain = f"{domain}/{path}", None
            if not _PATH.fullmatch(path):  # the "domain" was a path component after all
                raise ValueError(f"bad image reference {text!r}: repository names are lowercase")
        if domain is None or domain in ("index.docker.io", "registry-1.docker.io"):
            domain = "docker.io"
        if domain == "docker.io" and "/" not in path:
            path = f"library/{path}"
        tag = m["tag"] or (None if m["digest"] else "latest")
        return cls(registry=domain, repository=path, tag=tag, digest=m["digest"])

    @property
    def pinned(self) -> bool:
        return self.digest is not None

    @property
    def name(self) -> str:
        return f"{self.registry}/{self.repository}"

    def __str__(self) -> str:
        out = self.name
        if self.tag:
            out += f":{self.tag}"
        if self.digest:
            out += f"@{self.digest}"
        return out


@dataclass(frozen=True, slots=True, kw_only=True)
class CacheSpec:
    """`cache:` of a step. `cache: false` gives enabled=False (never served from cache)."""

    enabled: bool = True
    paths: tuple[str, ...] = ()
    key_files: tuple[str, ...] = ()
    explicit: bool = False  # the step said `cache: true` / `enabled: true` (opts a secret step in)


READY_KINDS = ("tcp", "http", "command")
DEFAULT_READY_TIMEOUT = Duration(millis=60_000)


@dataclass(frozen=True, slots=True, kw_only=True)
class Ready:
    """`ready:` of a service: `{tcp: 5432}`, `{http: URL}` or `{command: CMD}`, + timeout."""

    kind: str  # one of READY_KINDS
    target: str  # the port (as text), the URL or the shell command
    timeout: Duration = DEFAULT_READY_TIMEOUT


@dataclass(frozen=True, slots=True, kw_only=True)
class Service:
    name: str
    image: ImageRef
    env: tuple[tuple[str, str], ...] = ()
    # `commands:` run as the step's do (`/bin/sh -c`, stop at the first failure) instead
    # of the image's Entrypoint/Cmd; `entrypoint:` (an argv list) replaces both instead
    commands: tuple[str, ...] = ()
    entrypoint: tuple[str, ...] = ()
    ready: Ready | None = None  # None: the image's first exposed port, else "started"
    secrets: tuple[str, ...] = ()  # names only: services get the secrets they declare
    # its own `resources:` over settings' (not the step's); None fields: host defaults
    resources: Resources = Resources()
    position: Position | None = field(default=None, compare=False)


@dataclass(frozen=True, slots=True, kw_only=True)
class Trigger:
    """One `triggers:` entry; its fields are AND'ed, entries are OR'ed."""

    event: str | None = None
    branches: tuple[str, ...] = ()
    paths: tuple[str, ...] = ()
    actions: tuple[str, ...] = ()
    pattern: str | None = None
    position: Position | None = field(default=None, compare=False)


@dataclass(frozen=True, slots=True, kw_only=True)
class Settings:
    timeout: Duration = Duration(millis=30 * 60 * 1000)
    max_parallel: int | None = None  # None: CPU count, decided by the realiser
    fail_fast: bool = True
    cache_enabled: bool = True
    resources: Resources = Resources()  # the default of every step and service


NETWORK_MODES = ("default", "none", "host")


@dataclass(frozen=True, slots=True, kw_only=True)
class Step:
    name: str
    image: ImageRef
    commands: tuple[str, ...] = ()
    depends_on: tuple[str, ...] = ()
    artifacts: tuple[str, ...] = ()
    services: tuple[Service, ...] = ()
    env: tuple[tuple[str, str], ...] = ()  # the step's own env, in file order
    secrets: tuple[str, ...] = ()
    timeout: Duration | None = None
    cache: CacheSpec = CacheSpec()
    inputs: tuple[str, ...] = ()  # gitignore-style globs; () = the whole repository
    workdir: str = "/workspace"
    user: str | None = None  # None: the image's user
    network: str = "default"
    # its own `resources:` over settings'; None fields: host defaults (never hashed)
    resources: Resources = Resources()
    description: str = ""
    only: "Expr | None" = None
    when: "Expr | None" = None
    position: Position | None = field(default=None, compare=False)
    dep_positions: tuple[Position | None, ...] = field(default=(), compare=False)

    # interface names from docs/architecture.md
    @property
    def cache_paths(self) -> tuple[str, ...]:
        return self.cache.paths

    @property
    def key_files(self) -> tuple[str, ...]:
        return self.cache.key_files

    @property
    def cacheable(self) -> bool:
        """Served from and recorded in the cache: `cache:` not false, and a step that
        declares secrets only when it says `cache: true` (its output may depend on them)."""
        return self.cache.enabled and (not self.secrets or self.cache.explicit)

    @property
    def condition(self) -> "Expr | None":
        """`only:` and `when:` AND'ed; None means always."""
        from kata.conditions import And

        parts = tuple(e for e in (self.only, self.when) if e is not None)
        if not parts:
            return None
        return parts[0] if len(parts) == 1 else And(items=parts)


@dataclass(frozen=True, slots=True, kw_only=True)
class Pipeline:
    name: str
    steps: tuple[Step, ...]
    settings: Settings = Settings()
    env: tuple[tuple[str, str], ...] = ()
    triggers: tuple[Trigger, ...] = ()
    file: str = ""

    def step(self, name: str) -> Step:
        for s in self.steps:
            if s.name == name:
                return s
        raise KeyError(name)

    @property
    def trigger_condition(self) -> "Expr":
        from kata.conditions import triggers_expr

        return triggers_expr(self.triggers)
