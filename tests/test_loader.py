"""The loader: every field of the reference, and every error with its reason and position."""

from __future__ import annotations

import textwrap
from pathlib import Path

import pytest

from kata.conditions import Context
from kata.errors import KataError
from kata.loader import find_config, load_pipeline, load_text
from kata.model import Duration, ImageRef

FIXTURES = Path(__file__).parent / "fixtures"


def err(text: str) -> KataError:
    with pytest.raises(KataError) as info:
        load_text(textwrap.dedent(text), file="c.yaml")
    e = info.value
    assert e.position is not None and e.position.file == "c.yaml"
    return e


def where(e: KataError) -> tuple[str, int, int]:
    return e.reason, e.position.line, e.position.column


def test_service_fixture_loads_every_field() -> None:
    p = load_pipeline(FIXTURES / "service.yaml")
    assert p.name == "my-service"
    assert p.settings.timeout == Duration(millis=15 * 60_000)
    assert (p.settings.max_parallel, p.settings.fail_fast, p.settings.cache_enabled) == (4, True, True)
    assert p.env == (("NODE_ENV", "ci"), ("CI", "true"))
    assert [s.name for s in p.steps] == ["build", "unit-test", "integration-test", "deploy"]
    build, _, integ, deploy = p.steps
    assert build.image == ImageRef(registry="docker.io", repository="library/golang", tag="1.22-alpine")
    assert build.env == (("CGO_ENABLED", "0"),) and build.timeout == Duration(millis=300_000)
    assert build.inputs == ("src/**", "go.mod") and build.artifacts == ("bin/",)
    assert build.cache.paths == (".gomodcache/",) and build.cache.key_files == ("go.mod",)
    assert integ.services[0].name == "postgres" and integ.services[0].env == (("POSTGRES_PASSWORD", "test"),)
    assert str(integ.services[0].image) == "docker.io/library/postgres:16-alpine"
    assert integ.network == "none"
    assert deploy.secrets == ("DEPLOY_TOKEN", "AWS_ACCESS_KEY_ID")
    assert deploy.cache.enabled is False and deploy.workdir == "/src" and deploy.user == "1000"
    assert deploy.depends_on == ("unit-test", "integration-test")
    cond = deploy.condition
    assert cond.evaluate(Context(event="push", branch="main", changed=("src/a.go",)))
    assert not cond.evaluate(Context(event="push", branch="dev", changed=("src/a.go",)))
    assert not cond.evaluate(Context(event="push", branch="main", changed=("docs/x.md",)))
    assert len(p.triggers) == 3 and p.triggers[2].pattern == "v*"
    assert (deploy.position.line, deploy.position.column) == (57, 11)


def test_defaults() -> None:
    p = load_text("steps: [{name: a, image: alpine}]")
    assert p.settings.timeout == Duration(millis=30 * 60_000)
    assert p.settings.max_parallel is None and p.settings.fail_fast and p.settings.cache_enabled
    s = p.steps[0]
    assert s.workdir == "/workspace" and s.network == "default" and s.cache.enabled
    assert s.inputs is None and s.condition is None and s.timeout is None
    assert str(s.image) == "docker.io/library/alpine:latest"


@pytest.mark.parametrize("text,registry,repo,tag,digest", [
    ("node:20-alpine", "docker.io", "library/node", "20-alpine", None),
    ("library/node", "docker.io", "library/node", "latest", None),
    ("bitnami/redis:7", "docker.io", "bitnami/redis", "7", None),
    ("ghcr.io/o/r/x:1.0", "ghcr.io", "o/r/x", "1.0", None),
    ("localhost:5000/app", "localhost:5000", "app", "latest", None),
    ("localhost/app:v", "localhost", "app", "v", None),
    ("alpine@sha256:" + "a" * 64, "docker.io", "library/alpine", None, "sha256:" + "a" * 64),
    ("alpine:3@sha256:" + "b" * 64, "docker.io", "library/alpine", "3", "sha256:" + "b" * 64),
])
def test_image_refs_normalise(text, registry, repo, tag, digest) -> None:
    ref = ImageRef.parse(text)
    assert (ref.registry, ref.repository, ref.tag, ref.digest) == (registry, repo, tag, digest)
    assert ref.pinned == (digest is not None)
    assert ImageRef.parse(str(ref)) == ref


