"""The JSON Schema of `.kata-ci.yaml`: shipped, printed, true to the loader.

Every example config in the repository and every YAML example of the product page
(copied into tests/fixtures/overview/) passes both; a corpus of bad configs fails both;
generated configs never pass the loader while failing the schema (an editor must not
underline a config kata runs), and every config the schema rejects the loader rejects.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import jsonschema
import pytest
import yaml
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from kata import loader
from kata.errors import KataError
from kata.loader import load_text
from kata.schema import config_schema, render, shipped_text

ROOT = Path(__file__).resolve().parent.parent
VALIDATOR = jsonschema.Draft202012Validator(config_schema())
STUB_STEP = {"name": "stub", "image": "busybox"}


def schema_errors(text: str) -> list[str]:
    return [e.message for e in VALIDATOR.iter_errors(yaml.safe_load(text))]


def loader_reason(text: str) -> str:
    """"" when the loader accepts ``text``, else its error's reason."""
    try:
        load_text(text, file="t.yaml")
    except KataError as err:
        return err.reason
    return ""


def test_the_shipped_schema_is_the_generated_one() -> None:
    # a change of the loader's keys shows as a diff of kata/data/kata-ci.schema.json:
    # regenerate it with `python3 -m kata.schema --write`
    assert shipped_text() == render()
    jsonschema.Draft202012Validator.check_schema(json.loads(shipped_text()))


def test_kata_schema_prints_it(tmp_path) -> None:
    r = subprocess.run([sys.executable, "-m", "kata", "schema"], cwd=tmp_path,
                       env={**os.environ, "PYTHONPATH": str(ROOT)}, capture_output=True,
                       text=True, timeout=60)
    assert (r.returncode, r.stderr) == (0, "")
    doc = json.loads(r.stdout)
    assert doc == config_schema()
    assert doc["required"] == ["steps"]
    assert set(doc["properties"]) == set(loader.TOP_KEYS)
    step = doc["properties"]["steps"]["items"]
    assert set(step["properties"]) == set(loader.STEP_KEYS)
    assert step["properties"]["network"]["enum"] == ["default", "none", "host"]


def test_a_loader_key_without_schema_is_refused(monkeypatch) -> None:
    monkeypatch.setattr(loader, "STEP_KEYS", loader.STEP_KEYS + ("gpu",))
    with pytest.raises(AssertionError, match="'gpu'"):
        config_schema()


def _repository_configs() -> list[Path]:
    found = sorted(ROOT.glob("examples/**/.kata-ci.yaml"))
    found += sorted(p for p in (ROOT / "tests" / "fixtures").glob("*.yaml"))
    return found


def test_the_repository_has_example_configs() -> None:
    names = {p.relative_to(ROOT).as_posix() for p in _repository_configs()}
    assert {"examples/hello/.kata-ci.yaml", "tests/fixtures/quickstart.yaml"} <= names


@pytest.mark.parametrize("path", _repository_configs(), ids=lambda p: p.relative_to(ROOT).as_posix())
def test_every_example_config_passes_schema_and_loader(path: Path) -> None:
    text = path.read_text()
    assert schema_errors(text) == []
    assert loader_reason(text) == ""


OVERVIEW = sorted((ROOT / "tests" / "fixtures" / "overview").glob("*.yaml"))


def test_the_overview_examples_are_all_there() -> None:
    assert [p.stem for p in OVERVIEW] == ["caching", "pipeline-config", "quickstart", "secrets",
                                          "steps", "triggers"]


@pytest.mark.parametrize("path", OVERVIEW, ids=lambda p: p.stem)
def test_the_overview_examples_pass_schema_and_loader(path: Path) -> None:
    doc = yaml.safe_load(path.read_text())
    if not doc.get("steps"):
        doc["steps"] = [STUB_STEP]  # the page elides them ("# ... step definitions")
    text = yaml.safe_dump(doc, sort_keys=False)
    assert schema_errors(text) == []
    assert loader_reason(text) == ""


