"""Derivations: what a step computes, as a frozen value with a canonical encoding.

Encoding (format tag `kata-drv/4`): msgpack of `["kata-drv/4", {field: value}]`
with map keys sorted, env as sorted `[name, value]` pairs, secrets, artifacts,
cache paths and dependency hashes sorted, services sorted by name. The
derivation hash is the sha256 hex of those bytes (the input-addressed key).
The resolved hash (`kata-drv-resolved/4`) is the same encoding with the
dependency derivation hashes replaced by the sorted artifact-stack digests of the
dependencies (``kata.keys.stack_digest``: what each hands on, its own output and what it
received, transitively), with ``dep_order`` recomputed over them (the early-cutoff key).

Only what changes what a step computes is here. Presentational and policy
fields (step name, description, timeout, `cache: false`, `only:`/`when:`) live
on `kata.model.Step` and never reach the encoding. A field that is not known
yet (an image tag nobody resolved, inputs not hashed) is None: the derivation
is then unresolved and has no hash.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
from dataclasses import dataclass
from typing import Any, Sequence

import msgpack

from kata.errors import KataError
from kata.inputs import InputFile

# /2: declared resource limits are hashed, and the container's env follows the key's
# (sorted) order; a /1 key could name a result made under other limits or another env
# order, so no /1 record is read
FORMAT = "kata-drv/4"
RESOLVED_FORMAT = "kata-drv-resolved/4"
FORMAT_1 = "kata-drv/1"  # what records an older kata wrote were keyed with (kata why)
# /2 -> /3: the same fields, but what every step sees changed (rlimits, /etc/hosts,
# /dev/shm, HOME: docs/architecture.md, "The step's container from inside")
FORMAT_2 = "kata-drv/2"
# /3 -> /4: the same fields, but /run is the image's own /run (no tmpfs), as under Docker
FORMAT_3 = "kata-drv/3"
RECORD_FORMAT = "kata-drv-record/1"
# YAML "\ud800" escapes and non-UTF-8 file names give lone surrogates: encode them exactly
_U = "surrogatepass"


@dataclass(frozen=True, slots=True, kw_only=True)
class ServiceDrv:
    name: str  # hashed: it is the service's host name inside the step
    image: str | None
    env: tuple[tuple[str, str], ...] = ()
    commands: tuple[str, ...] = ()
    entrypoint: tuple[str, ...] = ()
    # (kind, target, timeout in ms): a readiness check decides when the step starts,
    # i.e. what state the service is in when the step sees it
    ready: tuple[str, str, int] | None = None
    secrets: tuple[str, ...] = ()  # names only, sorted
    # `user:` (issue 14); encoded only when given, so a service without one keeps its hash
    user: str | None = None
    # its declared `resources:` as :func:`limits` gives them; encoded only when one is
    # declared, so a service without limits keeps its hash
    resources: tuple[int | None, float | None, int | None] | None = None

    def to_obj(self) -> dict[str, Any]:
        out = {"commands": list(self.commands), "entrypoint": list(self.entrypoint),
               "env": [list(p) for p in self.env], "image": self.image, "name": self.name,
               "ready": list(self.ready) if self.ready is not None else None,
               "secrets": list(self.secrets)}
        if self.user is not None:
            out["user"] = self.user
        if self.resources is not None:
            out["resources"] = list(self.resources)
        return out

    @classmethod
    def from_obj(cls, s: dict[str, Any]) -> "ServiceDrv":
        ready = s.get("ready")
        return cls(name=s["name"], image=s["image"], env=tuple((k, v) for k, v in s["env"]),
                   commands=tuple(s["commands"]), entrypoint=tuple(s.get("entrypoint") or ()),
                   ready=(ready[0], ready[1], int(ready[2])) if ready else None,
                   secrets=tuple(s.get("secrets") or ()), user=s.get("user"),
                   resources=_limits_from(s.get("resources")))


@dataclass(frozen=True, slots=True, kw_only=True)
class Derivation:
    pipeline: str
    image: str | None                  # manifest digest "sha256:..."; None: tag not resolved
    commands: tuple[str, ...]
    workdir: str
    user: str | None                   # None: the image's default user
    env: tuple[tuple[str, str], ...]   # global + step, merged, sorted by name
    secrets: tuple[str, ...]           # names only, sorted; values never reach a derivation
    inputs: str | None                 # InputSet digest; None: not hashed
    key_files: str | None              # InputSet digest of cache.key_files; None: no key files
    artifacts: tuple[str, ...]
    cache_paths: tuple[str, ...]
    services: tuple[ServiceDrv, ...]
    network: str
    deps: tuple[str | None, ...]       # dependency derivation hashes, sorted
    # `reports.junit` globs, sorted (issue 14): encoded only when given, so a step without
    # them keeps its hash (the realisation carries the report they select)
    junit_reports: tuple[str, ...] = ()
    # The order the step stacks its dependencies' artifacts in (``depends_on`` order: a
    # later dependency's file wins), as positions in ``deps``; encoded only when it is not
    # ``deps``' own sorted order, so a step whose order is that keeps its hash.
    dep_order: tuple[int, ...] = ()
    # The declared `resources:` (step over settings) as :func:`limits` gives them: a pass
    # under 4 GiB is no pass under 64 MiB, and a JVM, Go or a build tool sizes its heap
    # and parallelism from the cgroup limits it sees. Host defaults (None fields) are not
    # hashed: a config means the same on every host. Encoded only when one is declared,
    # so a step without limits keeps its hash.
    resources: tuple[int | None, float | None, int | None] | None = None

    @property
    def resolved(self) -> bool:
        return (self.image is not None and self.inputs is not None
                and all(d is not None for d in self.deps)
                and all(s.image is not None for s in self.services))

    def to_obj(self, deps: Sequence[str | None] | None = None,
               dep_order: Sequence[int] | None = None) -> dict[str, Any]:
        obj = {
            "artifacts": list(self.artifacts),
            "cache_paths": list(self.cache_paths),
            "commands": list(self.commands),
            "deps": list(self.deps if deps is None else deps),
            "env": [list(p) for p in self.env],
            "image": self.image,
            "inputs": self.inputs,
            "key_files": self.key_files,
            "network": self.network,
            "pipeline": self.pipeline,
            "secrets": list(self.secrets),
            "services": [s.to_obj() for s in self.services],
            "user": self.user,
            "workdir": self.workdir,
        }
        if self.junit_reports:
            obj["junit_reports"] = list(self.junit_reports)
        if self.resources is not None:
            obj["resources"] = list(self.resources)
        order = self.dep_order if dep_order is None else dep_order
        if order:
            obj["dep_order"] = list(order)
        return obj

    def encode(self) -> bytes:
        """The canonical bytes (stored with the realisation, hashed for the key)."""
        return msgpack.packb([FORMAT, self.to_obj()], use_bin_type=True, unicode_errors=_U)

    @property
    def hash(self) -> str:
        if not self.resolved:
            raise KataError("derivation.unresolved",
                            "derivation has unresolved parts (image tag or inputs)")
        return hashlib.sha256(self.encode()).hexdigest()

    def resolved_hash(self, dep_outputs: Sequence[str]) -> str:
        """The early-cutoff key: dependency hashes replaced by their artifact-stack digests,
        ``dep_outputs`` given in stacking (``depends_on``) order: they are encoded sorted,
        with that order as positions when it is not the sorted one."""
        if not self.resolved:
            raise KataError("derivation.unresolved", "derivation has unresolved parts")
        if len(dep_outputs) != len(self.deps):
            raise KataError("derivation.outputs", f"expected {len(self.deps)} dependency "
                            f"outputs, got {len(dep_outputs)}")
        ordered, order = canonical_order(dep_outputs)
        body = msgpack.packb([RESOLVED_FORMAT, self.to_obj(ordered, order)],
                             use_bin_type=True, unicode_errors=_U)
        return hashlib.sha256(body).hexdigest()

    @classmethod
    def from_obj(cls, obj: dict[str, Any]) -> "Derivation":
        return cls(
            pipeline=obj["pipeline"], image=obj["image"], commands=tuple(obj["commands"]),
            workdir=obj["workdir"], user=obj["user"], env=tuple((k, v) for k, v in obj["env"]),
            secrets=tuple(obj["secrets"]), inputs=obj["inputs"], key_files=obj["key_files"],
            artifacts=tuple(obj["artifacts"]), cache_paths=tuple(obj["cache_paths"]),
            services=tuple(ServiceDrv.from_obj(s) for s in obj["services"]),
            network=obj["network"], deps=tuple(obj["deps"]),
            junit_reports=tuple(obj.get("junit_reports", ())),
            dep_order=tuple(obj.get("dep_order", ())),
            resources=_limits_from(obj.get("resources")))


Limits = tuple[int | None, float | None, int | None]


def limits(memory: int | None, cpus: float | None, pids: int | None) -> Limits | None:
    """The hashed form of declared resource limits: ``(memory bytes, cpus as a float,
    pids)``, None fields undeclared; None when none is declared (nothing is encoded).
    ``cpus: 2`` and ``cpus: 2.0`` are one limit, so one key."""
    if memory is None and cpus is None and pids is None:
        return None
    return (memory, None if cpus is None else float(cpus), pids)


def _limits_from(obj: Any) -> Limits | None:
    return None if obj is None else limits(obj[0], obj[1], obj[2])


def canonical_order(deps: Sequence[str | None]) -> tuple[list[str | None], tuple[int, ...]]:
    """``deps`` (in stacking order) sorted, and the stacking order as positions in the
    sorted list: ``()`` when it is the sorted order itself (equal entries keep theirs).

    >>> canonical_order(["b", "a"])
    (['a', 'b'], (1, 0))
    """
    idx = sorted(range(len(deps)), key=lambda i: (deps[i] is None, deps[i] or "", i))
    position = {i: p for p, i in enumerate(idx)}
    order = tuple(position[i] for i in range(len(deps)))
    return [deps[i] for i in idx], (() if order == tuple(range(len(deps))) else order)


def canonical_user(user: str | None, *, root_default: bool) -> str | None:
    """A ``user:`` value as it enters the key, in its shortest form: ``"1000:1000"`` is
    ``"1000"`` (the gid defaults to the uid, as the runtime runs it); for a step
    (``root_default``) root written out (``"0"``, ``"0:0"``) is None, the default it
    means. A service's None is the image's user, so there root stays ``"0"``. Docs:
    docs/config.md, ``user``."""
    if user is None:
        return None
    uid, _, gid = user.partition(":")
    short = uid if gid in ("", uid) else f"{uid}:{gid}"
    return None if root_default and short == "0" else short


def make(*, pipeline: str, image: str | None, commands: Sequence[str], workdir: str,
         user: str | None = None, env: Sequence[tuple[str, str]], secrets: Sequence[str], inputs: str | None,
         key_files: str | None, artifacts: Sequence[str], cache_paths: Sequence[str],
         services: Sequence[ServiceDrv], network: str, deps: Sequence[str | None],
         junit_reports: Sequence[str] = (), resources: Limits | None = None) -> Derivation:
    """A Derivation in canonical form (sorted env, secrets, paths, services, deps; ``deps``
    given in ``depends_on`` order, which decides whose artifacts win, kept as ``dep_order``)."""
    sorted_deps, dep_order = canonical_order(deps)
    return Derivation(
        pipeline=pipeline, image=image, commands=tuple(commands), workdir=workdir, user=user,
        env=tuple(sorted(dict(env).items())), secrets=tuple(sorted(set(secrets))),
        inputs=inputs, key_files=key_files, artifacts=tuple(sorted(set(artifacts))),
        cache_paths=tuple(sorted(set(cache_paths))),
        services=tuple(sorted(services, key=lambda s: s.name)), network=network,
        deps=tuple(sorted_deps), dep_order=dep_order,
        junit_reports=tuple(sorted(set(junit_reports))), resources=resources)


@dataclass(frozen=True, slots=True, kw_only=True)
class DerivationRecord:
    """A derivation plus what `kata why` needs to explain it and is never hashed: the
    step's name, its per-file input manifest and the names of its dependencies."""

    derivation: Derivation
    step: str = ""
    files: tuple[InputFile, ...] | None = None
    dep_names: tuple[tuple[str, str | None], ...] = ()  # (step name, drv hash)
    # the derivation format its step was keyed with: a record an older kata wrote
    # (``kata-drv/1``, no "key" field) keyed no limits, so it holds none to compare
    key_format: str = FORMAT

    def encode(self) -> bytes:
        return msgpack.packb({
            "format": RECORD_FORMAT,
            "key": self.key_format,
            "drv": self.derivation.to_obj(),
            "step": self.step,
            "files": None if self.files is None else
            [[f.path, f.digest, f.size, f.mode] for f in self.files],
            "deps": [list(p) for p in self.dep_names],
        }, use_bin_type=True, unicode_errors=_U)