@pytest.mark.parametrize("bad", ["", "Node:20", "node:", "a b", "alpine@sha256:abc", "-x", "x:y:z",
                                 "alpine@md5:" + "a" * 32, "Upper/case", "Team/app:1"])
def test_bad_image_refs(bad) -> None:
    e = err(f"steps:\n  - name: a\n    image: '{bad}'\n")
    assert where(e) == ("config.image_ref", 3, 12)


@pytest.mark.parametrize("text,ms", [("90s", 90_000), ("15m", 900_000), ("1h30m", 5_400_000),
                                     ("1h", 3_600_000), ("250ms", 250), ("2m5s", 125_000)])
def test_durations(text, ms) -> None:
    assert Duration.parse(text).millis == ms
    assert Duration.parse(str(Duration.parse(text))).millis == ms


def test_integer_duration_is_seconds() -> None:
    assert load_text("settings: {timeout: 90}\nsteps: [{name: a, image: x}]").settings.timeout.millis == 90_000


@pytest.mark.parametrize("bad", ["5x", "m", "1.5h", "h1", "30 m", "''", "-5s"])
def test_bad_durations(bad) -> None:
    e = err(f"settings:\n  timeout: {bad}\nsteps: [{{name: a, image: x}}]\n")
    assert where(e) == ("config.duration", 2, 12)


@pytest.mark.parametrize("bad", ["nobody", "1000:x", "-1", "1000:", ":1000", "1:2:3", "99999999999"])
def test_a_user_is_numeric_uid_or_uid_gid(bad) -> None:
    # a name failed only when the step started (runtime.bad_user); now where it is written
    e = err(f"steps:\n  - name: a\n    image: x\n    user: '{bad}'\n")
    assert where(e) == ("config.value", 4, 11)
    e = err(f"steps:\n  - name: a\n    image: x\n    services:\n"
            f"      - {{name: db, image: y, user: '{bad}'}}\n")
    assert where(e)[0] == "config.value" and "numeric" in e.message
    for good in ("1000", "1000:1001", "0"):
        assert load_text(f"steps:\n  - name: a\n    image: x\n    user: '{good}'\n",
                         "p").steps[0].user == good


