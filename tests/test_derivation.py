"""Derivations: golden hashes, what is hashed and what is not, the two keys, the diff."""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
import random
from pathlib import Path

import pytest
import yaml
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from kata.compile import compile_pipeline
from kata.derivation import FORMAT, Derivation, DerivationRecord, decode, diff
from kata.errors import KataError
from kata.loader import load_pipeline, load_text

HERE = Path(__file__).parent
GOLDEN = HERE / "golden" / "derivations.json"
REPO_FILES = {"src/a.c": "int a;\n", "src/b.c": "int b;\n", "go.mod": "module x\n",
              "docs/x.md": "doc\n", "main.c": "int main;\n"}


def fake_resolver(ref) -> str:
    return "sha256:" + hashlib.sha256(str(ref).encode()).hexdigest()


@pytest.fixture(scope="module")
def repo(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("repo")
    for rel, text in REPO_FILES.items():
        p = root / rel
        p.parent.mkdir(parents=True, exist_ok=True)
        p.write_text(text)
        p.chmod(0o644)
    return root


def hashes(text: str, repo: Path, **kw) -> list[str | None]:
    g = compile_pipeline(load_text(text), resolver=kw.pop("resolver", fake_resolver),
                         repo_root=repo, **kw)
    return [g.nodes[s.name].drv_hash for s in g.pipeline.steps]


def test_golden_hashes(repo) -> None:
    """A change of the encoding (or of what is hashed) shows up as a diff of this file.
    Regenerate with KATA_UPDATE_GOLDEN=1 after a deliberate format change."""
    got = {}
    for name in ("quickstart", "service", "pinned"):
        g = compile_pipeline(load_pipeline(HERE / "fixtures" / f"{name}.yaml"),
                             resolver=fake_resolver, repo_root=repo)
        got[name] = {n: {"drv": g.nodes[n].drv_hash,
                         "resolved": g.nodes[n].resolved_hash(
                             {d: "sha256:" + "0" * 64 for d in g.nodes[n].deps})}
                     for n in g.order}
    if os.environ.get("KATA_UPDATE_GOLDEN"):
        GOLDEN.write_text(json.dumps(got, indent=2, sort_keys=True) + "\n")
    assert got == json.loads(GOLDEN.read_text())


def test_canonical_encoding_shape(repo) -> None:
    g = compile_pipeline(load_pipeline(HERE / "fixtures" / "service.yaml"),
                         resolver=fake_resolver, repo_root=repo)
    d = g.nodes["build"].derivation
    tag, body = __import__("msgpack").unpackb(d.encode())
    assert tag == FORMAT and list(body) == sorted(body)
    assert g.nodes["build"].drv_hash == hashlib.sha256(d.encode()).hexdigest()
    assert Derivation.from_obj(body) == d
    assert dict(d.env) == {"NODE_ENV": "ci", "CI": "true", "CGO_ENABLED": "0"}
    deploy = g.nodes["deploy"].derivation
    assert deploy.secrets == ("AWS_ACCESS_KEY_ID", "DEPLOY_TOKEN")
    assert set(deploy.deps) == {g.nodes["unit-test"].drv_hash, g.nodes["integration-test"].drv_hash}


def test_pinned_images_need_no_resolver(repo) -> None:
    g = compile_pipeline(load_pipeline(HERE / "fixtures" / "pinned.yaml"), resolver=None, repo_root=repo)
    assert all(g.nodes[n].drv_hash for n in g.order)
    assert g.nodes["one"].derivation.image == "sha256:" + "1" * 64


def test_unresolved_tags_compile_without_hash(repo) -> None:
    g = compile_pipeline(load_pipeline(HERE / "fixtures" / "quickstart.yaml"), resolver=lambda r: None,
                         repo_root=repo)
    assert [g.nodes[n].drv_hash for n in g.order] == [None, None, None]
    assert g.levels == (("build",), ("test", "lint")) and g.order == ("build", "test", "lint")
    with pytest.raises(KataError) as info:
        g.nodes["build"].derivation.hash
    assert info.value.reason == "derivation.unresolved"
    # without a repository root nothing is hashed either, and the shape is still there
    g = compile_pipeline(load_pipeline(HERE / "fixtures" / "pinned.yaml"))
    assert g.nodes["two"].drv_hash is None and g.edges == (("one", "two"),)


def test_resolver_called_once_per_tag_and_never_for_pinned(repo) -> None:
    seen = []
    compile_pipeline(load_pipeline(HERE / "fixtures" / "service.yaml"),
                     resolver=lambda r: seen.append(str(r)) or fake_resolver(r), repo_root=repo)
    assert sorted(seen) == ["docker.io/library/alpine:3.19", "docker.io/library/golang:1.22-alpine",
                            "docker.io/library/postgres:16-alpine"]
    with pytest.raises(KataError) as info:
        compile_pipeline(load_pipeline(HERE / "fixtures" / "quickstart.yaml"),
                         resolver=lambda r: "latest", repo_root=repo)
    assert info.value.reason == "image.resolve"


def test_early_cutoff_key(repo) -> None:
    text = ("steps:\n  - {name: a, image: x, commands: [make]}\n"
            "  - {name: b, image: x, depends_on: [a], commands: [test]}\n")
    text2 = text.replace("[make]", "[make -j2]")
    g1 = compile_pipeline(load_text(text), resolver=fake_resolver, repo_root=repo)
    g2 = compile_pipeline(load_text(text2), resolver=fake_resolver, repo_root=repo)
    assert g1.nodes["b"].drv_hash != g2.nodes["b"].drv_hash  # input-addressed: a changed
    out = {"a": "sha256:" + "e" * 64}
    assert g1.nodes["b"].resolved_hash(out) == g2.nodes["b"].resolved_hash(out)
    assert g1.nodes["b"].resolved_hash(out) != g1.nodes["b"].resolved_hash({"a": "sha256:" + "f" * 64})
    assert g1.nodes["b"].resolved_hash(out) != g1.nodes["b"].drv_hash
    with pytest.raises(KataError) as info:
        g1.nodes["b"].resolved_hash({})
    assert info.value.reason == "derivation.outputs"


# ---- what is hashed -----------------------------------------------------------

BASE = """\
pipeline: p
env: {G: "1"}
steps:
  - name: build
    image: node:20
    commands: [make, make check]
    env: {A: "1"}
    secrets: [TOKEN]
    artifacts: [dist/]
    cache: {paths: [.cache/], key_files: [go.mod]}
    inputs: ["src/**"]
    services:
      - {name: db, image: postgres:16, env: {P: x}, commands: [serve]}
  - name: test
    image: node:20
    depends_on: [build]
    commands: [npm test]
"""

HASHED_EDITS = {
    "pipeline name": ("pipeline: p", "pipeline: q"),
    "image tag": ("image: node:20\n    commands: [make", "image: node:21\n    commands: [make"),
    "command": ("make check", "make test"),
    "command order": ("[make, make check]", "[make check, make]"),
    "step env value": ('A: "1"', 'A: "2"'),
    "step env name": ('A: "1"', 'B: "1"'),
    "global env": ('G: "1"', 'G: "2"'),
    "secret name": ("[TOKEN]", "[TOKEN2]"),
    "artifact": ("[dist/]", "[dist/, bin/]"),
    "cache path": ("[.cache/]", "[.cache2/]"),
    "key files": ("key_files: [go.mod]", "key_files: [main.c]"),
    "inputs": ('["src/**"]', '["src/a.c"]'),
    "service env": ("P: x", "P: y"),
    "service image": ("postgres:16", "postgres:17"),
    "service command": ("[serve]", "[serve -v]"),
    "service name": ("name: db", "name: db2"),
    "workdir": ("secrets: [TOKEN]", "secrets: [TOKEN]\n    workdir: /src"),
    "network": ("secrets: [TOKEN]", "secrets: [TOKEN]\n    network: none"),
    "user": ("secrets: [TOKEN]", "secrets: [TOKEN]\n    user: '1000:1000'"),
}

UNHASHED_EDITS = {
    "description": ("secrets: [TOKEN]", "secrets: [TOKEN]\n    description: builds it"),
    "timeout": ("secrets: [TOKEN]", "secrets: [TOKEN]\n    timeout: 5m"),
    "cache false": ("npm test]", "npm test]\n    cache: false"),
    "when": ("npm test]", "npm test]\n    when: 'branch == \"main\"'"),
    "only": ("npm test]", "npm test]\n    only: {branches: [main]}"),
    "settings": ("pipeline: p", "pipeline: p\nsettings: {timeout: 1h, max_parallel: 1}"),
    "env key order": ('env: {A: "1"}\n    secrets', 'env: {"A": "1"}\n    secrets'),
    "depends_on duplicate": ("[build]", "[build, build]"),
    # the documented default, written out (found by a review: each was a miss)
    "user root written 0:0": ("secrets: [TOKEN]", "secrets: [TOKEN]\n    user: '0:0'"),
    "user root written 0": ("secrets: [TOKEN]", "secrets: [TOKEN]\n    user: '0'"),
}


def test_a_uid_alone_is_its_own_gid_in_the_key(repo) -> None:
    """``user: "1000"`` runs as 1000:1000 (the gid defaults to the uid): the same key as
    writing it out (found by a review: it was a miss)."""
    short = BASE.replace("secrets: [TOKEN]", "secrets: [TOKEN]\n    user: '1000'", 1)
    full = BASE.replace("secrets: [TOKEN]", "secrets: [TOKEN]\n    user: '1000:1000'", 1)
    assert hashes(short, repo) == hashes(full, repo)


@pytest.mark.parametrize("edit", sorted(HASHED_EDITS))
def test_every_hashed_field_changes_the_hash(edit, repo) -> None:
    old, new = HASHED_EDITS[edit]
    assert old in BASE
    before, after = hashes(BASE, repo), hashes(BASE.replace(old, new, 1), repo)
    assert before[0] != after[0]
    assert before[1] != after[1]  # the dependent's key follows


@pytest.mark.parametrize("edit", sorted(UNHASHED_EDITS))
def test_unhashed_fields_leave_the_hash(edit, repo) -> None:
    old, new = UNHASHED_EDITS[edit]
    assert old in BASE
    assert hashes(BASE, repo) == hashes(BASE.replace(old, new, 1), repo)


def test_step_name_is_not_hashed_even_when_depended_on(repo) -> None:
    renamed = BASE.replace("name: build", "name: compile").replace("[build]", "[compile]")
    assert hashes(BASE, repo) == hashes(renamed, repo)


def test_secret_values_never_reach_the_compiler(repo, monkeypatch) -> None:
    monkeypatch.setenv("TOKEN", "one")
    h1 = hashes(BASE, repo)
    monkeypatch.setenv("TOKEN", "two")
    assert hashes(BASE, repo) == h1


def test_input_file_content_changes_only_the_steps_that_see_it(tmp_path) -> None:
    for rel, text in REPO_FILES.items():
        (tmp_path / rel).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / rel).write_text(text)
    before = hashes(BASE, tmp_path)
    (tmp_path / "docs/x.md").write_text("changed\n")  # build sees only src/**; test sees all
    mid = hashes(BASE, tmp_path)
    assert mid[0] == before[0] and mid[1] != before[1]
    (tmp_path / "src/a.c").write_text("int A;\n")
    after = hashes(BASE, tmp_path)
    assert after[0] != mid[0] and after[1] != mid[1]


