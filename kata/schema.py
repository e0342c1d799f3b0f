"""The JSON Schema (draft 2020-12) of `.kata-ci.yaml`, built from the loader's key tables.

Editors validate and complete the config with it (``# yaml-language-server:
$schema=…``); ``kata schema`` prints the copy shipped in the wheel
(``kata/data/kata-ci.schema.json``, regenerated with ``python3 -m kata.schema --write``;
a test keeps the two equal). Every key table of :mod:`kata.loader` (``TOP_KEYS``,
``STEP_KEYS``, ...) must have one entry per key below: :func:`config_schema` raises
``AssertionError`` naming a key the loader knows and the schema does not, so a key added
to the loader cannot be forgotten here.

What the schema checks is what the loader checks about shape: unknown keys, types,
required keys, enumerations (events, actions, network modes), names (steps, services,
variables, secrets), durations, ports. What only the loader checks (image references in
full, dependencies that exist, cycles, duplicate keys, glob syntax, condition
expressions) it cannot: a config the loader accepts always passes the schema; one the
schema rejects, the loader rejects too.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

from kata import conditions, loader, resources
from kata.model import CONTEXT_VARS, NETWORK_MODES

SHIPPED = Path(__file__).resolve().parent / "data" / "kata-ci.schema.json"

# YAML scalars the loader takes as text: strings, and numbers it reads back as written
_TEXT: dict[str, Any] = {"type": ["string", "number"]}
_NONEMPTY = {"type": ["string", "number"], "pattern": r"\S"}
_USER = {"type": ["string", "number"], "pattern": r"^[0-9]{1,10}(:[0-9]{1,10})?$"}
_NAME = r"^[A-Za-z0-9_][A-Za-z0-9_.-]*$"  # grammar/labels.lark NAME (kata.labels.is_step_name)
_ENV_NAME = r"^[A-Za-z_][A-Za-z0-9_]*$"  # kata.model.is_env_name
# kata.model.Duration: units largest first, each at most once, or whole seconds
_DURATION_TEXT = r"^\s*(?=\S)(\d+|(\d+w)?(\d+d)?(\d+h)?(\d+m)?(\d+s)?(\d+ms)?)\s*$"


def _list(items: dict[str, Any], description: str) -> dict[str, Any]:
    return {"type": "array", "items": items, "description": description}


def _texts(description: str) -> dict[str, Any]:
    return _list(_TEXT, description)


def _patterns(description: str) -> dict[str, Any]:
    return _list(_NONEMPTY, description)


def _duration(description: str, default: str | None = None) -> dict[str, Any]:
    out: dict[str, Any] = {
        "description": description + " A duration: 90s, 15m, 1h30m, 2d (units w d h m s ms, "
                                     "largest first) or whole seconds; not 0.",
        "anyOf": [{"type": "integer", "minimum": 1},
                  {"type": "string", "pattern": _DURATION_TEXT}]}
    if default is not None:
        out["default"] = default
    return out


def _env(description: str) -> dict[str, Any]:
    return {"type": "object", "description": description,
            "propertyNames": {"pattern": _ENV_NAME},
            "additionalProperties": {"type": ["string", "number", "boolean", "null"]}}


def _secret_names(description: str) -> dict[str, Any]:
    return _list({"type": "string", "pattern": _ENV_NAME}, description)


def _object(table: tuple[str, ...], props: dict[str, dict[str, Any]], what: str, *,
            required: tuple[str, ...] = (), description: str = "") -> dict[str, Any]:
    """An object schema whose keys are exactly the loader's ``table``."""
    missing = [k for k in table if k not in props]
    extra = [k for k in props if k not in table]
    assert not missing and not extra, (
        f"{what}: the loader's keys {missing} have no schema; schema keys {extra} are "
        "unknown to the loader (kata/schema.py)")
    out: dict[str, Any] = {"type": "object", "properties": {k: props[k] for k in table},
                           "additionalProperties": False}
    if required:
        out["required"] = list(required)
    if description:
        out["description"] = description
    return out