CASES = {
    "yaml_syntax": ("steps: [\n  - name: a\n", "config.yaml_syntax", 2, 3),
    "yaml_tab": ("steps:\n\t- name: a\n", "config.yaml_syntax", 2, 1),
    "yaml_two_docs": ("steps: []\n---\nx: 1\n", "config.yaml_syntax", 2, 1),
    "yaml_bad_char": ("pipeline: a\x07\n", "config.yaml_syntax", 1, 12),
    "duplicate_top": ("pipeline: a\npipeline: b\nsteps: [{name: a, image: x}]\n", "config.duplicate_key", 2, 1),
    "duplicate_step_key": ("steps:\n  - name: a\n    image: x\n    image: y\n", "config.duplicate_key", 4, 5),
    "duplicate_env": ("env: {A: 1, A: 2}\nsteps: [{name: a, image: x}]\n", "config.duplicate_key", 1, 13),
    "unknown_top": ("pipline: a\nsteps: [{name: a, image: x}]\n", "config.unknown_key", 1, 1),
    "unknown_step": ("steps:\n  - name: a\n    image: x\n    depend_on: [b]\n", "config.unknown_key", 4, 5),
    "unknown_settings": ("settings: {max_paralel: 2}\nsteps: [{name: a, image: x}]\n", "config.unknown_key", 1, 12),
    "type_steps": ("steps: build\n", "config.type", 1, 8),
    "type_root": ("- a\n- b\n", "config.type", 1, 1),
    "type_commands": ("steps:\n  - name: a\n    image: x\n    commands: npm test\n", "config.type", 4, 15),
    "type_command_item": ("steps:\n  - name: a\n    image: x\n    commands: [{a: b}]\n", "config.type", 4, 16),
    "type_bool": ("settings: {fail_fast: maybe}\nsteps: [{name: a, image: x}]\n", "config.type", 1, 23),
    "type_int": ("settings: {max_parallel: two}\nsteps: [{name: a, image: x}]\n", "config.type", 1, 26),
    "type_env_value": ("env: {A: [1]}\nsteps: [{name: a, image: x}]\n", "config.type", 1, 10),
    "type_key": ("steps: [{name: a, image: x, [1]: 2}]\n", "config.type", 1, 29),
    "type_name_null": ("steps:\n  - name:\n    image: x\n", "config.type", 2, 10),
    "type_custom_tag": ("steps: [{name: !foo a, image: x}]\n", "config.type", 1, 16),
    "value_max_parallel": ("settings: {max_parallel: 0}\nsteps: [{name: a, image: x}]\n", "config.value", 1, 26),
    "value_network": ("steps: [{name: a, image: x, network: bridge}]\n", "config.value", 1, 38),
    "value_workdir": ("steps: [{name: a, image: x, workdir: src}]\n", "config.value", 1, 38),
    "value_secret": ("steps: [{name: a, image: x, secrets: ['A-B']}]\n", "config.value", 1, 39),
    "value_event": ("triggers: [{event: commit}]\nsteps: [{name: a, image: x}]\n", "config.value", 1, 20),
    "missing_image": ("steps:\n  - name: a\n", "config.missing_key", 2, 5),
    "missing_name": ("steps:\n  - image: x\n", "config.missing_key", 2, 5),
    "step_name": ("steps: [{name: 'a b', image: x}]\n", "config.step_name", 1, 16),
    "duplicate_step": ("steps:\n  - {name: a, image: x}\n  - {name: a, image: y}\n", "config.duplicate_step", 3, 12),
    "unknown_dependency": ("steps:\n  - {name: build, image: x}\n  - {name: t, image: x, depends_on: [biuld]}\n",
                           "config.unknown_dependency", 3, 38),
    "self_cycle": ("steps:\n  - {name: a, image: x, depends_on: [a]}\n", "config.cycle", 2, 38),
    "empty": ("", "config.empty", 1, 1),
    "only_comments": ("# nothing\n", "config.empty", 1, 1),
    "no_steps_key": ("pipeline: a\n", "config.no_steps", 1, 1),
    "no_steps_empty": ("pipeline: a\nsteps: []\n", "config.no_steps", 2, 8),
    "no_steps_null": ("pipeline: a\nsteps:\n", "config.no_steps", 2, 7),
    "condition": ("steps:\n  - name: a\n    image: x\n    when: branch = 'main'\n", "config.condition", 4, 18),
    "condition_quoted": ("steps:\n  - name: a\n    image: x\n    when: \"tag ~ 'v'\"\n", "config.condition", 4, 16),
    "only_event": ("steps: [{name: a, image: x, only: {events: [push, pr]}}]\n", "config.value", 1, 51),
    "inputs_glob": ("steps: [{name: a, image: x, inputs: ['!']}]\n", "config.value", 1, 38),
    "only_unknown": ("steps: [{name: a, image: x, only: {branch: [main]}}]\n", "config.unknown_key", 1, 36),
    "cache_type": ("steps: [{name: a, image: x, cache: 3}]\n", "config.type", 1, 36),
    "service_dup": ("steps: [{name: a, image: x, services: [{name: db, image: p}, {name: db, image: p}]}]\n",
                    "config.duplicate_key", 1, 69),
}


@pytest.mark.parametrize("case", sorted(CASES))
def test_errors_have_reason_and_position(case) -> None:
    text, reason, line, col = CASES[case]
    assert where(err(text)) == (reason, line, col)


def test_did_you_mean() -> None:
    assert "depends_on" in err(CASES["unknown_step"][0]).message
    assert "'build'" in err(CASES["unknown_dependency"][0]).message


def test_cycle_names_steps_in_order() -> None:
    e = err("""\
        steps:
          - {name: a, image: x, depends_on: [c]}
          - {name: b, image: x, depends_on: [a]}
          - {name: c, image: x, depends_on: [b]}
          - {name: d, image: x, depends_on: [c]}
        """)
    assert e.reason == "config.cycle"
    assert e.obj in ("a -> b -> c -> a", "b -> c -> a -> b", "c -> a -> b -> c")