GOOD = [
    "steps: [{name: a, image: busybox}]",
    "pipeline: p\nsettings: {timeout: 90, max_parallel: 2, fail_fast: no, cache_enabled: true}\n"
    "steps: [{name: a, image: busybox, timeout: 1h30m}]",
    "env: {A: 1, B: true, C: ~, D: x}\nsteps: [{name: a.b-c_1, image: 'reg:5000/x/y:1', "
    "commands: [echo 1, 2], env: {E: 2.5}}]",
    "steps:\n- {name: a, image: i, artifacts: [dist/], inputs: ['src/**', '!*.md'],"
    " cache: {paths: [node_modules/], key_files: [package-lock.json]}}\n"
    "- {name: b, image: i, depends_on: [a], cache: false, network: none, workdir: /src,"
    " user: '1000:1000', when: 'branch == \"main\"', description: d, secrets: [TOKEN]}",
    "steps:\n- name: a\n  image: i\n  services:\n  - {name: db, image: pg, ready: {tcp: 5432,"
    " timeout: 30s}, secrets: [PW], env: {X: y}}\n  - {name: web, image: w, commands: [serve],"
    " ready: {http: 'http://web:80/'}}\n  - {name: q, image: q, entrypoint: [q, -v],"
    " ready: {command: 'q ping'}}\n  only: {branches: [main], tags: ['v*'], paths: ['**'],"
    " events: [push, tag]}",
    "triggers:\n- {event: push, branches: [main], paths: [src/**]}\n"
    "- {event: pull_request, actions: [opened, closed]}\n- {event: tag, pattern: 'v*'}\n"
    "steps: [{name: a, image: i}]",
    "steps: [{name: a, image: i, cache: {enabled: false}}]",
    "settings: {resources: {memory: 2GiB, cpus: 1.5, pids: 100}}\nsteps: [{name: a, image: i,"
    " resources: {memory: 512Mi}, services: [{name: s, image: j, resources: {cpus: 1}}]}]",
    "steps: [{name: a, image: i, resources: {memory: 7000000}}]",
    "steps:\n- &a {name: a, image: i, commands: [x]}\n- {<<: *a, name: b}",
    "x-base: &b {image: i, env: {A: '1'}}\nx-list: [1]\nsteps: [{<<: *b, name: a}]",
]

