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

# one grammar for every duration Kata reads (the config and the command line)
_DURATION = re.compile(r"(?:(\d+)w)?(?:(\d+)d)?(?:(\d+)h)?(?:(\d+)m(?!s))?(?:(\d+)s)?(?:(\d+)ms)?", re.ASCII)
_UNIT_MS = (7 * 86_400_000, 86_400_000, 3_600_000, 60_000, 1000, 1)  # w d h m s ms
MAX_DURATION_MS = 3650 * 86_400_000  # ten years: below every OS timeout limit


@dataclass(frozen=True, slots=True, kw_only=True)
class Duration:
    """A length of time in whole milliseconds, ``0 <= millis <= MAX_DURATION_MS``.

    The one duration grammar of Kata (``.kata-ci.yaml`` timeouts, ``kata store gc
    --older-than/--grace``): Prometheus' duration syntax without years —
    one or more ``<digits><unit>``, units ``w`` (7 days), ``d`` (24 hours), ``h``, ``m``,
    ``s``, ``ms``, largest first, each at most once (``1h30m``, ``2d``, ``250ms``,
    ``0s``) — or a bare non-negative integer, which counts seconds (``90``, ``0``).
    No sign, no fraction (``1.5h``: write ``1h30m``), no spaces inside, lowercase units.
    Whether zero is allowed is the caller's decision (a timeout refuses it,
    ``--grace 0`` means "no grace").

    Errors: ``parse`` raises ValueError (the loader positions it as
    ``config.duration``; the CLI makes it a usage error, exit 2).
    """

    millis: int

    def __post_init__(self) -> None:
        if isinstance(self.millis, bool) or not isinstance(self.millis, int):
            raise ValueError(f"duration millis must be an int, got {self.millis!r}")
        if not 0 <= self.millis <= MAX_DURATION_MS:
            raise ValueError(f"duration out of range: {self.millis} ms (0 to 3650d)")

    @classmethod
    def parse(cls, text: str) -> "Duration":
        """``"1h30m"`` -> ``Duration(millis=5_400_000)``; ``"90"`` -> 90 seconds."""
        if not isinstance(text, str):
            raise ValueError(f"bad duration {text!r}: expected text such as 90s, 15m, 1h30m, 2d")
        stripped = text.strip()
        if len(stripped) > 40:
            raise ValueError(f"bad duration {text[:40]!r}...: too long")
        if stripped.isascii() and stripped.isdigit():
            millis = int(stripped) * 1000
        else:
            m = _DURATION.fullmatch(stripped)
            if not stripped or m is None or not any(m.groups()):
                raise ValueError(f"bad duration {text!r}: expected e.g. 90s, 15m, 1h30m, 2d "
                                 "(units w d h m s ms, largest first) or whole seconds")
            millis = sum(int(g) * unit for g, unit in zip(m.groups(), _UNIT_MS) if g)
        if millis > MAX_DURATION_MS:
            raise ValueError(f"bad duration {text!r}: longer than 3650d")
        return cls(millis=millis)

    @property
    def seconds(self) -> float:
        return self.millis / 1000

    def __str__(self) -> str:
        out, rest = [], self.millis
        for unit, size in zip(("w", "d", "h", "m", "s", "ms"), _UNIT_MS):
            if rest >= size:
                out.append(f"{rest // size}{unit}")
                rest %= size
        return "".join(out) or "0s"


_ENV_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]*", re.ASCII)


def is_env_name(name: str) -> bool:
    """Whether ``name`` may name an environment variable, and so a secret (a secret is
    exported into the step's environment under its name): ``[A-Za-z_][A-Za-z0-9_]*``,
    POSIX.1-2017 §8.1's portable names plus lowercase (as shells accept). The one rule
    for ``env:`` keys, ``secrets:`` names, ``--secret``/``--secret-file`` and the realiser."""
    return isinstance(name, str) and _ENV_NAME.fullmatch(name) is not None