def test_config_file_bytes_are_not_an_input(tmp_path) -> None:
    cfg = tmp_path / ".kata-ci.yaml"
    cfg.write_text(BASE)
    h1 = [n.drv_hash for n in compile_pipeline(load_pipeline(cfg), resolver=fake_resolver,
                                               repo_root=tmp_path).nodes.values()]
    cfg.write_text("# a comment\n" + BASE.replace("secrets: [TOKEN]", "secrets: [TOKEN]\n    description: d"))
    h2 = [n.drv_hash for n in compile_pipeline(load_pipeline(cfg), resolver=fake_resolver,
                                               repo_root=tmp_path).nodes.values()]
    assert h1 == h2


# ---- formatting does not matter (hypothesis) ------------------------------------

_text = st.text(st.characters(blacklist_categories=("Cs", "Cc", "Zl", "Zp")), max_size=12)
_ident = st.from_regex(r"[A-Z][A-Z0-9_]{0,6}", fullmatch=True)


@st.composite
def pipelines(draw) -> dict:
    names = draw(st.lists(st.from_regex(r"[a-z][a-z0-9-]{0,8}", fullmatch=True), min_size=1,
                          max_size=4, unique=True))
    steps = []
    for i, name in enumerate(names):
        step = {"name": name, "image": draw(st.sampled_from(["node:20", "alpine:3.19", "ghcr.io/a/b:1"])),
                "commands": draw(st.lists(_text, max_size=3))}
        if draw(st.booleans()):
            step["env"] = draw(st.dictionaries(_ident, _text, max_size=3))
        if draw(st.booleans()):
            step["secrets"] = draw(st.lists(_ident, max_size=2, unique=True))
        if draw(st.booleans()):
            step["artifacts"] = draw(st.lists(st.sampled_from(["dist/", "bin/", "out"]), max_size=2, unique=True))
        if i and draw(st.booleans()):
            step["depends_on"] = draw(st.lists(st.sampled_from(names[:i]), min_size=1, unique=True))
        steps.append(step)
    doc = {"pipeline": draw(_text.filter(str.strip)), "steps": steps}
    if draw(st.booleans()):
        doc["env"] = draw(st.dictionaries(_ident, _text, max_size=3))
    return doc