def test_merge_keys_work_and_explicit_keys_win() -> None:
    p = load_text("steps:\n  - &b {name: a, image: alpine, commands: [make]}\n"
                  "  - {<<: *b, name: c, commands: [test]}\n")
    assert p.steps[1].image == p.steps[0].image and p.steps[1].commands == ("test",)


def test_a_merged_mapping_is_walked_once_however_often_it_is_merged(monkeypatch) -> None:
    """Anchors that merge the anchor before them twice: 2^n walks of n lines of YAML
    (tests/test_trust_e2e.py pushes 45 of them to a hook server). Each mapping merged in is
    walked once per file, and the env is still what YAML means."""
    from kata import loader

    calls = 0
    pairs = loader._Walker.pairs

    def counted(self, *args, **kwargs):  # noqa: ANN001, ANN002, ANN003, ANN202
        nonlocal calls
        calls += 1
        return pairs(self, *args, **kwargs)

    monkeypatch.setattr(loader._Walker, "pairs", counted)
    depth = 18
    lines = ['x-m0: &m0 {K0: "0"}'] + [
        f'x-m{i}: &m{i} {{<<: [*m{i - 1}, *m{i - 1}], K{i}: "{i}"}}' for i in range(1, depth + 1)]
    p = load_text("\n".join(lines) + f"\nsteps: [{{name: a, image: x, env: {{<<: *m{depth}}}}}]\n")
    assert dict(p.steps[0].env) == {f"K{i}": str(i) for i in range(depth + 1)}
    assert calls < 100, calls  # it was 2^19


