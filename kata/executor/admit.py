"""What a ``kata worker`` accepts: every leased ``Action`` is checked here before anything
of it is written to the worker's disk or run.

A worker takes work from a scheduler that anyone who reaches it can send an Action to, not
only ``kata run`` (the Execution service is open to every client of the instance). So the
worker trusts nothing in an Action that Kata's client would not have written (``action.py``),
and REAPI's own rule applies: a worker must not run an action whose platform it cannot
satisfy. Each check raises ``KataError("remote.bad_action")`` (or ``worker.policy`` for
what this worker's own config refuses) naming what is wrong; the lease then completes with
``INVALID_ARGUMENT`` and that message, which BuildGrid does not retry and the client prints.

- ``check_action``: the Action's and Command's digests, argv, environment (names a shell
  can hold, unique, sorted as REAPI asks, no NUL), working directory (``ws``), output
  paths (only Kata's four), platform properties (only Kata's keys, each once, sorted,
  values of their form; the Action's and the Command's the same when both are set).
- ``check_input_root``: the root holds exactly ``ws/`` and ``kata-spec.json``; every name
  one path component, unique and sorted; every digest well formed; the tree, expanded
  (a Directory may be named many times: 2^40 paths from 40 levels), at most
  ``MAX_INPUT_ENTRIES`` entries, within the worker's free disk and its longest path
  within ``PATH_MAX``; no cycle.
- ``check_spec``: ``kata-spec.json`` against the platform (image, network, limits) and
  against what the loader allows a ``.kata-ci.yaml`` (workdir, user, hostname, images
  pinned by digest, service names and readiness probes); ``network: host`` only where the
  worker's host config says ``worker.allow_host_network: true`` (``WorkerPolicy``).

All pure but ``WorkerPolicy.from_host_config`` (reads the host config).
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass
from urllib.parse import urlsplit

from kata.errors import KataError
from kata.remote._api.build.bazel.remote.execution.v2 import remote_execution_pb2 as re_pb2

from . import action as act

#: the platform keys a Kata action carries (action.platform), each at most once
REQUIRED_PROPERTIES = ("ISA", "OSFamily", "container-image", "network")
KNOWN_PROPERTIES = frozenset((*REQUIRED_PROPERTIES, "memory", "cpus", "pids"))
OUTPUT_PATHS = frozenset((act.WORKSPACE_DIR, act.SERVICES_DIR, act.SPECIAL_FILE,
                          act.ERROR_FILE))
NETWORKS = ("none", "default", "host")
#: entries of an input root once every Directory is counted as often as it is named
MAX_INPUT_ENTRIES = 1_000_000
PATH_MAX = 4096  # bytes of an absolute path the kernel takes (linux/limits.h)
_HASH = re.compile(r"[0-9a-f]{64}")
_HASHES = re.compile(r"[0-9a-f]*")  # many hashes joined (their count checked apart)
_ENV_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]*", re.ASCII)
_NAME = re.compile(r"[A-Za-z0-9_][A-Za-z0-9_.-]*", re.ASCII)  # kata.labels.is_step_name
_HOSTNAME = re.compile(r"[A-Za-z0-9]([A-Za-z0-9-]{0,61}[A-Za-z0-9])?", re.ASCII)
_USER = re.compile(r"([0-9]{1,10})(:([0-9]{1,10}))?", re.ASCII)
_IMAGE = re.compile(r"[a-z0-9][^@\s]*@sha256:[0-9a-f]{64}", re.ASCII)
_INT = re.compile(r"[1-9][0-9]{0,18}", re.ASCII)
_CPUS = re.compile(r"(0|[1-9][0-9]{0,3})(\.[0-9]{1,6})?", re.ASCII)
MAX_ID = 4294967294  # a uid or gid (2^32 - 2; -1 means "unchanged" to chown)
MAX_TIMEOUT = 366 * 86400.0


@dataclass(frozen=True, slots=True, kw_only=True)
class WorkerPolicy:
    """What this worker's host config lets an action do beyond the local sandbox.

    allow_host_network: run ``network: host`` steps in the worker's own network
    namespace (every service on its 127.0.0.1, its cloud metadata address); default
    False: such an action is refused, whoever sent it.
    allow_private_registries: pull an action's images from any address; default False:
    only public addresses and the registries its host config declares (``registries:``),
    as an untrusted run's pulls (``registry.ConfinedBackend``), so an Action cannot make
    the worker send requests to its own network's services by naming them as a registry."""

    allow_host_network: bool = False
    allow_private_registries: bool = False

    @classmethod
    def from_host_config(cls, config=None) -> "WorkerPolicy":  # noqa: ANN001
        """The ``worker:`` section of the host config (``kata.hostconfig``; read when
        ``config`` is None). KataError config.* (exit 2) for an unknown key or a value
        that is not a boolean, at its file:line:column."""
        from kata.hostconfig import load_host_config

        config = config if config is not None else load_host_config()
        section = config.section("worker")
        if section is None:
            return cls()
        if not isinstance(section, dict):
            raise config.error("config.bad_value", f"worker: must be a mapping of "
                               f"allow_host_network and allow_private_registries (booleans), "
                               f"not {type(section).__name__} {section!r}", "worker")
        keys = ("allow_host_network", "allow_private_registries")
        for key in section:
            if key not in keys:
                raise config.error("config.unknown_key", f"unknown key {key!r} in worker: "
                                   f"(expected {' or '.join(keys)})", "worker", key)
        values = {}
        for key in keys:
            values[key] = section.get(key, False)
            if not isinstance(values[key], bool):
                raise config.error("config.bad_value", f"worker.{key} must be true or false, "
                                   f"not {values[key]!r}", "worker", key)
        return cls(**values)