def _shuffled(obj, rnd: random.Random):
    if isinstance(obj, dict):
        items = list(obj.items())
        rnd.shuffle(items)
        return {k: _shuffled(v, rnd) for k, v in items}
    if isinstance(obj, list):
        return [_shuffled(v, rnd) for v in obj]
    return obj


def _render(doc, rnd: random.Random) -> str:
    style = rnd.choice([None, '"', "'"])
    width = rnd.choice([40, 80, 10**6])
    text = yaml.safe_dump(_shuffled(doc, rnd), sort_keys=False, allow_unicode=rnd.random() < 0.5,
                          default_flow_style=rnd.choice([False, True, None]), default_style=style,
                          width=width)
    lines = text.splitlines()
    out = ["# generated"]
    for line in lines:
        out.append(line)
        # unwrapped output has one complete entry per line: a comment line between is safe
        if width == 10**6 and rnd.random() < 0.3:
            out.append(rnd.choice(["# a comment line", "   # indented comment", ""]))
    return "\n".join(out) + "\n"


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(doc=pipelines(), seed=st.integers(0, 2**32))
def test_hash_is_stable_under_formatting(repo, doc, seed) -> None:
    rnd = random.Random(seed)
    a, b = _render(doc, rnd), _render(doc, rnd)
    assert hashes(a, repo) == hashes(b, repo)


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(doc=pipelines(), new=_text, which=st.sampled_from(["command", "env", "name", "secret_value"]))
def test_hash_changes_with_hashed_fields_only(repo, doc, new, which) -> None:
    base = hashes(yaml.safe_dump(doc), repo)
    step = doc["steps"][0]
    if which == "command":
        step["commands"] = [*step["commands"], new]
        assert hashes(yaml.safe_dump(doc), repo)[0] != base[0]
    elif which == "env":
        env = step.setdefault("env", {})
        changed = env.get("KATA_X") != new
        env["KATA_X"] = new
        assert (hashes(yaml.safe_dump(doc), repo)[0] != base[0]) == changed
    elif which == "name":
        old = step["name"]
        step["name"] = "renamed-step"
        for s in doc["steps"]:
            s["depends_on"] = ["renamed-step" if d == old else d for d in s.get("depends_on", [])]
        if not any(s["name"] == "renamed-step" for s in doc["steps"][1:]):
            assert hashes(yaml.safe_dump(doc), repo) == base
    else:
        for secret in step.get("secrets", []):
            os.environ[secret] = new  # a value the compiler must never look at
        try:
            assert hashes(yaml.safe_dump(doc), repo) == base
        finally:
            for secret in step.get("secrets", []):
                os.environ.pop(secret, None)