def test_merges_adding_up_to_too_many_keys_are_refused_at_their_position() -> None:
    from kata.loader import MERGE_LIMIT

    many = ", ".join(["*a"] * (MERGE_LIMIT // 1000 + 1))
    e = err("x-a: &a {" + ", ".join(f"A{i}: x" for i in range(1000)) + "}\n"
            f"steps: [{{name: a, image: x, env: {{<<: [{many}]}}}}]\n")
    assert where(e) == ("config.too_large", 2, 39)  # the merge's list
    assert f"more than {MERGE_LIMIT:,} keys" in e.message


def test_env_values_keep_their_text() -> None:
    p = load_text("env: {A: 1.50, B: true, C: ~, D: 0x10}\nsteps: [{name: a, image: x}]")
    assert dict(p.env) == {"A": "1.50", "B": "true", "C": "", "D": "0x10"}


def test_missing_file_and_directory(tmp_path) -> None:
    with pytest.raises(KataError) as info:
        load_pipeline(tmp_path / "nope.yaml")
    assert info.value.reason == "config.not_found"
    with pytest.raises(KataError) as info:
        load_pipeline(tmp_path)
    assert info.value.reason == "config.not_a_file"  # there, but a directory: said so


def test_not_utf8(tmp_path) -> None:
    f = tmp_path / "c.yaml"
    f.write_bytes(b"pipeline: a\nsteps: \xff\n")
    with pytest.raises(KataError) as info:
        load_pipeline(f)
    assert (info.value.reason, info.value.position.line, info.value.position.column) == \
        ("config.yaml_syntax", 2, 8)


def test_find_config_walks_up_to_the_repo_root(tmp_path) -> None:
    (tmp_path / ".git").mkdir()
    (tmp_path / ".kata-ci.yaml").write_text("steps: [{name: a, image: x}]\n")
    sub = tmp_path / "a" / "b"
    sub.mkdir(parents=True)
    assert find_config(sub) == (tmp_path / ".kata-ci.yaml").resolve()
    assert find_config(sub, explicit=tmp_path / ".kata-ci.yaml") == tmp_path / ".kata-ci.yaml"
    with pytest.raises(KataError) as info:
        find_config(sub, explicit=sub / "x.yaml")
    assert info.value.reason == "config.not_found"


def test_find_config_stops_at_the_repo_root(tmp_path) -> None:
    (tmp_path / ".kata-ci.yaml").write_text("steps: [{name: a, image: x}]\n")
    repo = tmp_path / "repo"
    (repo / ".git").mkdir(parents=True)
    with pytest.raises(KataError) as info:
        find_config(repo)
    assert info.value.reason == "config.not_found"


def test_yaml_as_users_write_it():
    """env values (and names) are their source text; top-level x- keys hold anchors."""
    p = load_text(
        "x-base: &base\n"
        "  image: alpine\n"
        "  env: {RELEASED: 2024-01-02}\n"
        "x-commands: &cmds [echo hi]\n"
        "env: {DATE: 2024-01-02, VERSION: 1.10, DEBUG: yes, ON: off, HEX: 0x1F, EMPTY: ,\n"
        "      WHEN: 2024-01-02T10:00:00Z, NONE: null}\n"
        "steps:\n"
        "  - <<: *base\n"
        "    name: a\n"
        "    commands: *cmds\n"
        "    artifacts: ['dist/*.whl', 'dist/']\n")
    assert dict(p.env) == {"DATE": "2024-01-02", "VERSION": "1.10", "DEBUG": "yes", "ON": "off",
                           "HEX": "0x1F", "EMPTY": "", "WHEN": "2024-01-02T10:00:00Z",
                           "NONE": ""}
    (step,) = p.steps
    assert dict(step.env) == {"RELEASED": "2024-01-02"} and step.commands == ("echo hi",)
    assert step.artifacts == ("dist/*.whl", "dist/")
    # x- is for the top level only; elsewhere an unknown key stays an error
    with pytest.raises(KataError) as e:
        load_text("steps:\n  - {name: a, image: alpine, commands: [x], x-note: 1}\n")
    assert e.value.reason == "config.unknown_key"
    with pytest.raises(KataError) as e:
        load_text("steps:\n  - {name: a, image: alpine, commands: [x], env: {A: [1]}}\n")
    assert e.value.reason == "config.type"


def test_env_expands_other_variables():
    p = load_text(
        "env: {REGISTRY: reg.example, IMAGE: '${REGISTRY}/app', PRICE: '$$5 ${NOPE} $HOME'}\n"
        "steps:\n"
        "  - {name: a, image: alpine, commands: [x],\n"
        "     env: {TAG: '${IMAGE}:${VERSION}', VERSION: '1.${MINOR}', MINOR: '2',\n"
        "           PATH: '/opt/bin:${PATH}', LIT: '$${IMAGE}'}}\n")
    assert dict(p.env) == {"REGISTRY": "reg.example", "IMAGE": "reg.example/app",
                           "PRICE": "$5 ${NOPE} $HOME"}
    assert dict(p.steps[0].env) == {"TAG": "reg.example/app:1.2", "VERSION": "1.2", "MINOR": "2",
                                    "PATH": "/opt/bin:${PATH}", "LIT": "${IMAGE}"}
    with pytest.raises(KataError) as e:
        load_text("env: {A: '${B}', B: '${A}'}\nsteps: [{name: a, image: alpine}]\n")
    assert e.value.reason == "config.value" and "A -> B -> A" in e.value.message
    with pytest.raises(KataError) as e:
        load_text("steps: [{name: a, image: alpine, context: [KATA_SHA]}]\n")
    assert e.value.reason == "config.value" and "KATA_COMMIT_SHA" in e.value.message


@pytest.mark.parametrize("value, text", [("true", "true"), ("yes", "yes"), ("off", "off")])
def test_a_boolean_where_a_string_goes_says_to_quote_it(value, text) -> None:
    """Found by a review: ``commands: [true]`` said "each entry of step 'a': commands
    must be a string, got bool 'true'": the subject garbled, and no word of the fix
    (YAML 1.1 reads unquoted yes/no/on/off/true/false as booleans)."""
    with pytest.raises(KataError) as info:
        load_text(f"steps:\n  - name: a\n    image: x\n    commands: [{value}]\n", file="c.yaml")
    assert info.value.reason == "config.type"
    assert info.value.message.startswith("step 'a': commands: each entry must be a string")
    assert f"quote it: \"{text}\"" in info.value.message
    with pytest.raises(KataError) as info:
        load_text(f"pipeline: {value}\nsteps:\n  - name: a\n    image: x\n", file="c.yaml")
    assert f"quote it: \"{text}\"" in info.value.message


@pytest.mark.parametrize("text, where", [
    ("steps:\n\t- name: a\n", (2, 1)),
    ("steps:\n  - name: a\n    image: x\n\tcommands: [a]\n", (4, 1)),
])
def test_a_tab_indent_is_named(text, where) -> None:
    """Found by a review: a tab indent gave only "found character that cannot start any
    token", which never says the character is a tab."""
    with pytest.raises(KataError) as info:
        load_text(text, file="c.yaml")
    assert info.value.reason == "config.yaml_syntax"
    assert "tab" in info.value.message and "YAML indents with spaces only" in info.value.message
    assert (info.value.position.line, info.value.position.column) == where


@pytest.mark.parametrize("kind, body", [
    ("step", "  - name: '{n}'\n    image: x\n"),
    ("service", "  - name: a\n    image: x\n    services: [{{name: '{n}', image: y}}]\n"),
])
@pytest.mark.parametrize("bad", ["-a", ".a", "bäu", "a b"])
def test_a_bad_name_says_the_rule(kind, body, bad) -> None:
    """Found by a review: "bad step name '-a': use letters, digits, '_', '-', '.'" hid
    the rule that was broken (the first character), 'ä' is a letter to a user, and a bad
    service name said nothing at all of what a name may be."""
    with pytest.raises(KataError) as info:
        load_text("steps:\n" + body.format(n=bad), file="c.yaml")
    assert info.value.message == (
        f"bad {kind} name {bad!r}: use ASCII letters, digits, '_', '-' and '.', starting "
        "with a letter, a digit or '_'")


@pytest.mark.parametrize("value", ["true", "[1]", "{a: 1}", "~"])
def test_a_duration_of_the_wrong_type_says_what_a_duration_is(value) -> None:
    """Found by a review: `timeout: true` said "must be a string ... quote it: "true"",
    advice that only leads to "bad duration 'true'"."""
    with pytest.raises(KataError) as info:
        load_text(f"settings: {{timeout: {value}}}\nsteps:\n  - name: a\n    image: x\n",
                  file="c.yaml")
    assert info.value.reason == "config.type"
    assert info.value.message.startswith("settings.timeout must be a duration such as 90s, "
                                         "15m or 1h30m, got ")
    assert "quote it" not in info.value.message


@pytest.mark.parametrize("event", ["push", "tag", "schedule"])
def test_a_trigger_with_actions_for_an_event_that_has_none_is_refused(event: str) -> None:
    """Found by a review: ``{event: push, actions: [opened]}`` loaded silently, yet only a
    pull request has an action (docs/config.md: ``actions``: pull request actions), so the
    trigger could never match a push from a hook. A load error at the ``actions`` key,
    saying which event takes actions; an empty list (no constraint) still loads."""
    e = err(f"""\
        triggers:
          - event: {event}
            actions: [opened]
        steps: [{{name: a, image: x}}]
        """)
    assert where(e) == ("config.value", 3, 5)
    assert "pull_request" in e.message and event in e.message
    for fine in ("{event: pull_request, actions: [opened]}", "{actions: [closed]}",
                 f"{{event: {event}, actions: []}}"):
        load_text(f"triggers: [{fine}]\nsteps: [{{name: a, image: x}}]\n", file="c.yaml")


@pytest.mark.parametrize("style", ["|", ">", "|-", ">+"])
def test_a_block_condition_error_points_at_the_word_in_the_file(style: str) -> None:
    """Found by a review: in a `when: |` block the error named line 5, column 1 (the
    line after the indicator, not the word's), and in a `when: >` block line 4, column
    32, a column the indicator's line does not have. A block scalar's text starts on the
    line after ``|``/``>``, indented; the position is the misspelt word's in the file."""
    e = err(f"""\
        steps:
          - name: a
            image: x
            when: {style}
              branch == "main" and
                evnt == "push"
        """)
    assert where(e) == ("config.condition", 6, 9), e.message
    assert "unknown name 'evnt'" in e.message


@pytest.mark.parametrize("text,line,col", [
    ("steps:\n  - name: a\n    image: 'x:${V}'\n", 3, 12),
    ("steps:\n  - name: a\n    image: x\n    services: [{name: db, image: 'redis:${V}'}]\n", 4, 34),
])
def test_a_matrix_variable_in_an_image_of_a_step_without_matrix_says_so(text, line, col) -> None:
    """Found by a review: ``image: redis:${V}`` in a step with no ``matrix:`` said only
    "bad image reference ... expected e.g. alpine:3.19", as if the syntax were wrong;
    only a matrix step substitutes ${VAR} in its and its services' images."""
    e = err(text)
    assert where(e) == ("config.image_ref", line, col)
    assert "${V}" in e.message and "matrix" in e.message, e.message


def test_a_trigger_that_can_never_match_a_tag_or_a_branch_is_refused() -> None:
    """Last session's leftover: ``{event: tag, branches: [main]}`` loaded silently, yet a
    tag event has no branch (kata.conditions.Context), so a hook's tag push could never
    match it; the same for ``pattern:`` (a tag name) on a branch event. Load errors at the
    key, saying what to write; without an event, or with an empty list, they load."""
    e = err("""\
        triggers:
          - event: tag
            branches: [main]
        steps: [{name: a, image: x}]
        """)
    assert where(e) == ("config.value", 3, 5)
    assert "'pattern:'" in e.message and "'event: push'" in e.message
    for event in ("push", "pull_request", "schedule"):
        e = err(f"""\
            triggers:
              - event: {event}
                pattern: "v*"
            steps: [{{name: a, image: x}}]
            """)
        assert where(e) == ("config.value", 3, 5) and event in e.message
        assert "'event: tag'" in e.message
    e = err("triggers: [{branches: [main], pattern: 'v*'}]\nsteps: [{name: a, image: x}]\n")
    assert where(e) == ("config.value", 1, 31) and "write two triggers" in e.message
    for fine in ("{event: tag, pattern: 'v*'}", "{branches: [main]}", "{pattern: 'v*'}",
                 "{event: tag, branches: []}", "{event: push, branches: [main]}"):
        load_text(f"triggers: [{fine}]\nsteps: [{{name: a, image: x}}]\n", file="c.yaml")


def test_a_trigger_naming_a_full_ref_is_refused_as_it_could_never_match() -> None:
    """Triggers match a branch's or tag's short name (``main``, ``v1.2``: what a hook
    strips ``refs/heads/`` or ``refs/tags/`` from), so ``branches: [refs/heads/main]`` or
    ``pattern: "refs/tags/v*"`` (GitLab's and git's spelling) loaded and silently never
    matched. A load error at the item, naming the short form to write."""
    e = err("""\
        triggers:
          - event: push
            branches: [dev, "refs/heads/main"]
        steps: [{name: a, image: x}]
        """)
    assert where(e) == ("config.value", 3, 21)
    assert "'main'" in e.message and "refs/heads/" in e.message, e.message
    e = err("""\
        triggers:
          - event: tag
            pattern: "refs/tags/v*"
        steps: [{name: a, image: x}]
        """)
    assert where(e) == ("config.value", 3, 14)
    assert "'v*'" in e.message, e.message


@pytest.mark.parametrize("text,words", [
    # a newcomer's `on: [oom]`: "expected one of timeout" named only one of the two forms
    ("steps: [{name: a, image: x, retry: {max: 1, on: [oom]}}]\n",
     "unknown condition 'oom': write 'timeout' or 'exit_code: N' (an out-of-memory kill is "
     "exit_code: 137)"),
    # "retry: retry max must be 1 to 10, got 0": the key twice, and no way out
    ("steps: [{name: a, image: x, retry: 0}]\n",
     "step 'a': retry: max must be 1 to 10 (extra attempts), got 0; no retries: leave retry out"),
    # "bad secret name 'pypi-token'": not the rule
    ("steps: [{name: a, image: x, secrets: [pypi-token]}]\n",
     "bad secret name 'pypi-token': a secret is an environment variable: letters, digits and "
     "'_', not starting with a digit"),
    # a step key indented less than the others: PyYAML's words alone
    ("steps:\n  - name: a\n    image: x\n  commands: [b]\n",
     "a line here is indented differently from the entries around it"),
])
def test_a_newcomers_mistake_says_what_to_write(text, words) -> None:
    assert words in str(err(text))