def _resources(what: str) -> dict[str, Any]:
    """``resources:`` (memory, cpus, pids), bounded as :mod:`kata.resources` bounds them."""
    return _object(loader.RESOURCES_KEYS, {
        "memory": {"type": ["string", "integer"], "minimum": resources.MIN_MEMORY,
                   # kata.resources' size grammar (_SIZE), anchored
                   "pattern": r"^\s*\d+(\.\d+)?\s*[kKmMgGtTpP]?[iI]?[bB]?\s*$",
                   "description": "Memory limit: 512MiB, 2GiB, 1.5G, 500MB or bytes "
                                  "(at least 6MiB)."},
        "cpus": {"type": "number", "minimum": resources.MIN_CPUS,
                 "maximum": resources.MAX_CPUS,
                 "description": "CPU time as a number of CPUs (1.5)."},
        "pids": {"type": "integer", "minimum": 1, "maximum": resources.MAX_PIDS,
                 "description": "Processes and threads at once."},
    }, "resources", description=f"Resource limits of {what}; a field left out comes from "
                                "the level above (settings, then the host's default).")


def _settings() -> dict[str, Any]:
    return _object(loader.SETTINGS_KEYS, {
        "timeout": _duration("Max total pipeline duration.", "30m"),
        "max_parallel": {"type": "integer", "minimum": 1,
                         "description": "Max steps to run concurrently. Default: CPU count."},
        "fail_fast": {"type": "boolean", "default": True,
                      "description": "Cancel remaining steps on the first failure."},
        "cache_enabled": {"type": "boolean", "default": True,
                          "description": "Use and record the content-addressed cache."},
        "resources": _resources("every step and service (their default)"),
    }, "settings", description="Pipeline-wide settings.")


def _ready() -> dict[str, Any]:
    obj = _object(loader.READY_KEYS, {
        "tcp": {"type": "integer", "minimum": 1, "maximum": 65535,
                "description": "Ready when this port accepts a connection."},
        "http": {"type": ["string"], "pattern": r"^https?://[^/]",
                 "description": "Ready when this URL answers 2xx/3xx."},
        "command": {**_NONEMPTY, "description": "Ready when this command exits 0 in the "
                                                "service's container."},
        "timeout": _duration("How long to wait for readiness.", "60s"),
    }, "ready", description="How to know the service is ready: exactly one of tcp, http, "
                            "command.")
    obj["oneOf"] = [{"required": [k]} for k in ("tcp", "http", "command")]
    return obj


def _service() -> dict[str, Any]:
    obj = _object(loader.SERVICE_KEYS, {
        "name": {"type": ["string", "number"], "pattern": _NAME,
                 "description": "Unique within the step; the service's host name."},
        "image": {**_NONEMPTY, "description": "Container image of the service."},
        "env": _env("Environment of the service."),
        "commands": _texts("Shell commands the service runs instead of its image's "
                           "entrypoint (not with entrypoint)."),
        "entrypoint": _texts("Argument vector replacing the image's entrypoint (not with "
                             "commands)."),
        "ready": _ready(),
        "secrets": _secret_names("Secrets the service receives (by name)."),
        "resources": _resources("the service's container"),
        "user": {**_USER, "description": "User the service runs as (numeric uid[:gid]). "
                                             "Default: the image's when numeric, else root."},
    }, "service", required=("name", "image"), description="A sidecar container.")
    obj["not"] = {"required": ["commands", "entrypoint"]}
    return obj


def _cache() -> dict[str, Any]:
    return {
        "description": "false: never cache this step; true: cache it even with secrets; "
                       "or cache directories restored between runs.",
        "anyOf": [{"type": "boolean"}, _object(loader.CACHE_KEYS, {
            "paths": _patterns("Directories (relative to the workspace) saved after the "
                               "step and restored before its next run."),
            "key_files": _patterns("Files (gitignore-style globs) whose content keys the "
                                   "cache directories."),
            "enabled": {"type": "boolean", "default": True,
                        "description": "false: never cache this step."},
        }, "cache")]}