BAD = [  # (config, the loader's reason): the schema must refuse each too
    ("triggers: [{event: push, actions: [opened]}]\nsteps: [{name: a, image: i}]", "config.value"),
    ("steps: [{name: a, image: i, imgae: j}]", "config.unknown_key"),
    ("stages: []\nsteps: [{name: a, image: i}]", "config.unknown_key"),
    ("pipeline: p", "config.no_steps"),
    ("steps: []", "config.no_steps"),
    ("steps: {a: {image: i}}", "config.type"),
    ("steps: [{name: a}]", "config.missing_key"),
    ("steps: [{image: i}]", "config.missing_key"),
    ("steps: [{name: a, image: i, commands: echo}]", "config.type"),
    ("steps: [{name: a, image: i, commands: [[echo]]}]", "config.type"),
    ("steps: [{name: a, image: i, commands: [yes]}]", "config.type"),
    ("steps: [{name: a, image: i, env: {A: [1]}}]", "config.type"),
    ("steps: [{name: a, image: i, env: {1A: x}}]", "config.value"),
    ("steps: [{name: 'a b', image: i}]", "config.step_name"),
    ("steps: [{name: a, image: i, timeout: 0}]", "config.value"),
    ("steps: [{name: a, image: i, timeout: 1.5h}]", "config.duration"),
    ("steps: [{name: a, image: i, timeout: 1.5}]", "config.duration"),
    ("steps: [{name: a, image: i, timeout: ''}]", "config.duration"),
    ("steps: [{name: a, image: i, timeout: ' '}]", "config.duration"),
    ("steps: [{name: a, image: i, network: bridge}]", "config.value"),
    ("steps: [{name: a, image: i, workdir: src}]", "config.value"),
    ("steps: [{name: a, image: i, workdir: /workspace//x}]", "config.value"),
    ("steps: [{name: a, image: i, workdir: /src/}]", "config.value"),
    ("steps: [{name: a, image: i, workdir: /src/../x}]", "config.value"),
    ("steps: [{name: a, image: i, user: ''}]", "config.value"),
    ("steps: [{name: a, image: i, secrets: [bad-name]}]", "config.value"),
    ("steps: [{name: a, image: i, cache: {paths: x}}]", "config.type"),
    ("steps: [{name: a, image: i, cache: {pathz: [x]}}]", "config.unknown_key"),
    ("steps: [{name: a, image: i, cache: yes please}]", "config.type"),
    ("steps: [{name: a, image: i, only: {branch: [main]}}]", "config.unknown_key"),
    ("steps: [{name: a, image: i, only: {events: [merge]}}]", "config.value"),
    ("steps: [{name: a, image: i, services: [{name: db}]}]", "config.missing_key"),
    ("steps: [{name: a, image: i, services: [{name: db, image: p, commands: [x],"
     " entrypoint: [y]}]}]", "config.value"),
    ("steps: [{name: a, image: i, services: [{name: db, image: p, ready: {}}]}]",
     "config.value"),
    ("steps: [{name: a, image: i, services: [{name: db, image: p, ready: {tcp: 1,"
     " http: 'http://x'}}]}]", "config.value"),
    ("steps: [{name: a, image: i, services: [{name: db, image: p, ready: {tcp: 70000}}]}]",
     "config.value"),
    ("steps: [{name: a, image: i, services: [{name: db, image: p, ready: {http: 'ftp://x'}}]}]",
     "config.value"),
    ("settings: {max_parallel: 0}\nsteps: [{name: a, image: i}]", "config.value"),
    ("settings: {fail_fast: maybe}\nsteps: [{name: a, image: i}]", "config.type"),
    ("settings: {parallel: 2}\nsteps: [{name: a, image: i}]", "config.unknown_key"),
    ("triggers: [{event: merge}]\nsteps: [{name: a, image: i}]", "config.value"),
    ("triggers: [{event: pull_request, actions: [reopened]}]\nsteps: [{name: a, image: i}]",
     "config.value"),
    ("triggers: {event: push}\nsteps: [{name: a, image: i}]", "config.type"),
    ("pipeline: ''\nsteps: [{name: a, image: i}]", "config.value"),
    ("env: [A]\nsteps: [{name: a, image: i}]", "config.type"),
    ("steps: [{name: a, image: i, resources: {memory: 2 gigs}}]", "config.value"),
    ("steps: [{name: a, image: i, resources: {memory: 1000}}]", "config.value"),
    ("steps: [{name: a, image: i, resources: {cpus: 0}}]", "config.value"),
    ("steps: [{name: a, image: i, resources: {cpus: many}}]", "config.type"),
    ("steps: [{name: a, image: i, resources: {pids: 0}}]", "config.value"),
    ("steps: [{name: a, image: i, resources: {disk: 1G}}]", "config.unknown_key"),
    ("settings: {resources: [1]}\nsteps: [{name: a, image: i}]", "config.type"),
]


@pytest.mark.parametrize("text", GOOD)
def test_good_configs_pass_both(text: str) -> None:
    assert loader_reason(text) == ""
    assert schema_errors(text) == []


@pytest.mark.parametrize("text,reason", BAD, ids=[b[0][:50] for b in BAD])
def test_bad_configs_fail_both(text: str, reason: str) -> None:
    assert loader_reason(text) == reason
    assert schema_errors(text) != []


# ------------------------------------------------------------ generated configs

_SCALARS = st.one_of(st.sampled_from(["a", "busybox", "x/y:1", "/src", "src/**", "90s", "1h",
                                      "main", "push", "none", "host", "opened", "v*", "A_B",
                                      "", " ", "bad name", "1.5h", "http://h:80/"]),
                     st.integers(-2, 70000), st.booleans(), st.none())
_VALUES = st.recursive(_SCALARS, lambda inner: st.one_of(
    st.lists(inner, max_size=3),
    st.dictionaries(st.sampled_from(["A", "tcp", "http", "command", "paths", "enabled",
                                     "name", "image", "events", "branches"]), inner, max_size=3)),
    max_leaves=6)
