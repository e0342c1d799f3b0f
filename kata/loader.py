"""Load `.kata-ci.yaml` into the frozen model (`kata.model`), rejecting bad input clearly.

pyyaml's C composer (`CSafeLoader`) builds the node graph, which keeps the line
and column of every node; we walk it ourselves instead of constructing Python
objects, so duplicate keys (which pyyaml would silently drop) and every type,
duration, image or reference error point at file:line:column. Every failure is a
`KataError` with a reason (`config.*`) and a `Position`; nothing else escapes.
"""

from __future__ import annotations

import difflib
import functools
import gc
import os
import re
from dataclasses import replace
from pathlib import Path
from typing import Any, Callable

import yaml
from yaml.nodes import MappingNode, Node, ScalarNode, SequenceNode

from kata import conditions
from kata import matrix as mx
from kata.configfile import CONFIG_NAME, MAX_CONFIG, find_config, read_config  # noqa: F401
from kata.errors import KataError, Position
from kata.graph import find_cycle, topo_order
from kata.inputs import check_globs
from kata.labels import is_step_name
from kata.resources import MAX_CPUS, MAX_PIDS, MIN_CPUS, Resources, parse_memory
from kata.model import (CONTEXT_VARS, NETWORK_MODES, CacheSpec, Duration, ImageRef, Pipeline,
                        Ready, Retry, Service, Settings, Step, Trigger, is_env_name)

_Loader = getattr(yaml, "CSafeLoader", yaml.SafeLoader)
_STR = "tag:yaml.org,2002:str"
_INT = "tag:yaml.org,2002:int"
_FLOAT = "tag:yaml.org,2002:float"
_BOOL = "tag:yaml.org,2002:bool"
_NULL = "tag:yaml.org,2002:null"
_MERGE = "tag:yaml.org,2002:merge"
#: Keys that merges (``<<``) may bring into the mappings of one file, in all: a file of
#: a few KiB whose anchors merge anchors that merge anchors would otherwise hold the server
#: (which loads a pushed file as root, before any sandbox) for hours. A 10,000-step file
#: merging a 20-key base into every step merges 200,000.
MERGE_LIMIT = 1 << 22
_TEXTUAL = frozenset((_STR, _INT, _FLOAT))

# container paths a step's workdir must not be, or be under: the kernel's views
# (writable /proc or /sys entries, devices) and kata's own mounts
FORBIDDEN_WORKDIRS = ("/proc", "/sys", "/dev", "/run/kata")
#: Where an image keeps its shell and the libraries it loads: the workspace mounted on one
#: of them (not below) would hide ``/bin/sh``, and no command could start.
SHELL_DIRS = ("/bin", "/lib", "/lib64", "/usr", "/usr/bin", "/usr/lib", "/usr/lib64")


#: What to write instead of a workspace path starting with ``~`` or ``$`` (nothing expands
#: them: a directory literally named ``~`` would be kept), per key.
CACHE_HOME = ("cache paths are relative to the workspace (a directory literally named '~' or "
              "'$...' would be saved); point the tool's cache into the workspace instead, e.g. "
              "`npm ci --cache .npm` with paths: ['.npm/'], or env PIP_CACHE_DIR: '.cache/pip' "
              "with paths: ['.cache/pip/']")
ARTIFACTS_HOME = ("artifacts are paths relative to the workspace (the step's working "
                  "directory, /workspace by default): have the tool write there, e.g. "
                  "`python3 -m build --outdir dist` with artifacts: ['dist/']")
REPORTS_HOME = ("report paths are relative to the workspace (the step's working directory, "
                "/workspace by default): have the test runner write there, e.g. "
                "`pytest --junitxml=reports/junit.xml` with junit: ['reports/*.xml']")


def repository_path_problem(text: str, *, glob: bool, anchor: bool = False) -> str:
    """Why ``text`` (an ``artifacts`` / ``cache.paths`` entry, or with ``glob`` an
    ``inputs`` / ``cache.key_files`` gitignore pattern) may reach outside the
    repository or workspace, or "" when it stays inside.

    The rule: relative, and no ``..`` component anywhere (before normalising, so
    ``a/../../x`` is refused even where it would fold back inside). A leading ``!``
    (gitignore negation) is not part of the path. With ``anchor`` (``inputs``,
    ``cache.key_files``), one leading ``/`` is gitignore's anchor at the repository root (``/configure``, ``/*.h``: the top-level
    files only; without it a pattern with no other ``/`` matches at any depth), not an
    absolute path: patterns only ever select files of the repository.
    """
    path = text[1:] if glob and text.startswith("!") else text
    if "\0" in path:
        return "contains a NUL byte"
    if anchor and path.startswith("/") and not path.startswith("//"):
        path = path[1:]
    if path.startswith("/"):
        return "is absolute: paths are relative to the repository"
    if ".." in path.split("/"):
        return "contains '..': paths must stay inside the repository"
    return ""


def workdir_problem(text: str) -> str:
    """Why ``text`` is not an acceptable container working directory ("" if it is).

    The rule: absolute; no ``.`` or ``..`` component (``/workspace/../../proc`` is
    refused as written, not resolved); clean, i.e. written as it is meant (no empty
    component from ``//`` and no trailing ``/``: ``/workspace//x`` and ``/workspace/x/``
    name ``/workspace/x`` but would hash as other keys); not ``/`` (the workspace is
    bind-mounted there, it would hide the image's root); not ``/proc``, ``/sys``,
    ``/dev``, ``/run/kata`` nor anything under them (FORBIDDEN_WORKDIRS); not one of
    SHELL_DIRS itself (below them is fine).
    """
    if "\0" in text:
        return "contains a NUL byte"
    if not text.startswith("/"):
        return f"must be an absolute path, got {text!r}"
    parts = [p for p in text.split("/") if p]
    if any(p in (".", "..") for p in parts):
        return f"must not contain '.' or '..' components, got {text!r}"
    norm = "/" + "/".join(parts)
    if norm == "/":
        return "must not be '/': the workspace is mounted there and would hide the image's files"
    for bad in FORBIDDEN_WORKDIRS:
        if norm == bad or norm.startswith(bad + "/"):
            return f"must not be {bad} or under it (kernel or kata mount), got {text!r}"
    if norm in SHELL_DIRS:
        return (f"must not be {norm}: the workspace mounted there would hide the image's "
                f"{norm} (the shell, /bin/sh, with it); use a directory of its own, e.g. "
                f"/workspace or {norm}/src")
    if text != norm:
        return f"must be a clean path (no '//', no trailing '/'): write {norm!r}, not {text!r}"
    return ""