def _only() -> dict[str, Any]:
    return _object(loader.ONLY_KEYS, {
        "branches": _patterns("Run only on these branches (globs)."),
        "tags": _patterns("Run only for these tags (globs)."),
        "paths": _patterns("Run only when a file matching these globs changed."),
        "events": _list({"enum": list(conditions.EVENTS)}, "Run only for these events."),
    }, "only", description="Conditional execution; every given filter must match.")


def _step() -> dict[str, Any]:
    return _object(loader.STEP_KEYS, {
        "name": {"type": ["string", "number"], "pattern": _NAME,
                 "description": "Unique step name (letters, digits, _ - .); referenced in "
                                "depends_on and labels (//name)."},
        "image": {**_NONEMPTY, "description": "Container image: name[:tag][@sha256:...]."},
        "commands": _texts("Shell commands run in order (sh -c, stop at the first failure)."),
        "depends_on": _list({"type": ["string", "number"], "pattern": _NAME},
                            "Steps that must pass first; their artifacts are mounted."),
        "artifacts": _patterns("Paths (relative to the workspace) kept as the step's output "
                               "and handed to dependents."),
        "services": _list(_service(), "Sidecar containers running beside the step."),
        "env": _env("Step environment (merged over the global env)."),
        "timeout": _duration("Max duration of this step. Default: the pipeline's."),
        "only": _only(),
        "cache": _cache(),
        "secrets": _secret_names("Secrets the step receives (by name; never in its key)."),
        "inputs": _patterns("Repository files the step sees (gitignore-style globs). "
                            "Default: the whole repository; [] selects no file."),
        "workdir": {"type": ["string", "number"], "pattern": r"^(/(?!\.\.?(/|$))[^/]+)+$",
                    "default": "/workspace",
                    "description": "Absolute, clean working directory in the container (no "
                                   "'//', '.', '..' or trailing '/')."},
        "user": {**_USER, "description": "User the commands run as (numeric uid[:gid]; "
                                         "the workspace's root and the step's secrets are "
                                         "theirs). Default: root (0:0)."},
        "network": {"enum": list(NETWORK_MODES), "default": "default",
                    "description": "default (its own network with egress), none "
                                   "(loopback only) or host."},
        "when": {**_TEXT, "description": "A condition expression, e.g. "
                                         "branch == \"main\" and changed(\"src/**\"); "
                                         "failure() / always() run the step after a "
                                         "failure before it (never cached)."},
        "description": {**_TEXT, "description": "Free text; not part of the cache key."},
        "resources": _resources("the step's container"),
        "matrix": _matrix(),
        "allow_failure": {
            "description": "true: a failure is a warning and the run still passes; or the "
                           "exit codes allowed to fail. Never cached.",
            "anyOf": [{"type": "boolean"},
                      _list({"type": "integer", "minimum": 1, "maximum": 255},
                            "Exit codes that may fail.")]},
        "retry": _retry(),
        "reports": _object(loader.REPORTS_KEYS, {
            "junit": _patterns("JUnit XML files the step writes (paths or globs relative "
                               "to the workspace), read however it exits: totals on its "
                               "[PASS]/[FAIL] line, stored with its result."),
        }, "reports", description="Test reports the step writes."),
        "context": _list({"enum": list(CONTEXT_VARS)},
                         "Run context the step's container gets as variables (only these "
                         "enter its cache key)."),
    }, "step", required=("name", "image"), description="One unit of work in a container.")


_MATRIX_VALUE = {"type": ["string", "number"], "pattern": r"^[A-Za-z0-9_.:/+@-]+$"}