def decode(data: bytes) -> DerivationRecord:
    """Either a record or bare canonical derivation bytes."""
    try:
        obj = msgpack.unpackb(data, raw=False, unicode_errors=_U)
        if isinstance(obj, list) and len(obj) == 2 and obj[0] in (FORMAT, FORMAT_3, FORMAT_2, FORMAT_1):
            return DerivationRecord(derivation=Derivation.from_obj(obj[1]), key_format=obj[0])
        if isinstance(obj, dict) and obj.get("format") == RECORD_FORMAT:
            files = obj["files"]
            return DerivationRecord(
                derivation=Derivation.from_obj(obj["drv"]), step=obj["step"],
                files=None if files is None else tuple(
                    InputFile(path=p, digest=d, size=s, mode=m) for p, d, s, m in files),
                dep_names=tuple((n, h) for n, h in obj["deps"]),
                key_format=obj.get("key", FORMAT_1))
    except (ValueError, TypeError, KeyError, msgpack.UnpackException):
        pass
    raise KataError("derivation.format", "not an encoded derivation of a known format")


# ---- diff ------------------------------------------------------------------

@dataclass(frozen=True, slots=True, kw_only=True)
class Change:
    field: str          # "image", "commands", "env", "input", "dependency", ...
    kind: str           # "added" | "removed" | "changed"
    name: str = ""      # env var, file path, dependency, command index, service
    old: Any = None
    new: Any = None
    # a changed dependency: what its change means, worked out by ``kata.why`` from the
    # dependency's own diff ("" : the generic wording)
    note: str = ""

    def __str__(self) -> str:
        what = f"{self.field} {self.name}".strip() if self.name else self.field
        if self.field == "image" and self.kind == "changed" and None in (self.old, self.new):
            return f"{what}: tag not resolved (no runtime), cannot compare image digests"
        if self.kind == "changed" and self.field == "input file":
            return f"{what}: " + "; ".join(_file_change(self.old, self.new))
        if self.field == "key format":
            return (f"{what}: {self.old} -> {self.new} (recorded by an older kata: no "
                    "result keyed the old way is reused, so the step runs again)")
        if self.kind == "changed" and self.field == "resources":
            return f"{what}: {_limits_words(self.old)} -> {_limits_words(self.new)}"
        if self.kind == "changed" and self.field == "dependency":  # keys, not outputs
            note = self.note or (f"it runs unless a result for its new key is stored or it "
                                 f"hits by early cutoff; this step still hits if "
                                 f"{self.name}'s output comes out the same (early cutoff)")
            return f"{what}: its key changed ({_short(self.old)} -> {_short(self.new)}); {note}"
        if self.kind == "changed" and self.field == "service":
            changed = [f.name for f in dataclasses.fields(self.old)
                       if getattr(self.old, f.name) != getattr(self.new, f.name)]
            return f"{what}: {', '.join(changed)} changed"
        if self.kind == "changed":
            return f"{what}: {_short(self.old)} -> {_short(self.new)}"
        if self.field in ("input file", "service"):
            return f"{what}: {self.kind}"
        return f"{what}: {self.kind} ({_short(self.new if self.kind == 'added' else self.old)})"