#: What a step or service name may be (kata.labels.is_step_name), in words.
NAME_RULE = "use ASCII letters, digits, '_', '-' and '.', starting with a letter, a digit or '_'"

#: Top-level keys starting with this are ignored (as Compose does): `x-base: &base {...}`.
EXTENSION_PREFIX = "x-"
_EXPAND = re.compile(r"\$\$|\$\{([A-Za-z_][A-Za-z0-9_]*)\}")
TOP_KEYS = ("pipeline", "settings", "env", "steps", "triggers")
SETTINGS_KEYS = ("timeout", "max_parallel", "fail_fast", "cache_enabled", "resources")
STEP_KEYS = ("name", "image", "commands", "depends_on", "artifacts", "services", "env",
             "timeout", "only", "cache", "secrets", "inputs", "workdir", "user", "network",
             "when", "description", "resources", "matrix", "allow_failure", "retry",
             "context", "reports")
REPORTS_KEYS = ("junit",)
RETRY_KEYS = ("max", "on")
MATRIX_KEYS = ("exclude", "include")  # besides the variables themselves
SERVICE_KEYS = ("name", "image", "env", "commands", "entrypoint", "ready", "secrets",
                "resources", "user")
RESOURCES_KEYS = ("memory", "cpus", "pids")
READY_KEYS = ("tcp", "http", "command", "timeout")
CACHE_KEYS = ("paths", "key_files", "enabled")
ONLY_KEYS = ("branches", "tags", "paths", "events")
TRIGGER_KEYS = ("event", "branches", "paths", "actions", "pattern")


def load_pipeline(path: str | os.PathLike) -> Pipeline:
    p = Path(path)
    return load_bytes(read_config(p), str(p))


def load_bytes(data: bytes, file: str) -> Pipeline:
    """Parse a config from its bytes (UTF-8; config.yaml_syntax otherwise); ``file`` is
    only used in positions."""
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as err:
        line = data.count(b"\n", 0, err.start) + 1
        col = err.start - (data.rfind(b"\n", 0, err.start) + 1) + 1
        raise KataError("config.yaml_syntax", "the file is not valid UTF-8",
                        position=Position(file=file, line=line, column=col)) from None
    return load_text(text, file=file)


def load_text(text: str, file: str = "<string>") -> Pipeline:
    """Parse a config from text; `file` is only used in positions.

    The cyclic garbage collector is paused meanwhile: the node graph of a 10,000-step
    file is a few hundred thousand objects, none garbage until the walk ends, and full
    collections over them made loading grow faster than the file (measured: 6.6 s vs
    3.1 s for 10,000 steps). Whatever cycles remain are collected afterwards.
    """
    enabled = gc.isenabled()
    gc.disable()
    try:
        return _load_text(text, file)
    finally:
        if enabled:
            gc.enable()


def _load_text(text: str, file: str) -> Pipeline:
    if text.startswith("\ufeff"):
        text = text[1:]
    try:
        root = yaml.compose(text, Loader=_Loader)
    except yaml.MarkedYAMLError as err:
        mark = err.problem_mark or err.context_mark
        pos = Position(file=file, line=mark.line + 1, column=mark.column + 1) if mark else \
            Position(file=file, line=1, column=1)
        what = " ".join(x for x in (err.context, err.problem) if x)
        if "expected '-' indicator" in what or "expected <block end>" in what:
            what += ("; a line here is indented differently from the entries around it: "
                     "the keys of one step line up under its `name:`, and a quote opened "
                     "on a line above must close on it")
        if mark is not None and text[mark.index:mark.index + 1] == "\t":
            what += ("; YAML indents with spaces only" if "tab" in what else
                     "; the character is a tab: YAML indents with spaces only")
        raise KataError("config.yaml_syntax", f"YAML syntax error: {what}", position=pos) from None
    except yaml.YAMLError as err:  # ReaderError: a character YAML does not allow
        offset = getattr(err, "position", 0) or 0
        line = text.count("\n", 0, offset) + 1
        col = offset - (text.rfind("\n", 0, offset) + 1) + 1
        raise KataError("config.yaml_syntax", f"YAML syntax error: {err}",
                        position=Position(file=file, line=line, column=col)) from None
    except RecursionError:
        raise KataError("config.yaml_syntax", "YAML nested too deeply",
                        position=Position(file=file, line=1, column=1)) from None
    if root is None or (isinstance(root, ScalarNode) and root.tag == _NULL):
        raise KataError("config.empty", "the config file is empty",
                        position=Position(file=file, line=1, column=1))
    return _Walker(file, text).pipeline(root)