# ---- diff and records -----------------------------------------------------------

def _graph(text, repo):
    return compile_pipeline(load_text(text), resolver=fake_resolver, repo_root=repo)


def test_diff_names_each_changed_field(repo) -> None:
    g1 = _graph(BASE, repo)
    edited = (BASE.replace("make check", "make test").replace('A: "1"', 'A: "2", B: "3"')
              .replace("node:20\n    commands: [make", "node:21\n    commands: [make"))
    g2 = _graph(edited, repo)
    changes = diff(g1.nodes["build"].record(), g2.nodes["build"].record())
    got = {(c.field, c.kind, c.name) for c in changes}
    assert got == {("image", "changed", ""), ("command", "changed", "#2"),
                   ("env", "changed", "A"), ("env", "added", "B")}
    dep = diff(g1.nodes["test"].record(), g2.nodes["test"].record())
    assert [(c.field, c.kind, c.name) for c in dep] == [("dependency", "changed", "build")]
    assert all(str(c) for c in changes + dep)
    assert diff(g1.nodes["build"].derivation, g1.nodes["build"].derivation) == ()


def test_diff_names_the_input_file(tmp_path) -> None:
    for rel, text in REPO_FILES.items():
        (tmp_path / rel).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / rel).write_text(text)
    before = _graph(BASE, tmp_path).nodes["build"].record()
    (tmp_path / "src/b.c").write_text("int B;\n")
    (tmp_path / "src/c.c").write_text("int c;\n")
    after = _graph(BASE, tmp_path).nodes["build"].record()
    got = {(c.field, c.kind, c.name) for c in diff(before, after)}
    assert got == {("input file", "changed", "src/b.c"), ("input file", "added", "src/c.c")}
    # bare derivations (no manifest) still say the inputs changed
    assert [c.field for c in diff(before.derivation, after.derivation)] == ["inputs"]


