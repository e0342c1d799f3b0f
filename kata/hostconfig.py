"""Kata's host config: ``/etc/kata/config.yaml``, or the file ``$KATA_CONFIG`` names.

The host config belongs to the machine (the CI server), never to a repository: nothing in a
pushed ``.kata-ci.yaml`` can change it. One loader reads it (this module: path, YAML, the
top-level keys); each section is parsed by the module that owns it:

    containerd, offline, registries   kata.runtimes.containerd.config (RuntimeConfig)
    protected                         kata.trust (which refs are protected)
    remote                            kata.remote.config (the remote cache, REAPI)
    worker                            kata.executor.admit (what `kata worker` accepts)

Unknown keys are errors (a typo must not silently do nothing). A missing default file means
every default; a missing file named by ``$KATA_CONFIG`` (or an explicit path) is an error.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from kata.errors import KataError, Position

if TYPE_CHECKING:
    import yaml

DEFAULT_CONFIG = "/etc/kata/config.yaml"
SECTIONS = frozenset({"containerd", "offline", "registries", "protected", "remote", "worker"})


@dataclass(frozen=True, slots=True, kw_only=True)
class HostConfig:
    """The host config as read: its path ("" when no file was there), the top-level mapping,
    and where each key and value sits in the file (for ``file:line:column`` errors).

    marks: key path (``("protected", "branches", 0)``) → (line, column), 1-based.
    """

    path: str = ""
    doc: Mapping[str, Any] = field(default_factory=dict)
    marks: Mapping[tuple[Any, ...], tuple[int, int]] = field(default_factory=dict)

    def section(self, name: str) -> Any:
        """The raw value of a top-level key (None when absent)."""
        assert name in SECTIONS, name
        return self.doc.get(name)

    def has(self, name: str) -> bool:
        return name in self.doc

    def position(self, *keys: Any) -> Position | None:
        """Where ``keys`` (a path into the document) is written, or None (no file, no key)."""
        for n in range(len(keys), 0, -1):
            found = self.marks.get(tuple(keys[:n]))
            if found is not None:
                return Position(self.path, *found)
        return Position(self.path, 1, 1) if self.path else None

    def error(self, reason: str, message: str, *keys: Any) -> KataError:
        """A config error (exit 2) placed at ``keys`` in the file."""
        return KataError(reason, message, position=self.position(*keys), obj=self.path or None)


def config_path(path: str | os.PathLike[str] | None = None) -> tuple[Path, bool]:
    """(the host config's path, whether it was asked for explicitly)."""
    explicit = path is not None or "KATA_CONFIG" in os.environ
    return Path(path if path is not None else os.environ.get("KATA_CONFIG", DEFAULT_CONFIG)), explicit


def load_host_config(path: str | os.PathLike[str] | None = None) -> HostConfig:
    """Read the host config (see the module docstring).

    KataError (exit 2): config.not_found (an explicit file is missing), config.unreadable,
    config.bad_yaml, config.bad_value (the top level is not a mapping),
    config.unknown_key (a top-level key no section owns).
    """
    p, explicit = config_path(path)
    try:
        data = p.read_bytes()
    except FileNotFoundError:
        if explicit:
            raise KataError("config.not_found", f"kata config {p} does not exist",
                            obj=str(p)) from None
        return HostConfig()
    except OSError as err:
        raise KataError("config.unreadable", f"cannot read kata config {p}: {err.strerror}",
                        obj=str(p)) from None
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as err:
        line = data.count(b"\n", 0, err.start) + 1
        col = err.start - (data.rfind(b"\n", 0, err.start) + 1) + 1
        raise KataError("config.bad_yaml", f"{p}:{line}:{col}: the file is not valid UTF-8",
                        obj=str(p)) from None
    import yaml  # here: a host without a config file (most) never imports the parser

    try:
        node = yaml.compose(text, Loader=yaml.SafeLoader)
        doc = yaml.safe_load(text)
    except yaml.MarkedYAMLError as err:
        mark = err.problem_mark or err.context_mark
        where = f":{mark.line + 1}:{mark.column + 1}" if mark is not None else ""
        what = " ".join(x for x in (err.context, err.problem) if x)
        raise KataError("config.bad_yaml", f"{p}{where}: YAML syntax error: {what}",
                        obj=str(p)) from None
    except yaml.YAMLError as err:  # a character YAML does not allow
        raise KataError("config.bad_yaml", f"{p}: YAML syntax error: "
                        + " ".join(str(err).split()), obj=str(p)) from None
    marks: dict[tuple[Any, ...], tuple[int, int]] = {}
    if node is not None:
        _marks(node, (), marks)
    config = HostConfig(path=str(p), doc=doc if isinstance(doc, dict) else {}, marks=marks)
    if doc is None:
        return config
    if not isinstance(doc, dict):
        raise config.error("config.bad_value", "the kata config must be a mapping")
    for key in doc:
        if key not in SECTIONS:
            raise config.error("config.unknown_key", f"unknown key {key!r} in the kata config "
                               f"(expected one of {', '.join(sorted(SECTIONS))})", key)
    return config


def check_keys(obj: Any, allowed: set[str] | frozenset[str], where: str,
               path: str) -> dict[str, Any]:
    """``obj`` as a mapping whose keys are all in ``allowed`` (None: empty).

    KataError config.bad_value (not a mapping), config.unknown_key.
    """
    if obj is None:
        return {}
    if not isinstance(obj, dict):
        raise KataError("config.bad_value", f"{path}: {where} must be a mapping", obj=path)
    unknown = set(obj) - set(allowed)
    if unknown:
        raise KataError("config.unknown_key",
                        f"{path}: unknown key {sorted(map(str, unknown))[0]!r} in {where}",
                        obj=path)
    return obj


def _marks(node: yaml.Node, at: tuple[Any, ...], out: dict) -> None:
    import yaml

    out.setdefault(at, (node.start_mark.line + 1, node.start_mark.column + 1))
    if isinstance(node, yaml.MappingNode):
        for key, value in node.value:
            name = key.value if isinstance(key, yaml.ScalarNode) else None
            out.setdefault(at + (name,), (key.start_mark.line + 1, key.start_mark.column + 1))
            _marks(value, at + (name,), out)
    elif isinstance(node, yaml.SequenceNode):
        for i, item in enumerate(node.value):
            _marks(item, at + (i,), out)