_COMPONENT = r"[a-z0-9]+(?:(?:[._]|__|-+)[a-z0-9]+)*"
_DOMAIN = r"(?:[a-zA-Z0-9](?:[a-zA-Z0-9-]*[a-zA-Z0-9])?)(?:\.[a-zA-Z0-9](?:[a-zA-Z0-9-]*[a-zA-Z0-9])?)*(?::[0-9]+)?"
_REF = re.compile(
    rf"(?:(?P<domain>{_DOMAIN})/)?(?P<path>{_COMPONENT}(?:/{_COMPONENT})*)"
    r"(?::(?P<tag>[\w][\w.-]{0,127}))?(?:@(?P<digest>sha256:[0-9a-f]{64}))?",
    re.ASCII,  # the reference grammar's \w is [A-Za-z0-9_]
)
_PATH = re.compile(rf"{_COMPONENT}(?:/{_COMPONENT})*")
DIGEST_RE = re.compile(r"sha256:[0-9a-f]{64}")


@dataclass(frozen=True, slots=True, kw_only=True)
class ImageRef:
    """An image reference, parsed once by the OCI distribution reference grammar
    (``distribution/reference``: ``[domain/]path[:tag][@digest]``) and normalised as
    docker and containerd do: ``node:20-alpine`` is ``docker.io/library/node:20-alpine``.

    The one image-reference type of Kata: the config loader, the compiler and the
    containerd adapter all use it.

    - ``registry``: the domain (``docker.io``, ``ghcr.io``, ``localhost:5000``); the first
      path component is a domain only when it has a ``.`` or ``:`` or is ``localhost``.
    - ``repository``: the path inside the registry (``library/node``), lowercase.
    - ``tag``: ``latest`` when neither tag nor digest is given; None for a bare digest.
    - ``digest``: ``sha256:<64 hex>`` or None.
    - ``name``: ``registry/repository``, no tag, no digest (the reference grammar's
      ``Name()``: what identifies a repository, e.g. for auth scopes and mirrors).
    - ``stored_name``: what containerd's image store keeps it under.
    - ``str()``: the full normalised reference (round-trips through ``parse``).

    Errors: ``parse`` raises ValueError (the loader positions it as ``config.image_ref``,
    the runtime raises ``image.bad_reference``).
    """

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

    def __post_init__(self) -> None:
        if self.digest is not None and not DIGEST_RE.fullmatch(self.digest):
            raise ValueError(f"bad image digest {self.digest!r}: expected sha256:<64 hex>")

    @property
    def pinned(self) -> bool:
        return self.digest is not None

    def pin(self, digest: str) -> "ImageRef":
        """This repository at ``digest`` (the tag dropped): ``str()`` is ``name@digest``,
        what a step spec gives the runtime once the compiler resolved the tag."""
        return ImageRef(registry=self.registry, repository=self.repository, digest=digest)

    @property
    def name(self) -> str:
        """``docker.io/library/node``: the repository's full name, no tag or digest."""
        return f"{self.registry}/{self.repository}"

    @property
    def stored_name(self) -> str:
        """The image-store name (containerd's ``ParseDockerRef``): ``name@digest`` when
        pinned (a tag beside a digest is dropped: the digest decides), else ``name:tag``."""
        if self.digest:
            return f"{self.name}@{self.digest}"
        return f"{self.name}:{self.tag or 'latest'}"

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
    user: str | None = None  # `user:` uid[:gid]; None: the image's user if numeric, else root
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
MAX_RETRIES = 10


#: Failures that end with the step's own non-zero exit status (what exit-code lists in
#: ``retry.on`` and ``allow_failure`` match): a plain failure, an out-of-memory kill (137),
#: a command the image does not have (127).
_EXIT_REASONS = ("step.failed", "step.oom", "step.command_not_found")