class _Walker:
    """Turns the node graph into model values; every check raises a positioned KataError."""

    def __init__(self, file: str, source: str = "") -> None:
        self.file = file
        self.source = source  # the YAML text (marks index it): a block condition's positions
        self.global_env: tuple[tuple[str, str], ...] = ()
        self.default_resources = Resources()  # settings.resources, once read
        self.images: dict[str, ImageRef] = {}
        # the pairs of each mapping merged in (`<<`), by node and text_keys: a merge value
        # is walked once however often it is merged, or a chain of `<<: [*a, *a]` anchors
        # (n lines of YAML) would cost 2^n walks before anything runs
        self._merged: dict[tuple[int, bool], list] = {}
        self._merged_keys = 0  # keys merged in so far, against MERGE_LIMIT

    # -- helpers -----------------------------------------------------------
    def pos(self, node: Node) -> Position:
        m = node.start_mark
        return Position(file=self.file, line=m.line + 1, column=m.column + 1)

    def fail(self, reason: str, node: Node, message: str) -> KataError:
        return KataError(reason, message, position=self.pos(node))

    def pairs(self, node: Node, what: str, seen: frozenset[int] = frozenset(),
              text_keys: bool = False) -> list:
        """(key text, key node, value node) of a mapping, merges (`<<`) applied,
        duplicate keys rejected. ``text_keys``: any scalar key counts by its source text
        (an env variable may be named ``ON`` or ``Y``, which YAML 1.1 reads as booleans)."""
        if not isinstance(node, MappingNode):
            raise self.fail("config.type", node, f"{what} must be a mapping, got {_kind(node)}")
        out: list = []
        keys: dict[str, Node] = {}
        merged: list = []
        for k, v in node.value:
            if k.tag == _MERGE:
                if id(v) in seen or len(seen) > 50:
                    raise self.fail("config.type", v, "recursive merge (<<)")
                for m in (v.value if isinstance(v, SequenceNode) else (v,)):
                    done = self._merged.get((id(m), text_keys))
                    if done is None:
                        done = self._merged[id(m), text_keys] = self.pairs(
                            m, "a merge (<<) value", seen | {id(node)}, text_keys)
                    self._merged_keys += len(done)
                    if self._merged_keys > MERGE_LIMIT:
                        raise self.fail("config.too_large", v, "merge keys (<<) in this file "
                                        f"merge more than {MERGE_LIMIT:,} keys in all: "
                                        "merge each anchor once where it is used, not "
                                        "anchors that merge anchors many times over")
                    merged.extend(done)
                continue
            if not isinstance(k, ScalarNode) or (k.tag not in _TEXTUAL and not text_keys):
                raise self.fail("config.type", k, f"keys of {what} must be strings, got {_kind(k)}")
            key = k.value
            first = keys.get(key)
            if first is not None:
                raise self.fail("config.duplicate_key", k,
                                f"duplicate key {key!r} in {what} (first at line "
                                f"{first.start_mark.line + 1}); YAML would keep only the last")
            keys[key] = k
            out.append((key, k, v))
        for key, k, v in merged:
            if key not in keys:
                keys[key] = k
                out.append((key, k, v))
        return out

    def fields(self, node: Node, allowed: tuple[str, ...], what: str,
               extensions: bool = False) -> dict[str, tuple[Node, Node]]:
        """The known keys of a mapping; an unknown one is config.unknown_key. ``extensions``:
        keys starting with ``x-`` are ignored (Compose's extension fields: where anchors live)."""
        result = {}
        for key, k, v in self.pairs(node, what):
            if extensions and key.startswith(EXTENSION_PREFIX):
                continue
            if key not in allowed:
                near = difflib.get_close_matches(key, allowed, n=1)
                hint = f"; did you mean {near[0]!r}?" if near else \
                    f"; expected one of {', '.join(allowed)}"
                raise self.fail("config.unknown_key", k, f"unknown key {key!r} in {what}{hint}")
            result[key] = (k, v)
        return result

    def require(self, f: dict, key: str, node: Node, what: str) -> Node:
        if key not in f:
            raise self.fail("config.missing_key", node, f"{what} needs {key!r}")
        return f[key][1]

    def string(self, node: Node, what: str) -> str:
        if isinstance(node, ScalarNode) and node.tag in _TEXTUAL:
            return node.value
        hint = ""
        if isinstance(node, ScalarNode) and node.tag == _BOOL:
            hint = (f"; YAML reads an unquoted true/false/yes/no/on/off as a boolean: "
                    f"quote it: \"{node.value}\"")
        raise self.fail("config.type", node, f"{what} must be a string, got {_kind(node)}{hint}")

    def nonempty(self, node: Node, what: str) -> str:
        s = self.string(node, what)
        if not s.strip():
            raise self.fail("config.value", node, f"{what} must not be empty")
        return s

    def user(self, node: Node, what: str) -> str:
        """``user:`` of a step or service: ``uid`` or ``uid:gid``, numeric (the runtime
        sets ids and reads no /etc/passwd; a name failed only when the step started)."""
        s = self.nonempty(node, what)
        if not re.fullmatch(r"[0-9]{1,10}(:[0-9]{1,10})?", s) or \
                any(int(part) > 0xFFFFFFFE for part in s.split(":")):
            raise self.fail("config.value", node, f"{what} must be numeric, `uid` or "
                            f"`uid:gid` (e.g. \"1000\" or \"1000:1000\"), got {s!r}: a name "
                            "is not looked up in the image")
        return s

    def boolean(self, node: Node, what: str) -> bool:
        if isinstance(node, ScalarNode) and node.tag == _BOOL:
            return yaml.constructor.SafeConstructor.bool_values[node.value.lower()]
        raise self.fail("config.type", node, f"{what} must be true or false, got {_kind(node)}")

    def integer(self, node: Node, what: str) -> int:
        if isinstance(node, ScalarNode) and node.tag == _INT:
            try:
                return yaml.constructor.SafeConstructor().construct_yaml_int(node)
            except (ValueError, TypeError):
                pass
        raise self.fail("config.type", node, f"{what} must be an integer, got {_kind(node)}")

    def strings(self, node: Node, what: str, check: Callable[[str, Node], None] | None = None
                ) -> tuple[str, ...]:
        if not isinstance(node, SequenceNode):
            raise self.fail("config.type", node, f"{what} must be a list, got {_kind(node)}")
        out = []
        for item in node.value:
            s = self.string(item, f"{what}: each entry")
            if check is not None:
                check(s, item)
            out.append(s)
        return tuple(out)

    def env(self, node: Node, what: str) -> tuple[tuple[str, str], ...]:
        out = []
        for key, k, v in self.pairs(node, what, text_keys=True):
            if not is_env_name(key):
                raise self.fail("config.value", k, f"bad variable name {key!r} in {what}")
            if isinstance(v, ScalarNode):
                # its source text, whatever YAML 1.1 would type it as: `DATE: 2024-01-02`,
                # `V: 1.10`, `ON: yes`, `N: 0x1F` stay as written; null (empty, ~) is ""
                out.append((key, "" if v.tag == _NULL else v.value))
            else:
                raise self.fail("config.type", v, f"{what}.{key} must be a scalar, got {_kind(v)}")
        return tuple(out)

    def expand(self, env: tuple[tuple[str, str], ...], outer: tuple[tuple[str, str], ...],
               node: Node, what: str) -> tuple[tuple[str, str], ...]:
        """``${NAME}`` in env values from this env, else ``outer`` (the global env, already
        expanded), as GitLab and Woodpecker do; ``$$`` is a literal ``$``; a name defined in
        neither stays as written (the container's shell may know it). A cycle is config.value."""
        own, base = dict(env), dict(outer)
        done: dict[str, str] = {}

        def value(name: str, trail: tuple[str, ...]) -> str:
            if name in done:
                return done[name]
            if name in trail:
                raise self.fail("config.value", node, f"{what}: variables refer to each other in "
                                f"a cycle: {' -> '.join((*trail[trail.index(name):], name))}")

            def sub(m: re.Match[str]) -> str:
                if m.group(0) == "$$":
                    return "$"
                ref = m.group(1)
                if ref in own and ref != name:
                    return value(ref, (*trail, name))
                if ref in base:
                    return base[ref]
                return m.group(0)
            done[name] = _EXPAND.sub(sub, own[name])
            return done[name]

        return tuple((k, value(k, ())) for k, _ in env)

    def one_of(self, value: str, allowed: tuple[str, ...], node: Node, what: str) -> None:
        """config.value at ``node`` unless ``value`` is in ``allowed``."""
        if value not in allowed:
            raise self.fail("config.value", node, f"{what} {value!r}; expected one of "
                            f"{', '.join(allowed)}")

    def duration(self, node: Node, what: str, *, positive: bool = False) -> Duration:
        """A ``kata.model.Duration`` (a YAML integer counts seconds); ``positive``: not 0."""
        if not (isinstance(node, ScalarNode) and node.tag in (_INT, *_TEXTUAL)):
            raise self.fail("config.type", node, f"{what} must be a duration such as 90s, 15m "
                            f"or 1h30m, got {_kind(node)}")
        try:
            if isinstance(node, ScalarNode) and node.tag == _INT:
                value = Duration(millis=self.integer(node, what) * 1000)
            else:
                value = Duration.parse(self.string(node, what))
        except ValueError as err:
            raise self.fail("config.duration", node, f"{what}: {err}") from None
        if positive and value.millis == 0:
            raise self.fail("config.value", node, f"{what} must be > 0")
        return value

    def image(self, node: Node, what: str) -> ImageRef:
        text = self.string(node, what)
        found = self.images.get(text)  # one value per reference: a thousand steps, one image
        if found is not None:
            return found
        try:
            found = self.images[text] = ImageRef.parse(text)
        except ValueError as err:
            var = re.search(r"\$\{[^}]*\}", text)  # only a matrix step substitutes them
            hint = (f"; {var.group(0)} is substituted only in a step with matrix: (it "
                    "names a matrix variable)") if var else ""
            raise self.fail("config.image_ref", node, f"{what}: {err}{hint}") from None
        return found

    def condition(self, node: Node, what: str) -> conditions.Expr:
        text = self.string(node, what)
        base = self.pos(node)
        if node.style in ('"', "'"):
            base = Position(file=base.file, line=base.line, column=base.column + 1)
        locate = None
        if node.style in ("|", ">"):  # the text starts on the next line, indented
            locate = functools.partial(_block_position, node, text, self.file, self.source)
        expr = conditions.parse(text, base, locate)
        for patterns in conditions.changed_patterns(expr):
            try:
                check_globs(patterns)
            except ValueError as err:
                raise self.fail("config.value", node, f"{what}: bad path pattern in "
                                f"changed({', '.join(map(repr, patterns))}): {err}") from None
        for field, value in conditions.unknown_values(expr):
            allowed = conditions.VOCABULARY[field]
            raise self.fail("config.value", node, f"{what}: unknown {field} {value!r}; "
                            f"expected one of {', '.join(allowed)}")
        return expr

    def inside(self, what: str, *, glob: bool, anchor: bool = False,
               home: str = "") -> Callable[[str, Node], None]:
        """A check for ``strings``: the entry stays inside the repository. ``home``
        (workspace paths: ``cache.paths``, ``artifacts``, ``reports.junit``): what to do
        instead, when a leading ``~`` or ``$`` is refused, as a team writing ``~/.npm``
        means the user's home, which nothing expands there."""
        def check(s: str, item: Node) -> None:
            if not s.strip():
                raise self.fail("config.value", item, f"empty path in {what}")
            problem = repository_path_problem(s, glob=glob, anchor=anchor)
            if problem:
                raise self.fail("config.value", item, f"{what}: {s!r} {problem}")
            if home and s[:1] in ("~", "$"):
                raise self.fail(
                    "config.value", item,
                    f"{what}: {s!r} starts with {s[0]!r}, which is not expanded: {home}")
        return check

    def globs(self, node: Node, what: str, gitignore: bool = False,
              reads: bool = True, anchor: bool = False, home: str = "") -> tuple[str, ...]:
        """Patterns; ``gitignore``: path globs (gitignore rules). ``reads``: the patterns
        select files kata reads or keeps (inputs, key_files, artifacts), so they must stay inside the
        repository (no ``..``); changed-path filters (``only: paths``, triggers' ``paths``)
        read nothing. ``anchor`` (inputs, key_files; always for changed-path filters): a
        leading ``/`` anchors at the root as in .gitignore (``artifacts`` refuse it)."""
        inside = self.inside(what, glob=True, anchor=anchor, home=home)

        def check(s: str, item: Node) -> None:
            if not s.strip():
                raise self.fail("config.value", item, f"empty pattern in {what}")
            if gitignore:
                if reads:
                    inside(s, item)
                try:
                    check_globs((s,))
                except ValueError as err:
                    raise self.fail("config.value", item, f"bad pattern {s!r} in {what}: {err}") from None
        return self.strings(node, what, check)

    # -- the document ------------------------------------------------------
    def pipeline(self, root: Node) -> Pipeline:
        f = self.fields(root, TOP_KEYS, "the config", extensions=True)
        name = self.nonempty(f["pipeline"][1], "pipeline") if "pipeline" in f else "pipeline"
        settings = self.settings(f["settings"][1]) if "settings" in f else Settings()
        self.default_resources = settings.resources
        env = self.env(f["env"][1], "env") if "env" in f else ()
        if env:
            env = self.expand(env, (), f["env"][1], "the global env")
        self.global_env = env
        triggers = self.triggers(f["triggers"][1]) if "triggers" in f else ()
        if "steps" not in f:
            raise self.fail("config.no_steps", root, "the config has no steps")
        steps_node = f["steps"][1]
        if isinstance(steps_node, ScalarNode) and steps_node.tag == _NULL:
            raise self.fail("config.no_steps", steps_node, "steps is empty")
        if not isinstance(steps_node, SequenceNode):
            raise self.fail("config.type", steps_node, f"steps must be a list, got {_kind(steps_node)}")
        if not steps_node.value:
            raise self.fail("config.no_steps", steps_node, "steps is empty")
        steps = self.expand_matrix_deps([s for n in steps_node.value for s in self.step_or_matrix(n)])
        self.check_graph(steps)
        return Pipeline(name=name, steps=tuple(steps), settings=settings, env=env,
                        triggers=triggers, file=self.file)

    def settings(self, node: Node) -> Settings:
        f = self.fields(node, (*SETTINGS_KEYS, "userns"), "settings")
        if "userns" in f:  # asked for by users of Docker's userns-remap; not possible yet
            raise self.fail("config.unsupported", f["userns"][0],
                            "settings.userns: remapping container root needs idmapped mounts, "
                            "which containerd 1.6 and runc 1.1 cannot request (SECURITY.md, "
                            "'User namespaces'); remove the key")
        kw: dict[str, Any] = {}
        if "timeout" in f:
            kw["timeout"] = self.duration(f["timeout"][1], "settings.timeout", positive=True)
        if "max_parallel" in f:
            v = f["max_parallel"][1]
            kw["max_parallel"] = n = self.integer(v, "settings.max_parallel")
            if n < 1:
                raise self.fail("config.value", v, f"settings.max_parallel must be >= 1, got {n}")
        if "fail_fast" in f:
            kw["fail_fast"] = self.boolean(f["fail_fast"][1], "settings.fail_fast")
        if "cache_enabled" in f:
            kw["cache_enabled"] = self.boolean(f["cache_enabled"][1], "settings.cache_enabled")
        if "resources" in f:
            kw["resources"] = self.resources(f["resources"][1], "settings.resources")
        return Settings(**kw)

    def step(self, node: Node, f: dict | None = None) -> Step:
        f = f if f is not None else self.fields(node, STEP_KEYS, "a step")
        name_node = self.require(f, "name", node, "a step")
        name = self.string(name_node, "name")
        if not is_step_name(name):
            raise self.fail("config.step_name", name_node,
                            f"bad step name {name!r}: {NAME_RULE}")
        what = f"step {name!r}"
        image_node = self.require(f, "image", node, what)
        kw: dict[str, Any] = {"name": name, "position": self.pos(name_node),
                              "image": self.image(image_node, f"{what}: image")
                              if "matrix" not in f else ImageRef.parse("scratch"),
                              "resources": self.default_resources}
        positions: list[tuple[str, str, Position | None]] = []  # each pattern's place
        for key, (_, v) in f.items():
            if key in ("name", "image", "matrix"):
                continue
            label = f"{what}: {key}"
            if key == "commands":
                kw[key] = self.strings(v, label)
            elif key == "artifacts":
                kw[key] = self.globs(v, label, gitignore=True, home=ARTIFACTS_HOME)
            elif key == "depends_on":
                kw[key] = self.strings(v, label)
                kw["dep_positions"] = tuple(self.pos(i) for i in v.value)
            elif key == "inputs":
                kw[key] = self.globs(v, label, gitignore=True, anchor=True)
                positions.extend(("inputs", p, self.pos(i)) for p, i in zip(kw[key], v.value))
            elif key == "secrets":
                def check(s: str, item: Node, label=label) -> None:
                    if not is_env_name(s):
                        raise self.fail("config.value", item, f"{label}: bad secret name {s!r}: "
                                        "a secret is an environment variable: letters, digits "
                                        "and '_', not starting with a digit (e.g. PYPI_TOKEN)")
                kw[key] = self.strings(v, label, check)
            elif key == "env":
                kw[key] = self.env(v, label)
            elif key == "timeout":
                kw[key] = self.duration(v, label, positive=True)
            elif key == "services":  # a matrix step's: per instance (step_or_matrix)
                kw[key] = self.services(v, label) if "matrix" not in f else ()
            elif key == "cache":
                kw[key] = self.cache(v, label)
                for k, val in v.value if isinstance(v, MappingNode) else ():
                    if getattr(k, "value", None) == "key_files" and isinstance(val, SequenceNode):
                        positions.extend(("cache.key_files", p, self.pos(i)) for p, i in
                                         zip(kw[key].key_files, val.value))
            elif key == "only":
                kw[key] = self.only(v, label)
            elif key == "when":
                kw[key] = self.condition(v, label)
            elif key == "workdir":
                kw[key] = wd = self.string(v, label)
                problem = workdir_problem(wd)
                if problem:
                    raise self.fail("config.value", v, f"{label} {problem}")
            elif key == "network":
                kw[key] = mode = self.string(v, label)
                if mode not in NETWORK_MODES:
                    raise self.fail("config.value", v, f"{label} must be one of "
                                    f"{', '.join(NETWORK_MODES)}, got {mode!r}")
            elif key == "user":
                kw[key] = self.user(v, label)
            elif key == "description":
                kw[key] = self.string(v, label)
            elif key == "resources":
                kw[key] = self.resources(v, label).over(self.default_resources)
            elif key == "allow_failure":
                kw[key] = self.allow_failure(v, label)
            elif key == "retry":
                kw[key] = self.retry(v, label)
            elif key == "reports":
                rf = self.fields(v, REPORTS_KEYS, label)
                if "junit" in rf:
                    kw["junit_reports"] = self.globs(rf["junit"][1], f"{label}.junit",
                                                     gitignore=True, home=REPORTS_HOME)
            elif key == "context":
                def check(s: str, item: Node, label=label) -> None:
                    self.one_of(s, CONTEXT_VARS, item, f"{label}: unknown context variable")
                kw[key] = tuple(dict.fromkeys(self.strings(v, label, check)))
        if "env" in kw:
            kw["env"] = self.expand(kw["env"], self.global_env, f["env"][1], what)
        kw["pattern_positions"] = tuple(positions)
        return Step(**kw)

    def allow_failure(self, node: Node, what: str) -> bool | tuple[int, ...]:
        """``true``/``false``, or a non-empty list of exit codes 1..255."""
        if isinstance(node, ScalarNode) and node.tag == _BOOL:
            return self.boolean(node, what)
        if not isinstance(node, SequenceNode):
            raise self.fail("config.type", node, f"{what} must be true, false or a list of "
                            f"exit codes, got {_kind(node)}")
        codes = []
        for item in node.value:
            code = self.integer(item, f"{what}: each entry")
            if not 0 < code < 256:
                raise self.fail("config.value", item, f"{what}: exit code {code} out of "
                                "range (1 to 255)")
            codes.append(code)
        if not codes:
            raise self.fail("config.value", node, f"{what} lists no exit code")
        return tuple(sorted(set(codes)))

    def retry(self, node: Node, what: str) -> Retry:
        """``retry: 2`` or ``retry: {max: 2, on: [exit_code: 137, timeout]}``."""
        if isinstance(node, ScalarNode) and node.tag == _INT:
            return self.retry_value(node, what, max=self.integer(node, what))
        if isinstance(node, MappingNode):  # YAML 1.1 reads an unquoted `on:` as true
            node = MappingNode(node.tag, [
                (ScalarNode(_STR, k.value, k.start_mark, k.end_mark)
                 if isinstance(k, ScalarNode) and k.tag == _BOOL else k, v)
                for k, v in node.value], node.start_mark, node.end_mark, node.flow_style)
        f = self.fields(node, RETRY_KEYS, what)
        max_node = self.require(f, "max", node, what)
        codes: list[int] = []
        timeout = False
        if "on" in f:
            on = f["on"][1]
            if not isinstance(on, SequenceNode) or not on.value:
                raise self.fail("config.type" if not isinstance(on, SequenceNode) else
                                "config.value", on, f"{what}.on must be a non-empty list of "
                                "'exit_code: N' and 'timeout'")
            for item in on.value:
                if isinstance(item, ScalarNode) and item.tag in _TEXTUAL:
                    if item.value != "timeout":
                        raise self.fail("config.value", item, f"{what}.on: unknown condition "
                                        f"{item.value!r}: write 'timeout' or 'exit_code: N' (an "
                                        "out-of-memory kill is exit_code: 137)")
                    timeout = True
                    continue
                entry = self.fields(item, ("exit_code",), f"an entry of {what}.on")
                code = self.require(entry, "exit_code", item, f"an entry of {what}.on")
                codes.append(self.integer(code, f"{what}.on.exit_code"))
                if not 0 < codes[-1] < 256:
                    raise self.fail("config.value", code, f"{what}.on: exit code {codes[-1]} "
                                    "out of range (1 to 255)")
        return self.retry_value(max_node, what, max=self.integer(max_node, f"{what}.max"),
                                exit_codes=tuple(sorted(set(codes))), timeout=timeout)

    def retry_value(self, node: Node, what: str, **kw: Any) -> Retry:
        try:
            return Retry(**kw)
        except ValueError as err:
            raise self.fail("config.value", node, f"{what}: {err}") from None

    # -- matrix steps (kata.matrix) -------------------------------------
    def step_or_matrix(self, node: Node) -> tuple[Step, ...]:
        """A step, or a matrix step's instances in combination order."""
        f = self.fields(node, STEP_KEYS, "a step")
        base = self.step(node, f)
        if "matrix" not in f:
            return (base,)
        what = f"step {base.name!r}"
        m_node = f["matrix"][1]
        matrix = self.matrix(m_node, f"{what}: matrix")
        image_node = f["image"][1]
        image_text = self.string(image_node, f"{what}: image")
        own_env = dict(base.env)
        out = []
        for values in matrix.combinations():
            clash = next((k for k, _ in values if k in own_env), None)
            if clash is not None:
                raise self.fail("config.value", m_node, f"{what}: matrix variable {clash} is "
                                "also in the step's env; give it in one place")
            try:
                image = ImageRef.parse(mx.substitute(image_text, values))
            except ValueError as err:
                raise self.fail("config.image_ref", image_node, f"{what}: image "
                                f"({mx.instance_name(base.name, values)}): {err}") from None
            services = (self.services(f["services"][1], f"{what}: services", values)
                        if "services" in f else ())
            out.append(replace(base, name=mx.instance_name(base.name, values), image=image,
                               env=(*base.env, *values), matrix_of=base.name, matrix=values,
                               services=services))
        return tuple(out)

    def matrix(self, node: Node, what: str) -> mx.Matrix:
        """``{VAR: [values], exclude: [{VAR: v}], include: [{VAR: v}]}`` -> ``mx.Matrix``."""
        axes, exclude, include = [], (), ()
        for key, k, v in self.pairs(node, what):
            if key in MATRIX_KEYS:
                entries = self.matrix_entries(v, f"{what}.{key}")
                exclude, include = (entries, include) if key == "exclude" else (exclude, entries)
                continue
            if not is_env_name(key):
                raise self.fail("config.value", k, f"{what}: bad variable name {key!r}")
            if not isinstance(v, SequenceNode):
                raise self.fail("config.type", v, f"{what}.{key} must be a list, got {_kind(v)}")
            values = tuple(self.matrix_value(i, f"{what}.{key}") for i in v.value)
            if not values:
                raise self.fail("config.value", v, f"{what}.{key} has no values")
            if len(set(values)) != len(values):
                raise self.fail("config.value", v, f"{what}.{key} lists a value twice")
            axes.append((key, values))
        try:
            return mx.Matrix(axes=tuple(axes), exclude=exclude, include=include)
        except ValueError as err:
            raise self.fail("config.value", node, f"{what}: {err}") from None

    def matrix_entries(self, node: Node, what: str) -> tuple[mx.Values, ...]:
        if not isinstance(node, SequenceNode):
            raise self.fail("config.type", node, f"{what} must be a list, got {_kind(node)}")
        out = []
        for item in node.value:
            pairs = []
            for key, k, v in self.pairs(item, f"an entry of {what}"):
                if not is_env_name(key):
                    raise self.fail("config.value", k, f"{what}: bad variable name {key!r}")
                pairs.append((key, self.matrix_value(v, f"{what}.{key}")))
            if not pairs:
                raise self.fail("config.value", item, f"{what} has an empty entry")
            out.append(tuple(pairs))
        return tuple(out)

    def matrix_value(self, node: Node, what: str) -> str:
        if not (isinstance(node, ScalarNode) and node.tag in (*_TEXTUAL, _BOOL)):
            raise self.fail("config.type", node, f"{what}: a value must be a scalar, got {_kind(node)}")
        try:
            mx.check_value(node.value)
        except ValueError as err:
            raise self.fail("config.value", node, f"{what}: {err}") from None
        return node.value

    def expand_matrix_deps(self, steps: list[Step]) -> list[Step]:
        """``depends_on: [test]`` naming a matrix step means every instance of it; a
        matrix step's name may not also be a plain step's (``config.duplicate_step``)."""
        instances: dict[str, list[str]] = {}
        for s in steps:
            if s.matrix_of:
                instances.setdefault(s.matrix_of, []).append(s.name)
        if not instances:
            return steps
        for s in steps:
            if not s.matrix_of and s.name in instances:
                raise KataError("config.duplicate_step", f"duplicate step name {s.name!r} "
                                "(a matrix step has that name)", position=s.position)
        out = []
        for s in steps:
            if any(d in instances for d in s.depends_on):
                deps, poss = [], []
                for d, p in zip(s.depends_on, s.dep_positions):
                    names = instances.get(d, [d])
                    deps.extend(names)
                    poss.extend([p] * len(names))
                s = replace(s, depends_on=tuple(deps), dep_positions=tuple(poss))
            out.append(s)
        return out

    def services(self, node: Node, what: str,
                 values: mx.Values | None = None) -> tuple[Service, ...]:
        """A step's services; ``values``: a matrix instance's, substituted for ``${VAR}`` in
        each image and put in each env (below what the service sets itself)."""
        if not isinstance(node, SequenceNode):
            raise self.fail("config.type", node, f"{what} must be a list, got {_kind(node)}")
        out = []
        names: set[str] = set()
        for item in node.value:
            f = self.fields(item, SERVICE_KEYS, "a service")
            name_node = self.require(f, "name", item, "a service")
            name = self.string(name_node, "service name")
            if not is_step_name(name):
                raise self.fail("config.value", name_node, f"bad service name {name!r}: {NAME_RULE}")
            if name in names:
                raise self.fail("config.duplicate_key", name_node, f"duplicate service {name!r}")
            same = next((n for n in names if n.lower() == name.lower()), None)
            if same is not None:  # a host name: DNS names are case-insensitive (RFC 4343)
                raise self.fail("config.duplicate_key", name_node,
                                f"{what}: service {name!r} is the host name of service {same!r} "
                                "too (host names ignore case): name them apart")
            names.add(name)
            label = f"service {name!r}"
            if "commands" in f and "entrypoint" in f:
                raise self.fail("config.value", f["entrypoint"][0],
                                f"{label}: give commands or entrypoint, not both")
            secrets: tuple[str, ...] = ()
            if "secrets" in f:
                def check(s: str, node: Node, label=label) -> None:
                    if not is_env_name(s):
                        raise self.fail("config.value", node, f"{label}: bad secret name {s!r}: "
                                        "a secret is an environment variable: letters, digits "
                                        "and '_', not starting with a digit (e.g. PYPI_TOKEN)")
                secrets = self.strings(f["secrets"][1], f"{label}: secrets", check)
            image_node = self.require(f, "image", item, label)
            env = self.env(f["env"][1], f"{label}: env") if "env" in f else ()
            if values is None:
                image = self.image(image_node, f"{label}: image")
            else:
                own = {k for k, _ in env}
                env = (*((k, v) for k, v in values if k not in own), *env)
                try:
                    image = ImageRef.parse(mx.substitute(self.string(image_node, label),
                                                         values))
                except ValueError as err:
                    raise self.fail("config.image_ref", image_node, f"{label}: image "
                                    f"({mx.instance_name(what, values)}): {err}") from None
            out.append(Service(
                name=name, position=self.pos(item), image=image, env=env,
                commands=self.strings(f["commands"][1], f"{label}: commands") if "commands" in f else (),
                entrypoint=self.strings(f["entrypoint"][1], f"{label}: entrypoint")
                if "entrypoint" in f else (),
                ready=self.ready(f["ready"][1], f"{label}: ready") if "ready" in f else None,
                resources=(self.resources(f["resources"][1], f"{label}: resources")
                           if "resources" in f else Resources()).over(self.default_resources),
                secrets=secrets,
                user=self.user(f["user"][1], f"{label}: user") if "user" in f else None))
        return tuple(out)

    def ready(self, node: Node, what: str) -> Ready:
        f = self.fields(node, READY_KEYS, what)
        kinds = [k for k in ("tcp", "http", "command") if k in f]
        if len(kinds) != 1:
            raise self.fail("config.value", node,
                            f"{what} needs exactly one of tcp, http, command")
        kind = kinds[0]
        v = f[kind][1]
        if kind == "tcp":
            port = self.integer(v, f"{what}.tcp")
            if not 0 < port < 65536:
                raise self.fail("config.value", v, f"{what}.tcp: port {port} out of range")
            target = str(port)
        elif kind == "http":
            target = self.nonempty(v, f"{what}.http")
            import urllib.parse

            try:
                ok = bool(re.match(r"https?://[^/]", target))
                urllib.parse.urlsplit(target).port  # noqa: B018 - raises when out of range
            except ValueError:
                ok = False
            if not ok:
                raise self.fail("config.value", v, f"{what}.http must be an http:// or "
                                f"https:// URL, got {target!r}")
        else:
            target = self.nonempty(v, f"{what}.command")
        kw: dict[str, Any] = {"kind": kind, "target": target}
        if "timeout" in f:
            kw["timeout"] = self.duration(f["timeout"][1], f"{what}.timeout", positive=True)
        return Ready(**kw)

    def resources(self, node: Node, what: str) -> Resources:
        """`{memory: "2GiB", cpus: 1.5, pids: 1024}`; each field optional."""
        f = self.fields(node, RESOURCES_KEYS, what)
        kw: dict[str, Any] = {}
        if "memory" in f:
            v = f["memory"][1]
            if not (isinstance(v, ScalarNode) and v.tag in (_STR, _INT)):
                raise self.fail("config.type", v, f"{what}.memory must be a size such as "
                                f"512MiB or 2GiB, got {_kind(v)}")
            try:
                kw["memory"] = parse_memory(self.integer(v, f"{what}.memory") if v.tag == _INT
                                            else v.value)
            except ValueError as err:
                raise self.fail("config.value", v, f"{what}.memory: {err}") from None
        if "cpus" in f:
            v = f["cpus"][1]
            try:
                if not (isinstance(v, ScalarNode) and v.tag in (_INT, _FLOAT)):
                    raise ValueError
                cpus = float(v.value)
            except ValueError:
                raise self.fail("config.type", v, f"{what}.cpus must be a number of CPUs "
                                f"such as 1 or 1.5, got {_kind(v)}") from None
            if not MIN_CPUS <= cpus <= MAX_CPUS:
                raise self.fail("config.value", v, f"{what}.cpus must be between {MIN_CPUS:g} "
                                f"and {MAX_CPUS}, got {v.value}")
            kw["cpus"] = cpus
        if "pids" in f:
            v = f["pids"][1]
            kw["pids"] = n = self.integer(v, f"{what}.pids")
            if not 1 <= n <= MAX_PIDS:
                raise self.fail("config.value", v, f"{what}.pids must be between 1 and "
                                f"{MAX_PIDS}, got {n}")
        return Resources(**kw)

    def cache(self, node: Node, what: str) -> CacheSpec:
        if isinstance(node, ScalarNode) and node.tag == _BOOL:
            enabled = self.boolean(node, what)
            return CacheSpec(enabled=enabled, explicit=enabled)
        f = self.fields(node, CACHE_KEYS, what)
        enabled = self.boolean(f["enabled"][1], f"{what}.enabled") if "enabled" in f else True
        return CacheSpec(
            enabled=enabled, explicit=enabled and "enabled" in f,
            paths=self.strings(f["paths"][1], f"{what}.paths",
                               self.inside(f"{what}.paths", glob=False, home=CACHE_HOME)) if "paths" in f else (),
            key_files=self.globs(f["key_files"][1], f"{what}.key_files", gitignore=True,
                                anchor=True) if "key_files" in f else ())

    def only(self, node: Node, what: str) -> conditions.Expr:
        kw = {}
        for key, (_, v) in self.fields(node, ONLY_KEYS, what).items():
            kw[key] = self.globs(v, f"{what}.{key}", gitignore=key == "paths", reads=False)
            if key == "events":
                for ev, item in zip(kw[key], v.value):
                    self.one_of(ev, conditions.EVENTS, item, f"{what}.events: unknown event")
        return conditions.only_expr(**kw)

    def triggers(self, node: Node) -> tuple[Trigger, ...]:
        if not isinstance(node, SequenceNode):
            raise self.fail("config.type", node, f"triggers must be a list, got {_kind(node)}")
        out = []
        for item in node.value:
            f = self.fields(item, TRIGGER_KEYS, "a trigger")
            kw: dict[str, Any] = {"position": self.pos(item)}
            if "event" in f:
                v = f["event"][1]
                kw["event"] = ev = self.string(v, "trigger event")
                self.one_of(ev, conditions.EVENTS, v, "unknown trigger event")
            for key in ("branches", "paths", "actions"):
                if key in f:
                    kw[key] = self.globs(f[key][1], f"trigger {key}", gitignore=key == "paths",
                                         reads=False)
            if "actions" in f:
                for action, item in zip(kw["actions"], f["actions"][1].value):
                    self.one_of(action, conditions.PR_ACTIONS, item, "unknown pull request action")
                if kw["actions"] and kw.get("event", "pull_request") != "pull_request":
                    # only a pull request has an action: the trigger could never match
                    raise self.fail("config.value", f["actions"][0],
                                    f"a trigger on event {kw['event']!r} has no actions: "
                                    "actions are those of a pull request; write "
                                    "'event: pull_request' or drop actions")
            if "pattern" in f:
                kw["pattern"] = self.string(f["pattern"][1], "trigger pattern")
            self._short_ref_names(f, kw)
            event = kw.get("event")
            # a tag has no branch and a branch event no tag (kata.conditions.Context): the
            # trigger could never match, from a hook or from --event
            if kw.get("branches") and event == "tag":
                raise self.fail("config.value", f["branches"][0],
                                "a trigger on event 'tag' has no branches: a tag event has "
                                "only a tag; match its name with 'pattern:' (e.g. 'v*'), or "
                                "write another trigger with 'event: push' and branches")
            if kw.get("branches") and "pattern" in f and event is None:
                raise self.fail("config.value", f["pattern"][0],
                                "a trigger with both 'branches' and 'pattern' could never "
                                "match: a run has a branch or a tag, never both; write two "
                                "triggers (triggers match when any of them does)")
            if "pattern" in f and event not in (None, "tag"):
                raise self.fail("config.value", f["pattern"][0],
                                f"a trigger on event {event!r} has no tag to match 'pattern' "
                                "against: only a tag event has one; write 'event: tag', or "
                                "'branches:' for branch names")
            out.append(Trigger(**kw))
        return tuple(out)

    def _short_ref_names(self, f: dict[str, tuple[Node, Node]], kw: dict[str, Any]) -> None:
        """Triggers match a branch's or a tag's short name (a hook strips ``refs/heads/``
        and ``refs/tags/``): a full ref could never match, so it is refused at its item."""
        items = []
        if kw.get("branches"):
            items += [(b, n, "refs/heads/", "branch") for b, n in
                      zip(kw["branches"], f["branches"][1].value)]
        if kw.get("pattern"):
            items.append((kw["pattern"], f["pattern"][1], "refs/tags/", "tag"))
        for value, node, prefix, what in items:
            if value.startswith(prefix):
                raise self.fail("config.value", node,
                                f"trigger {what} {value!r} could never match: triggers match "
                                f"the {what}'s short name, without {prefix}; write "
                                f"{value.removeprefix(prefix)!r}")

    # -- the graph ---------------------------------------------------------
    def check_graph(self, steps: list[Step]) -> None:
        by_name: dict[str, Step] = {}
        for s in steps:
            if s.name in by_name:
                first = by_name[s.name].position
                raise KataError("config.duplicate_step",
                                f"duplicate step name {s.name!r} (first at line {first.line})",
                                position=s.position)
            by_name[s.name] = s
        for s in steps:
            for dep, pos in zip(s.depends_on, s.dep_positions):
                if dep not in by_name:
                    near = difflib.get_close_matches(dep, list(by_name), n=1)
                    hint = f"; did you mean {near[0]!r}?" if near else ""
                    raise KataError("config.unknown_dependency",
                                    f"step {s.name!r} depends on unknown step {dep!r}{hint}",
                                    position=pos)
        deps = {s.name: s.depends_on for s in steps}
        _, leftover = topo_order(deps)
        if leftover:
            cycle = find_cycle(deps, leftover)
            # point at the depends_on entry that closes the cycle
            s = by_name[cycle[1]]
            pos = s.dep_positions[s.depends_on.index(cycle[0])]
            raise KataError("config.cycle", f"dependency cycle: {' -> '.join(cycle)}",
                            position=pos, obj=" -> ".join(cycle))