def test_record_round_trip(repo) -> None:
    rec = _graph(BASE, repo).nodes["test"].record()
    assert decode(rec.encode()) == rec
    bare = decode(rec.derivation.encode())
    assert bare == DerivationRecord(derivation=rec.derivation)
    with pytest.raises(KataError) as info:
        decode(b"\x93junk")
    assert info.value.reason == "derivation.format"


def test_derivation_is_frozen(repo) -> None:
    d = _graph(BASE, repo).nodes["build"].derivation
    with pytest.raises(dataclasses.FrozenInstanceError):
        d.image = "sha256:" + "0" * 64  # type: ignore[misc]


def test_resolve_images_reports_every_unavailable_image_with_its_users() -> None:
    from kata.compile import resolve_images
    from kata.errors import KataError
    from kata.loader import load_text

    p = load_text(
        "steps:\n"
        "  - {name: a, image: 'node:20-alpine', commands: [x],\n"
        "     services: [{name: db, image: 'postgres:16'}]}\n"
        "  - {name: b, image: 'node:20-alpine', commands: [x]}\n"
        "  - {name: c, image: 'alpine@sha256:" + "a" * 64 + "', commands: [x]}\n"
        "  - {name: d, image: 'busybox', commands: [x]}\n")
    asked = []

    def resolver(ref):
        asked.append(str(ref))
        if "busybox" in str(ref):
            return "sha256:" + "b" * 64
        raise KataError("image.registry_unreachable", f"cannot fetch {ref}: offline", exit_code=1)

    with pytest.raises(KataError) as e:
        resolve_images(p, resolver)
    assert e.value.reason == "image.unavailable" and e.value.exit_code == 2
    lines = e.value.message.splitlines()
    assert len(lines) == 2
    assert lines[0].startswith("image docker.io/library/node:20-alpine (used by a, b) is neither")
    assert lines[1].startswith("image docker.io/library/postgres:16 (used by a (service db))")
    assert "fix: `kata image pull docker.io/library/postgres:16`" in lines[1]
    assert len(asked) == 3  # each tag once; the pinned image is never asked