def _bad(message: str) -> KataError:
    return KataError("remote.bad_action", f"refused: {message} (not an action kata makes)",
                     exit_code=1)


def check_digest(digest: re_pb2.Digest, what: str) -> None:
    """A digest Kata could have made: 64 lowercase hex, size 0 to 2^62."""
    if not _HASH.fullmatch(digest.hash) or not 0 <= digest.size_bytes <= 1 << 62:
        raise _bad(f"{what} has digest {digest.hash[:80]!r}/{digest.size_bytes}, not a "
                   "SHA-256 in lowercase hex with a size of 0 or more")


def platform_properties(platform: re_pb2.Platform, where: str) -> dict[str, str]:
    """name -> value of a Kata action's platform, each checked (see the module doc)."""
    names = [p.name for p in platform.properties]
    props: dict[str, str] = {}
    for p in platform.properties:
        if p.name not in KNOWN_PROPERTIES:
            raise _bad(f"{where} platform property {p.name[:80]!r} is not one this worker "
                       f"can satisfy (it knows {', '.join(sorted(KNOWN_PROPERTIES))})")
        if p.name in props:
            raise _bad(f"{where} platform property {p.name!r} is given twice")
        props[p.name] = p.value
    if names != sorted(names):
        raise _bad(f"{where} platform properties are not sorted by name (REAPI)")
    for name in REQUIRED_PROPERTIES:
        if name not in props:
            raise _bad(f"{where} platform has no {name} property")
    if props["OSFamily"] != act.OS_FAMILY or props["ISA"] != act.ISA:
        raise _bad(f"{where} platform asks for OSFamily={props['OSFamily'][:40]!r} "
                   f"ISA={props['ISA'][:40]!r}; this worker is {act.OS_FAMILY} {act.ISA}")
    image = props["container-image"]
    if not image.startswith("docker://") or not _IMAGE.fullmatch(image[len("docker://"):]):
        raise _bad(f"container-image {image[:200]!r} is not docker://NAME@sha256:<64 hex> "
                   "(an image pinned by digest in a registry; no path, no tag)")
    if props["network"] not in NETWORKS:
        raise _bad(f"network {props['network'][:40]!r} is not one of {', '.join(NETWORKS)}")
    for name, form in (("memory", _INT), ("pids", _INT), ("cpus", _CPUS)):
        if name in props and not form.fullmatch(props[name]):
            raise _bad(f"{name} {props[name][:40]!r} is not a positive number of the form "
                       "kata writes")
    return props