def _block_position(node: Node, text: str, file: str, source: str,
                    offset: int) -> Position | None:
    """The file position of ``text[offset]``, ``text`` the value of the block scalar
    ``node`` (``|`` or ``>``): its characters other than spaces and line ends are the
    source's after the indicator line, in order (folding and indentation only change
    whitespace, and a block scalar has no escapes or comments); ``source``: the YAML text
    the node's marks index. None: not found there."""
    mark = node.start_mark
    nth = sum(1 for c in text[:offset] if not c.isspace())
    start = source.find("\n", mark.index, node.end_mark.index)
    if start < 0:
        return None
    line, column = mark.line + 1, 0  # 0-based, at the character after that line end
    for c in source[start + 1:node.end_mark.index]:
        if c == "\n":
            line, column = line + 1, 0
            continue
        if not c.isspace():
            if nth == 0:
                return Position(file=file, line=line + 1, column=column + 1)
            nth -= 1
        column += 1
    return None


def _kind(node: Node) -> str:
    if isinstance(node, MappingNode):
        return "a mapping"
    if isinstance(node, SequenceNode):
        return "a list"
    tag = node.tag.rsplit(":", 1)[-1]
    if node.tag == _NULL:
        return "nothing (null)"
    return f"{tag} {node.value!r}"