@dataclass(frozen=True, slots=True, kw_only=True)
class Retry:
    """``retry:`` of a step: rerun a failed attempt up to ``max`` more times (1..10).
    ``exit_codes``/``timeout`` narrow which failures are retried; neither given: any
    failure but a cancellation. Not hashed: it decides how often a step runs, not what it
    computes. ValueError on construction for a bad ``max`` or exit code."""

    max: int
    exit_codes: tuple[int, ...] = ()
    timeout: bool = False

    def __post_init__(self) -> None:
        if isinstance(self.max, bool) or not 1 <= self.max <= MAX_RETRIES:
            raise ValueError(f"max must be 1 to {MAX_RETRIES} (extra attempts), got {self.max!r}; "
                             "no retries: leave retry out")
        for code in self.exit_codes:
            if not 0 < code < 256:
                raise ValueError(f"exit code {code} out of range (1 to 255)")

    def covers(self, reason: str, exit_status: int | None) -> bool:
        """Whether a failed attempt (``reason`` as ``StepFailed.reason``) is retried."""
        if reason == "step.cancelled":
            return False
        if not self.exit_codes and not self.timeout:
            return True
        if reason == "step.timeout":
            return self.timeout
        # an OOM kill is exit 137 (SIGKILL), the usual reason to retry on 137
        return reason in _EXIT_REASONS and exit_status in self.exit_codes

#: The run's context a step may ask for with ``context: [...]``; only the names a step
#: lists are set in its container and enter its key (a step that does not ask for the
#: commit is not a cache miss on every commit). ``CI`` is always "true".
CONTEXT_VARS = ("KATA_COMMIT_SHA", "KATA_BRANCH", "KATA_TAG", "KATA_EVENT", "KATA_PIPELINE", "CI")


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
    # gitignore-style globs; None (no `inputs:` key) = the whole repository, () = no file
    inputs: tuple[str, ...] | None = None
    workdir: str = "/workspace"
    user: str | None = None  # None: root (0:0); the image's USER is not used (docs/config.md)
    network: str = "default"
    # its own `resources:` over settings'; None fields: host defaults (the declared
    # fields are hashed, host defaults never: kata.derivation.limits)
    resources: Resources = Resources()
    description: str = ""
    context: tuple[str, ...] = ()  # names from CONTEXT_VARS the step's container gets
    only: "Expr | None" = None
    when: "Expr | None" = None
    # a matrix instance (kata.matrix): the config's step name and this instance's values,
    # which are also in ``env``; not hashed themselves (the env and the image are)
    matrix_of: str = ""
    matrix: tuple[tuple[str, str], ...] = ()
    # `allow_failure:` (not hashed: it decides how a failure counts, not what runs):
    # True allows any failure but a cancellation; exit codes allow only those exits
    allow_failure: bool | tuple[int, ...] = False
    retry: Retry | None = None  # `retry:`; None: one attempt
    # `reports: {junit: [...]}`: path globs of JUnit XML files the step writes in its
    # workspace, read after it ran (kata.realise.reports); hashed, like artifacts
    junit_reports: tuple[str, ...] = ()
    position: Position | None = field(default=None, compare=False)
    dep_positions: tuple[Position | None, ...] = field(default=(), compare=False)
    # where each ``inputs`` / ``cache.key_files`` pattern is written: (field, pattern,
    # position), for the warning of a pattern that matches no file
    pattern_positions: tuple[tuple[str, str, Position | None], ...] = field(
        default=(), compare=False)

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
        declares secrets, itself or in a service, only when it says `cache: true` (its
        output may depend on them: a service hands on what it was given)."""
        return (self.cache.enabled and (not self.declares_secrets or self.cache.explicit)
                and not self.on_status)

    @property
    def declares_secrets(self) -> bool:
        """The step or one of its services declares a secret."""
        return bool(self.secrets) or any(s.secrets for s in self.services)

    @property
    def on_status(self) -> bool:
        """Its ``when:`` calls ``failure()`` or ``always()``: it may run after a failure
        (cleanup, notification), so it is never cached (docs/config.md)."""
        if self.when is None:  # the common case: no import on a cached run's path
            return False
        from kata.conditions import status_functions

        return bool(status_functions(self.when) - {"success"})

    def allows(self, reason: str, exit_status: int | None) -> bool:
        """Whether a failure (``reason``: ``step.failed``, ``step.timeout``,
        ``artifact.missing``...; ``exit_status`` or None) is allowed by ``allow_failure``.
        A cancellation (``step.cancelled``) never is: it is no verdict on the step."""
        if reason == "step.cancelled" or not self.allow_failure:
            return False
        if self.allow_failure is True:
            return True
        return reason in _EXIT_REASONS and exit_status in self.allow_failure

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