def check_action(action: re_pb2.Action, command: re_pb2.Command) -> dict[str, str]:
    """Check a leased Action and its Command; return the platform properties."""
    # the scheduler matches the Action's platform, or the Command's when the Action has
    # none (REAPI v2.2; BuildGrid): both are checked, and must agree
    found = [platform_properties(p, where) for where, p in (
        ("the Action's", action.platform), ("the Command's", command.platform))
        if p.properties]
    if not found:
        raise _bad("the action names no platform")
    if len(found) == 2 and found[0] != found[1]:
        raise _bad("the Action's platform differs from its Command's")
    props = found[0]
    if not command.arguments or any("\0" in a for a in command.arguments):
        raise _bad("the command line is empty or holds a NUL byte")
    names = [e.name for e in command.environment_variables]
    for e in command.environment_variables:
        if not _ENV_NAME.fullmatch(e.name) or "\0" in e.value:
            raise _bad(f"environment variable {e.name[:80]!r} is not a name a shell can "
                       "hold, or its value holds a NUL byte")
    if len(set(names)) != len(names) or names != sorted(names):
        raise _bad("environment variables are not unique and sorted by name (REAPI)")
    if command.working_directory != act.WORKSPACE_DIR:
        raise _bad(f"working_directory {command.working_directory[:200]!r} is not "
                   f"{act.WORKSPACE_DIR!r} (the workspace, mounted at the step's workdir)")
    outputs = [*command.output_paths, *command.output_files, *command.output_directories]
    for path in outputs:
        if path not in OUTPUT_PATHS:
            raise _bad(f"output path {path[:200]!r} is not one a kata worker sends back "
                       f"({', '.join(sorted(OUTPUT_PATHS))})")
    return props


def check_input_root(root: re_pb2.Digest, directories: dict[str, re_pb2.Directory], *,
                     dest_len: int, free_bytes: int) -> None:
    """The input root ``root`` (its Directory messages by hash) is one a worker may write
    under a directory whose path is ``dest_len`` bytes long, with ``free_bytes`` of disk."""
    top = directories.get(root.hash)
    if top is None:
        raise _bad("the input root's Directory is missing")
    kinds = {**{d.name: "dir" for d in top.directories}, **{f.name: "file" for f in top.files},
             **{s.name: "symlink" for s in top.symlinks}}
    if kinds != {act.WORKSPACE_DIR: "dir", act.SPEC_FILE: "file"}:
        raise _bad(f"the input root holds {sorted(kinds.items())!r}; a kata action's holds "
                   f"exactly the directory {act.WORKSPACE_DIR}/ and the file {act.SPEC_FILE}")
    # (entries, bytes, longest path below) of each Directory, children first; iterative
    # (a tree may be deeper than Python recurses) and counted per name (a Directory
    # named twice is written twice). Each Directory is read once, its fields in bulk:
    # a 50,000-file root costs tens of milliseconds, not a call per entry
    sizes: dict[str, tuple[int, int, int]] = {}
    on_path: set[str] = set()
    todo: list[tuple[str, bool]] = [(root.hash, False)]
    while todo:
        h, done = todo.pop()
        if h in sizes and not done:
            continue
        directory = directories.get(h)
        if directory is None:
            raise KataError("remote.blob_missing", f"the input root lacks directory {h}",
                            obj=h, exit_code=1)
        if not done:
            if h in on_path:
                raise _bad(f"directory {h} contains itself")
            _check_directory(h, directory)
            on_path.add(h)
            todo.append((h, True))
            todo.extend((d.digest.hash, False) for d in directory.directories
                        if d.digest.hash not in sizes)
            continue
        on_path.discard(h)
        entries = len(directory.files) + len(directory.symlinks) + len(directory.directories)
        size = sum([f.digest.size_bytes for f in directory.files])
        deepest = max([len(n.name.encode()) for n in directory.files]
                      + [len(n.name.encode()) for n in directory.symlinks] + [-1]) + 1
        for d in directory.directories:
            if d.digest.hash in on_path:
                raise _bad(f"directory {h} contains itself")
            n, b, p = sizes[d.digest.hash]
            entries, size = entries + n, size + b
            deepest = max(deepest, len(d.name.encode()) + 1 + p)
            if entries > MAX_INPUT_ENTRIES:
                raise _bad(f"the input root has more than {MAX_INPUT_ENTRIES:,} entries once "
                           "each directory is counted as often as it is named")
        sizes[h] = (entries, size, max(deepest, 0))
    entries, size, deepest = sizes[root.hash]
    if entries > MAX_INPUT_ENTRIES:
        raise _bad(f"the input root has more than {MAX_INPUT_ENTRIES:,} entries once each "
                   "directory is counted as often as it is named")
    if dest_len + deepest >= PATH_MAX:
        raise _bad(f"a path of the input root is {deepest} bytes long: written on this "
                   f"worker it would pass the {PATH_MAX}-byte path limit")
    if size > free_bytes:
        raise KataError("worker.no_space", f"the input root holds {size:,} bytes of files "
                        f"and this worker has {free_bytes:,} free: refused", exit_code=1)