_STEP_VALUE = {
    "commands": st.lists(_SCALARS, max_size=2), "artifacts": st.lists(_SCALARS, max_size=2),
    "inputs": st.lists(_SCALARS, max_size=2), "secrets": st.lists(_SCALARS, max_size=2),
    "env": st.dictionaries(st.sampled_from(["A", "B_1", "1x", "-"]), _SCALARS, max_size=2),
    "timeout": _SCALARS, "workdir": _SCALARS, "user": _SCALARS, "network": _SCALARS,
    "description": _SCALARS,
    "resources": st.fixed_dictionaries({}, optional={
        "memory": st.one_of(_SCALARS, st.sampled_from(["2GiB", "512Mi", "1.5G", "5MB"])),
        "cpus": st.one_of(_SCALARS, st.floats(0, 2000, allow_nan=False)),
        "pids": _SCALARS}),
    "cache": st.one_of(st.booleans(), st.fixed_dictionaries({}, optional={
        "paths": st.lists(_SCALARS, max_size=2), "key_files": st.lists(_SCALARS, max_size=2),
        "enabled": _SCALARS})),
    "only": st.fixed_dictionaries({}, optional={
        k: st.lists(_SCALARS, max_size=2) for k in loader.ONLY_KEYS}),
    "services": st.lists(st.fixed_dictionaries({"name": st.sampled_from(["db", "q", "bad name"])},
                                               optional={"image": _SCALARS, "env": _VALUES,
                                                         "commands": _VALUES,
                                                         "entrypoint": _VALUES,
                                                         "ready": _VALUES,
                                                         "secrets": _VALUES}),
                         max_size=2, unique_by=lambda s: s["name"]),
}


@st.composite
def configs(draw) -> dict:
    step = {"name": draw(st.sampled_from(["a", "a.b", "bad name", 7])),
            "image": draw(st.sampled_from(["busybox", "", "x/y:1"]))}
    for key in draw(st.lists(st.sampled_from(sorted(_STEP_VALUE) + ["bogus", "depends_on"]),
                             max_size=4, unique=True)):
        if key == "bogus":
            step[key] = 1
        elif key == "depends_on":
            step[key] = []
        else:
            step[key] = draw(_STEP_VALUE[key])
    if draw(st.booleans()):
        del step[draw(st.sampled_from(["name", "image"]))]
    doc: dict = {"steps": [step]}
    if draw(st.booleans()):
        doc["settings"] = draw(st.fixed_dictionaries({}, optional={
            "timeout": _SCALARS, "max_parallel": _SCALARS, "fail_fast": _SCALARS,
            "cache_enabled": _SCALARS}))
    if draw(st.booleans()):
        doc["env"] = draw(_VALUES)
    if draw(st.booleans()):
        doc["triggers"] = draw(st.lists(st.fixed_dictionaries({}, optional={
            "event": _SCALARS, "branches": _VALUES, "actions": _VALUES, "pattern": _SCALARS,
            "paths": _VALUES}), max_size=2))
    return doc


@settings(max_examples=250, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(configs())
def test_schema_and_loader_agree_on_generated_configs(doc: dict) -> None:
    text = yaml.safe_dump(doc, sort_keys=False)
    reason = loader_reason(text)
    errors = schema_errors(text)
    if not reason:
        assert errors == [], f"kata accepts what the schema refuses: {errors}\n{text}"
    if errors:
        assert reason, f"the schema refuses what kata accepts: {errors}\n{text}"
    if reason in ("config.unknown_key", "config.type", "config.missing_key",
                  "config.no_steps", "config.step_name", "config.duration"):
        assert errors, f"kata refuses ({reason}) what the schema accepts:\n{text}"


def _yaml_blocks(path: Path) -> list[str]:
    text = path.read_text()
    return [b.split("```", 1)[0] for b in text.split("```yaml\n")[1:]]


def test_the_readme_shows_a_complete_pipeline_that_passes_both() -> None:
    (block,) = [b for b in _yaml_blocks(ROOT / "README.md") if "steps:" in b]
    assert schema_errors(block) == []
    assert loader_reason(block) == ""
    pipeline = load_text(block)
    used = {k for s in pipeline.steps for k in ("services", "cache", "secrets", "only",
                                                 "inputs", "network", "artifacts")
            if getattr(s, k)}
    assert used == {"services", "cache", "secrets", "only", "inputs", "network", "artifacts"}
    assert pipeline.triggers and pipeline.settings.max_parallel == 4


def test_docs_config_names_every_key_the_loader_knows() -> None:
    text = (ROOT / "docs" / "config.md").read_text()
    tables = [value for name, value in vars(loader).items() if name.endswith("_KEYS")]
    assert loader.RESOURCES_KEYS in tables and loader.STEP_KEYS in tables
    missing = [k for table in tables for k in table if f"`{k}`" not in text]
    assert missing == []