def _matrix() -> dict[str, Any]:
    """``matrix:``: variables (env names) to lists of values, plus exclude/include
    (``loader.MATRIX_KEYS``) lists of ``{VAR: value}`` mappings."""
    combination = {"type": "object", "propertyNames": {"pattern": _ENV_NAME},
                   "additionalProperties": _MATRIX_VALUE}
    props = {"exclude": _list(combination, "Combinations to drop (every pair must match)."),
             "include": _list(combination, "Extra combinations to add.")}
    assert set(props) == set(loader.MATRIX_KEYS), "kata/schema.py: matrix keys"
    return {"type": "object", "description": "Run the step once per combination of its "
                                             "variables (the cartesian product).",
            "properties": props, "propertyNames": {"pattern": _ENV_NAME},
            "additionalProperties": {**_list(_MATRIX_VALUE, "A variable's values."),
                                     "minItems": 1}}


def _retry() -> dict[str, Any]:
    on = _list({"anyOf": [{"const": "timeout"},
                          _object(("exit_code",), {"exit_code": {"type": "integer",
                                                                 "minimum": 1,
                                                                 "maximum": 255}},
                                  "retry.on entry")]},
               "Retry only these failures (default: any failure).")
    return {"description": "Rerun a failed step up to this many more times (each attempt "
                           "in a fresh container).",
            "anyOf": [{"type": "integer", "minimum": 1, "maximum": 10},
                      _object(loader.RETRY_KEYS, {
                          "max": {"type": "integer", "minimum": 1, "maximum": 10,
                                  "description": "The most extra attempts."},
                          "on": on}, "retry", required=("max",))]}


def _trigger() -> dict[str, Any]:
    trigger = _object(loader.TRIGGER_KEYS, {
        "event": {"enum": list(conditions.EVENTS), "description": "The git event."},
        "branches": _patterns("Branch patterns (globs)."),
        "paths": _patterns("Run only when a file matching these globs changed."),
        "actions": _list({"enum": list(conditions.PR_ACTIONS)}, "Pull request actions."),
        "pattern": {**_TEXT, "description": "Tag name pattern (glob)."},
    }, "trigger", description="When the pipeline runs (kata run --event ...).")
    # only a pull request has an action: actions on another event could never match
    trigger["if"] = {"required": ["event"],
                     "properties": {"event": {"not": {"const": "pull_request"}}}}
    trigger["then"] = {"properties": {"actions": {"maxItems": 0}}}
    return trigger


def config_schema() -> dict[str, Any]:
    """The schema as a JSON-ready dict (draft 2020-12)."""
    top = _object(loader.TOP_KEYS, {
        "pipeline": {**_NONEMPTY, "description": "Pipeline name, used in logs and history.",
                     "default": "pipeline"},
        "settings": _settings(),
        "env": _env("Environment variables of every step."),
        "steps": {**_list(_step(), "The steps, in any order; depends_on orders them."),
                  "minItems": 1},
        "triggers": _list(_trigger(), "When the pipeline runs as an event; any one "
                                      "matching trigger runs it."),
    }, "the config", required=("steps",))
    # the loader ignores top-level x- keys (Compose's extension fields, where anchors live)
    top["patternProperties"] = {"^" + loader.EXTENSION_PREFIX: {
        "description": "Ignored by kata: a place for YAML anchors (x-base: &base {...})."}}
    return {"$schema": "https://json-schema.org/draft/2020-12/schema",
            "title": "Kata CI pipeline (.kata-ci.yaml)", **top}


def render() -> str:
    """The schema as the shipped file's text (sorted keys, two-space indent, newline)."""
    return json.dumps(config_schema(), indent=2, sort_keys=True) + "\n"


def shipped_text() -> str:
    """The schema shipped in the wheel, as text (what ``kata schema`` prints)."""
    return SHIPPED.read_text(encoding="utf-8")


if __name__ == "__main__":
    if sys.argv[1:] == ["--write"]:
        SHIPPED.parent.mkdir(exist_ok=True)
        SHIPPED.write_text(render(), encoding="utf-8")
    else:
        sys.stdout.write(render())