def _check_directory(h: str, directory: re_pb2.Directory) -> None:
    """One Directory of an input root: names one path component each, unique, sorted
    per kind (REAPI); digests well formed; link targets not empty and without NUL."""
    kinds = [[n.name for n in directory.directories], [n.name for n in directory.files],
             [n.name for n in directory.symlinks]]
    names = [*kinds[0], *kinds[1], *kinds[2]]
    joined = "\x01".join(names)
    if "/" in joined or "\0" in joined or {"", ".", ".."} & set(names) \
            or len(set(names)) != len(names):
        bad = next((n for n in names if n in ("", ".", "..") or "/" in n or "\0" in n
                    or names.count(n) > 1), "?")
        raise _bad(f"directory {h} names {bad[:80]!r}, which is not one path component or "
                   "not unique in its directory (REAPI names must be both)")
    if any(k != sorted(k) for k in kinds):
        raise _bad(f"the entries of directory {h} are not sorted by name (REAPI)")
    digests = [n.digest for n in directory.directories] + [n.digest for n in directory.files]
    if digests:
        hashes = "".join([d.hash for d in digests])
        sizes = [d.size_bytes for d in digests]
        if len(hashes) != 64 * len(digests) or not _HASHES.fullmatch(hashes) \
                or min(sizes) < 0 or max(sizes) > 1 << 62:
            for d, name in zip(digests, [*kinds[0], *kinds[1]]):
                check_digest(d, f"entry {name[:80]!r}")
    for t in [s.target for s in directory.symlinks]:
        if not t or "\0" in t:
            raise _bad(f"a symlink of directory {h} has an empty target or a NUL byte")