def test_an_unavailable_image_close_to_one_the_host_has_says_did_you_mean() -> None:
    """A newcomer's typo `kata.local/debian-clik:bookworm` said only that it could not be
    fetched (kata.local does not resolve); the host had kata.local/debian-click:bookworm."""
    from kata.compile import resolve_images
    from kata.errors import KataError
    from kata.loader import load_text

    p = load_text("steps:\n  - {name: a, image: 'kata.local/debian-clik:bookworm'}\n"
                  "  - {name: b, image: 'kata.local/other:1'}\n")

    def resolver(ref):
        raise KataError("image.registry_unreachable", f"cannot fetch {ref}", exit_code=1)

    known = ["kata.local/debian-click:bookworm", "docker.io/library/busybox:latest"]
    with pytest.raises(KataError) as e:
        resolve_images(p, resolver, known=lambda: known)
    typo, other = e.value.message.splitlines()
    assert "did you mean kata.local/debian-click:bookworm (this host has it)? fix: " in typo
    assert "did you mean" not in other  # nothing close: no guess


def test_context_enters_only_the_keys_of_steps_that_ask_for_it(tmp_path) -> None:
    from kata.compile import compile_pipeline
    from kata.loader import load_text

    p = load_text("steps:\n"
                  "  - {name: plain, image: 'alpine@sha256:" + "a" * 64 + "', commands: [x]}\n"
                  "  - {name: stamp, image: 'alpine@sha256:" + "a" * 64 + "', commands: [x],\n"
                  "     context: [KATA_COMMIT_SHA, CI]}\n")
    one = compile_pipeline(p, repo_root=tmp_path, context={"KATA_COMMIT_SHA": "1" * 40})
    two = compile_pipeline(p, repo_root=tmp_path, context={"KATA_COMMIT_SHA": "2" * 40})
    assert one.nodes["plain"].drv_hash == two.nodes["plain"].drv_hash
    assert one.nodes["stamp"].drv_hash != two.nodes["stamp"].drv_hash
    assert dict(one.nodes["stamp"].derivation.env) == {"CI": "true", "KATA_COMMIT_SHA": "1" * 40}
    assert dict(one.nodes["plain"].derivation.env) == {}


def test_depends_on_order_is_hashed_since_it_decides_whose_file_wins(repo) -> None:
    """A dependent's stack is its dependencies' stacks in ``depends_on`` order, the later
    one's file winning: two orders show different files, so they must be two keys (a
    swapped order used to hit the other order's result), in the derivation hash and in
    the early-cutoff (resolved) hash alike. The sorted order keeps the old encoding."""
    text = ("pipeline: p\nsteps:\n"
            "  - {name: a, image: x, commands: [echo a]}\n"
            "  - {name: b, image: x, commands: [echo b]}\n"
            "  - {name: c, image: x, depends_on: [DEPS], commands: [cat out]}\n")
    graphs = {deps: compile_pipeline(load_text(text.replace("DEPS", deps)),
                                     resolver=fake_resolver, repo_root=repo)
              for deps in ("a, b", "b, a")}
    ab, ba = graphs["a, b"].nodes["c"], graphs["b, a"].nodes["c"]
    assert ab.drv_hash != ba.drv_hash
    outputs = {"a": "sha256:" + "1" * 64, "b": "sha256:" + "2" * 64}
    assert ab.resolved_hash(outputs) != ba.resolved_hash(outputs)
    # equal stacks give one view whatever the order: one key
    same = {"a": "sha256:" + "3" * 64, "b": "sha256:" + "3" * 64}
    assert ab.resolved_hash(same) == ba.resolved_hash(same)
    # an order that is the sorted one is encoded as before (no dep_order field)
    for node in (ab, ba):
        body = __import__("msgpack").unpackb(node.derivation.encode())[1]
        assert ("dep_order" in body) == (list(node.derivation.dep_order) != [])
    assert decode(ab.record().encode()).derivation == ab.derivation
    assert decode(ba.record().encode()).derivation == ba.derivation
    changes = diff(ab.record(), ba.record())
    assert [c.field for c in changes] == ["dependency order"]
    assert (changes[0].old, changes[0].new) == ("a, b", "b, a")