def _limits_words(limits: Limits | None) -> str:
    """Declared limits as the config says them: ``memory 256 MiB, cpus 1.5, pids 100``."""
    if limits is None:
        return "none declared"
    from kata.resources import format_size

    memory, cpus, pids = limits
    words = [f"memory {format_size(memory)}" if memory is not None else "",
             f"cpus {cpus:g}" if cpus is not None else "",
             f"pids {pids}" if pids is not None else ""]
    return ", ".join(w for w in words if w)


def _file_change(old: tuple[str, int], new: tuple[str, int]) -> list[str]:
    """An input file's (digest, mode) change in words: content and/or an octal mode."""
    out = []
    if old[0] != new[0]:
        out.append(f"content {_short(old[0])} -> {_short(new[0])}")
    if old[1] != new[1]:
        out.append(f"mode {_mode(old[1])} -> {_mode(new[1])}")
    return out


def _mode(mode: int) -> str:
    """A file mode as ls and git print it: ``0644``, ``0755``, ``0120000`` (a symlink)."""
    return f"0{mode:o}"


def _short(v: Any) -> str:
    """A value for a person: digests shortened, strings quoted, lists without Python syntax."""
    if v is None:
        return "none"
    if isinstance(v, str) and v.startswith("sha256:"):
        return v[:19] + "…"
    if isinstance(v, str) and len(v) == 64 and all(c in "0123456789abcdef" for c in v):
        return v[:12] + "…"
    if isinstance(v, str):
        return json.dumps(v, ensure_ascii=False)
    if isinstance(v, (tuple, list)):
        return "[" + ", ".join(_short(x) for x in v) + "]"
    return str(v)