def check_spec(spec, props: dict[str, str], policy: WorkerPolicy,  # noqa: ANN001
               action: re_pb2.Action | None = None) -> None:
    """``spec`` (the ``StepSpec`` ``action.read_spec`` made of ``kata-spec.json``) agrees
    with the platform ``props`` and is one the loader would have made; ``network: host``
    only under ``policy.allow_host_network``."""
    from kata.loader import workdir_problem

    if not isinstance(spec.image, str) or props["container-image"] != "docker://" + spec.image:
        raise _bad(f"kata-spec.json's image {str(spec.image)[:200]!r} is not the platform's "
                   f"container-image {props['container-image'][:200]!r}")
    if spec.network != props["network"]:
        raise _bad(f"kata-spec.json's network {str(spec.network)[:40]!r} is not the "
                   f"platform's {props['network']!r}")
    if spec.network == "host" and not policy.allow_host_network:
        raise KataError("worker.policy", "refused: network: host would run the step in "
                        "this worker's own network namespace, and its host config does not "
                        "allow that (worker.allow_host_network: true in the worker's "
                        "/etc/kata/config.yaml; SECURITY.md)", exit_code=1)
    r = spec.resources
    given = {"memory": r.memory, "cpus": r.cpus, "pids": r.pids}
    for name, value in given.items():
        if value is not None and (isinstance(value, bool) or not isinstance(value, (int, float))
                                  or (name != "cpus" and not isinstance(value, int))):
            raise _bad(f"kata-spec.json's {name} {value!r} is not a number")
        wanted = props.get(name)
        shown = None if value is None else (f"{value:g}" if name == "cpus" else str(value))
        if shown != wanted:
            raise _bad(f"kata-spec.json's {name} {shown} is not the platform's {wanted}")
    from kata.resources import MAX_SIZE

    if r.memory is not None and r.memory > MAX_SIZE:
        raise _bad(f"memory {r.memory} is over {MAX_SIZE}")
    problem = workdir_problem(spec.workdir) if isinstance(spec.workdir, str) else "not a string"
    if problem:
        raise _bad(f"workdir {str(spec.workdir)[:200]!r} {problem}")
    _check_user(spec.user, "the step")
    if not isinstance(spec.hostname, str) or not _HOSTNAME.fullmatch(spec.hostname):
        raise _bad(f"hostname {str(spec.hostname)[:80]!r} is not a host name")
    timeout = spec.timeout
    if timeout is not None and (isinstance(timeout, bool) or not isinstance(timeout, (int, float))
                                or not math.isfinite(timeout) or not 0 < timeout <= MAX_TIMEOUT):
        raise _bad(f"timeout {timeout!r} is not a number of seconds over 0 and at most a year")
    names: set[str] = set()
    for s in spec.services:
        if not isinstance(s.name, str) or not _NAME.fullmatch(s.name) \
                or s.name.lower() in names:
            raise _bad(f"service name {str(s.name)[:80]!r} is not a step name, or is "
                       "given twice")
        names.add(s.name.lower())
        if not isinstance(s.image, str) or not _IMAGE.fullmatch(s.image):
            raise _bad(f"service {s.name}'s image {str(s.image)[:200]!r} is not "
                       "NAME@sha256:<64 hex>")
        problem = "not a string" if not isinstance(s.workdir, str) else \
            workdir_problem(s.workdir) if s.workdir != "/" else ""  # "/": the image's
        if problem:
            raise _bad(f"service {s.name}'s workdir {s.workdir!r} {problem}")
        if s.user != "":  # the image's user
            _check_user(s.user, f"service {s.name}")
        if any(not isinstance(a, str) or "\0" in a for a in s.argv) or any(
                not isinstance(k, str) or not _ENV_NAME.fullmatch(k) or not isinstance(v, str)
                or "\0" in v for k, v in s.env.items()):
            raise _bad(f"service {s.name}'s environment or command is not strings "
                       "without NUL")
        if s.resources.memory is not None and (not isinstance(s.resources.memory, int)
                                               or s.resources.memory > MAX_SIZE):
            raise _bad(f"service {s.name}'s memory {s.resources.memory!r} is not a number of "
                       f"bytes up to {MAX_SIZE}")
        if s.ready is not None:
            _check_ready(s.name, s.ready)


def _check_user(user, who: str) -> None:  # noqa: ANN001
    if user is None:
        return
    m = _USER.fullmatch(user) if isinstance(user, str) else None
    if m is None or int(m.group(1)) > MAX_ID or (m.group(3) and int(m.group(3)) > MAX_ID):
        raise _bad(f"{who}'s user {str(user)[:80]!r} is not UID[:GID] (at most {MAX_ID})")


def _check_ready(name: str, ready) -> None:  # noqa: ANN001
    if ready.kind not in ("tcp", "http", "command") or not isinstance(ready.target, str) \
            or "\0" in ready.target:
        raise _bad(f"service {name}'s readiness {ready.kind!r} is not tcp, http or command")
    if ready.kind == "tcp" and not (ready.target.isdigit() and 0 < int(ready.target) < 65536):
        raise _bad(f"service {name}'s tcp readiness port {ready.target[:40]!r} is not a port")
    if ready.kind == "http":  # probed from inside the pod's network namespace
        try:
            ok = bool(re.match(r"https?://[^/]", ready.target))
            urlsplit(ready.target).port  # noqa: B018 - raises when out of range
        except ValueError:
            ok = False
        if not ok:
            raise _bad(f"service {name}'s http readiness {ready.target[:200]!r} is not an "
                       "http:// or https:// URL")
    for field in ("timeout", "interval"):
        value = getattr(ready, field)
        if isinstance(value, bool) or not isinstance(value, (int, float)) \
                or not math.isfinite(value) or not 0 < value <= MAX_TIMEOUT:
            raise _bad(f"service {name}'s readiness {field} {value!r} is not a number of "
                       "seconds over 0")