def test_diff_says_a_limit_change_in_the_configs_words(repo) -> None:
    # `kata why` after editing `resources:` printed the hashed tuple,
    # "resources: [none, 1.0, none] -> [none, 2.0, none]"
    def why(old, new):
        g1 = _graph(BASE.replace("    env: {A", old + "    env: {A"), repo)
        g2 = _graph(BASE.replace("    env: {A", new + "    env: {A"), repo)
        changes = diff(g1.nodes["build"].record(), g2.nodes["build"].record())
        return [str(c) for c in changes]

    assert why("    resources: {cpus: 1}\n", "    resources: {cpus: 2.5}\n") == [
        "resources: cpus 1 -> cpus 2.5"]
    assert why("", "    resources: {memory: 256MiB, pids: 100}\n") == [
        "resources: none declared -> memory 256 MiB, pids 100"]
    assert why("    resources: {cpus: 1.0, memory: 1GiB}\n", "") == [
        "resources: memory 1 GiB, cpus 1 -> none declared"]


def test_a_record_of_an_older_key_format_is_named_not_diffed_as_a_limit_change(repo) -> None:
    # a store an older kata (kata-drv/1, aa7c529) wrote: its records carry no resources,
    # so `kata why` after upgrading said "resources: none declared -> memory 256 MiB" for
    # a config nobody edited, and "unchanged" for a step without limits, though neither
    # hits (the key format changed)
    import msgpack

    text = BASE.replace("    env: {A", "    resources: {memory: 256MiB}\n    env: {A")
    node = _graph(text, repo).nodes["build"]
    obj = msgpack.unpackb(node.record().encode(), raw=False)
    obj.pop("key", None)
    obj["drv"].pop("resources")
    old = decode(msgpack.packb(obj, use_bin_type=True))
    changes = diff(old, node.record())
    assert [(c.field, c.old, c.new) for c in changes] == [
        ("key format", "kata-drv/1", FORMAT)]
    assert "older kata" in str(changes[0])
    plain = _graph(BASE, repo).nodes["build"]
    obj = msgpack.unpackb(plain.record().encode(), raw=False)
    obj.pop("key", None)
    assert [c.field for c in diff(decode(msgpack.packb(obj, use_bin_type=True)),
                                  plain.record())] == ["key format"]
    bare = msgpack.packb(["kata-drv/1", obj["drv"]], use_bin_type=True)
    assert [c.field for c in diff(decode(bare), plain.record())] == ["key format"]
    # a record of this format compares as before
    assert diff(decode(plain.record().encode()), plain.record()) == ()


def test_a_record_of_kata_drv_2_is_named_as_an_older_key_format(repo) -> None:
    # kata-drv/3 changed no field, only what every step sees (rlimits, /etc/hosts,
    # /dev/shm, HOME): a /2 record of the same config is "key format", nothing else
    import msgpack

    node = _graph(BASE, repo).nodes["build"]
    obj = msgpack.unpackb(node.record().encode(), raw=False)
    obj["key"] = "kata-drv/2"
    old = decode(msgpack.packb(obj, use_bin_type=True))
    assert [(c.field, c.old, c.new) for c in diff(old, node.record())] == [
        ("key format", "kata-drv/2", FORMAT)]
    bare = decode(msgpack.packb(["kata-drv/2", obj["drv"]], use_bin_type=True))
    assert bare.key_format == "kata-drv/2"


def test_a_record_of_kata_drv_3_is_named_as_an_older_key_format(repo) -> None:
    # kata-drv/4 changed no field, only what every step sees: /run holds the image's /run
    # (found by the psycopg2 trial); a /3 record of the same config is "key format" only
    import msgpack

    node = _graph(BASE, repo).nodes["build"]
    obj = msgpack.unpackb(node.record().encode(), raw=False)
    obj["key"] = "kata-drv/3"
    old = decode(msgpack.packb(obj, use_bin_type=True))
    assert [(c.field, c.old, c.new) for c in diff(old, node.record())] == [
        ("key format", "kata-drv/3", "kata-drv/4")]
    bare = decode(msgpack.packb(["kata-drv/3", obj["drv"]], use_bin_type=True))
    assert bare.key_format == "kata-drv/3"
    assert FORMAT == "kata-drv/4"