def _limits_of(old: Derivation, new: Derivation) -> Derivation:
    """``old`` with ``new``'s declared limits (its own and its services'), which a
    ``kata-drv/1`` record never held: no change to claim there."""
    limits = {s.name: s.resources for s in new.services}
    return dataclasses.replace(old, resources=new.resources, services=tuple(
        dataclasses.replace(s, resources=limits.get(s.name, s.resources))
        for s in old.services))


def _as_record(x: Derivation | DerivationRecord) -> DerivationRecord:
    return x if isinstance(x, DerivationRecord) else DerivationRecord(derivation=x)


def _keyed(field: str, old: dict, new: dict) -> list[Change]:
    out = []
    for k in sorted(old.keys() | new.keys()):
        if k not in new:
            out.append(Change(field=field, kind="removed", name=str(k), old=old[k]))
        elif k not in old:
            out.append(Change(field=field, kind="added", name=str(k), new=new[k]))
        elif old[k] != new[k]:
            out.append(Change(field=field, kind="changed", name=str(k), old=old[k], new=new[k]))
    return out


def diff(a: Derivation | DerivationRecord, b: Derivation | DerivationRecord) -> tuple[Change, ...]:
    """What changed from `a` (previous) to `b` (current), field by field. Empty: same key."""
    ra, rb = _as_record(a), _as_record(b)
    da, db = ra.derivation, rb.derivation
    out: list[Change] = []
    if ra.key_format != rb.key_format:  # no key of one format names a result of the other
        out.append(Change(field="key format", kind="changed", old=ra.key_format,
                          new=rb.key_format))
        if FORMAT_1 in (ra.key_format, rb.key_format):  # /1 recorded no limits
            da = _limits_of(da, db)
    for f in ("pipeline", "image", "workdir", "user", "network", "resources"):
        if getattr(da, f) != getattr(db, f):
            out.append(Change(field=f, kind="changed", old=getattr(da, f), new=getattr(db, f)))
    out += _keyed("command", {f"#{i + 1}": c for i, c in enumerate(da.commands)},
                  {f"#{i + 1}": c for i, c in enumerate(db.commands)})
    out += _keyed("env", dict(da.env), dict(db.env))
    out += _keyed("secret", {s: s for s in da.secrets}, {s: s for s in db.secrets})
    out += _keyed("artifact", {p: p for p in da.artifacts}, {p: p for p in db.artifacts})
    out += _keyed("cache path", {p: p for p in da.cache_paths}, {p: p for p in db.cache_paths})
    out += _keyed("service", {s.name: s for s in da.services}, {s.name: s for s in db.services})
    if da.inputs != db.inputs:
        if ra.files is not None and rb.files is not None:
            fa = {f.path: (f.digest, f.mode) for f in ra.files}
            fb = {f.path: (f.digest, f.mode) for f in rb.files}
            out += _keyed("input file", fa, fb)
        else:
            out.append(Change(field="inputs", kind="changed", old=da.inputs, new=db.inputs))
    if da.key_files != db.key_files:
        out.append(Change(field="key_files", kind="changed", old=da.key_files, new=db.key_files))
    if da.deps != db.deps:
        na, nb = dict(ra.dep_names), dict(rb.dep_names)
        if na and nb and set(na.values()) == set(da.deps) and set(nb.values()) == set(db.deps):
            out += _keyed("dependency", na, nb)
        else:
            out += _keyed("dependency", {d: d for d in da.deps if d}, {d: d for d in db.deps if d})
    elif da.dep_order != db.dep_order:  # same dependencies, stacked in another order
        names = dict((h, n) for n, h in rb.dep_names)
        def order(d: Derivation) -> str:
            return ", ".join(names.get(d.deps[i], d.deps[i] or "?")
                             for i in (d.dep_order or range(len(d.deps))))
        out.append(Change(field="dependency order", kind="changed", old=order(da), new=order(db)))
    return tuple(out)
