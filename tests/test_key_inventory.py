"""The key inventory: every field of a step that reaches its container is in its key, or is
out of it by a decision written down here and in docs/architecture.md ("What is in a key").

Two checks:
- completeness: each field of ``Step``, ``Service`` and of the runtime's ``StepSpec`` /
  ``ServiceSpec`` is classified below; a new field fails until someone decides its side;
- soundness (hypothesis): change one field of a step; if its derivation hash did not
  change, the container the runtime is handed (the OCI spec ``build_spec`` writes, every
  service's spec) must not have changed either, but for the fields documented as out.
  Nothing the container sees may escape the key.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from kata.compile import compile_pipeline
from kata.model import (
    CONTEXT_VARS, CacheSpec, Duration, ImageRef, Pipeline, Ready, Retry, Service, Step,
)
from kata.realise import spec as specs
from kata.resources import Resources
from kata.runtimes.base import ServiceSpec, StepSpec
from kata.runtimes.containerd.spec import (RLIM_INFINITY_OCI, build_spec, hosts_text,
                                          shared_hosts_file, step_rlimits)

# -- the inventory ----------------------------------------------------------------------
# "key": in the derivation hash (and the resolved hash); anything else is the reason it
# is deliberately out, as docs/architecture.md states it.
STEP_FIELDS = {
    "name": "presentational: dependencies enter by hash, renaming keeps the cache",
    "image": "key", "commands": "key", "depends_on": "key", "artifacts": "key",
    "services": "key", "env": "key", "secrets": "key",
    "timeout": "out: decides whether the step finishes, not what it computes; not visible "
               "to the step; only passes are recorded",
    "cache": "key",  # paths and key_files; enabled/explicit decide whether it is looked up
    "inputs": "key", "workdir": "key", "user": "key", "network": "key",
    "resources": "key",  # as declared (step over settings); host defaults are not
    "description": "presentational",
    "context": "key",  # only the names listed, with their values (through env)
    "only": "policy: whether it runs", "when": "policy: whether it runs",
    "matrix_of": "presentational (the instance's env and image are hashed)",
    "matrix": "presentational (the instance's env and image are hashed)",
    "allow_failure": "policy: how a failure counts; failures are never recorded",
    "retry": "policy: how often it runs; only a pass is recorded",
    "junit_reports": "key",
    "position": "presentational", "dep_positions": "presentational",
    "pattern_positions": "presentational",
}
SERVICE_FIELDS = {
    "name": "key", "image": "key", "env": "key", "commands": "key", "entrypoint": "key",
    "ready": "key", "secrets": "key", "resources": "key", "user": "key",
    "position": "presentational",
}
# what the runtime is handed (kata.runtimes.base); "spec" fields are checked by the
# soundness property below through the OCI spec or the ServiceSpec
STEPSPEC_FIELDS = {
    "image": "spec", "argv": "spec", "env": "spec", "workdir": "spec", "user": "spec",
    "mounts": "spec", "network": "spec", "hostname": "spec", "services": "spec",
    "resources": "spec",
    "timeout": STEP_FIELDS["timeout"],
    "labels": "out: the run id and step name, for kata's own bookkeeping",
    "cache_paths": "key: the step's cache.paths (Step.cache) that were restored, re-owned "
                   "to its user; which were restored is the cache's, as their contents",
}
SERVICESPEC_FIELDS = {
    "name": "spec", "image": "spec", "argv": "spec", "env": "spec", "workdir": "spec",
    "user": "spec", "mounts": "spec", "ready": "spec", "resources": "spec",
    "owned": "out: host paths kata chowns, same as mounts",
}


@pytest.mark.parametrize("cls,table", [(Step, STEP_FIELDS), (Service, SERVICE_FIELDS),
                                       (StepSpec, STEPSPEC_FIELDS),
                                       (ServiceSpec, SERVICESPEC_FIELDS)])
def test_every_field_is_classified(cls, table) -> None:
    """A new field of a step (or of what the runtime is handed) is a decision: in the key
    or out of it, and why. Add it to the table above and to docs/architecture.md."""
    assert {f.name for f in dataclasses.fields(cls)} == set(table)


# -- soundness ------------------------------------------------------------------------

def fake_resolver(ref: ImageRef) -> str:
    return "sha256:" + hashlib.sha256(str(ref).encode()).hexdigest()


CONTEXT = {"KATA_COMMIT_SHA": "c0ffee", "KATA_BRANCH": "main", "KATA_TAG": "",
           "KATA_EVENT": "push", "KATA_PIPELINE": "p", "CI": "true"}
names = st.sampled_from(["A", "B", "KATA_BRANCH", "PATH", "TOKEN"])
words = st.sampled_from(["", "x", "make", "echo $A", "1"])
sizes = st.sampled_from([None, 64 << 20, 512 << 20, 4 << 30])
resources = st.builds(Resources, memory=sizes, cpus=st.sampled_from([None, 0.5, 1.0, 2.0]),
                      pids=st.sampled_from([None, 64, 4096]))
users = st.sampled_from([None, "0:0", "1000", "1000:1000"])
ready = st.one_of(st.none(), st.builds(
    Ready, kind=st.sampled_from(["tcp", "command"]), target=st.sampled_from(["5432", "true"]),
    timeout=st.sampled_from([Duration(millis=1000), Duration(millis=60_000)])))
services = st.builds(
    Service, name=st.sampled_from(["db", "cache"]),
    image=st.sampled_from([ImageRef.parse("postgres:16"), ImageRef.parse("redis:7")]),
    env=st.lists(st.tuples(names, words), max_size=2).map(tuple),
    commands=st.lists(words, max_size=2).map(tuple), ready=ready,
    secrets=st.lists(st.sampled_from(["TOKEN", "KEY"]), max_size=1, unique=True).map(tuple),
    resources=resources, user=users)

FIELDS = {
    "image": st.sampled_from([ImageRef.parse(x) for x in ("alpine:3.19", "alpine:3.20",
                                                          "busybox@sha256:" + "a" * 64)]),
    "commands": st.lists(words, max_size=3).map(tuple),
    "env": st.lists(st.tuples(names, words), max_size=3).map(tuple),
    "secrets": st.lists(st.sampled_from(["TOKEN", "KEY"]), max_size=2, unique=True).map(tuple),
    "workdir": st.sampled_from(["/workspace", "/src", "/w/x"]),
    "user": users,
    "network": st.sampled_from(["default", "none", "host"]),
    "resources": resources,
    "timeout": st.sampled_from([None, Duration(millis=1000), Duration(millis=3_600_000)]),
    "context": st.lists(st.sampled_from(CONTEXT_VARS), max_size=3, unique=True).map(tuple),
    "services": st.lists(services, max_size=2, unique_by=lambda s: s.name).map(tuple),
    "inputs": st.sampled_from([None, (), ("a.txt",), ("b/**",)]),
    "artifacts": st.lists(st.sampled_from(["dist/", "out.txt"]), max_size=2).map(tuple),
    "cache": st.builds(CacheSpec, paths=st.sampled_from([(), (".cache/",)]),
                       key_files=st.sampled_from([(), ("a.txt",)])),
    "description": words,
    "retry": st.sampled_from([None, Retry(max=2)]),
    "allow_failure": st.sampled_from([False, True, (1,)]),
    "junit_reports": st.sampled_from([(), ("r/*.xml",)]),
}
GLOBAL_ENV = st.lists(st.tuples(names, words), max_size=2).map(tuple)


@pytest.fixture(scope="module")
def dirs(tmp_path_factory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("inv")
    repo = root / "repo"
    (repo / "b").mkdir(parents=True)
    (repo / "a.txt").write_text("a\n")
    (repo / "b" / "c.txt").write_text("c\n")
    for d in ("ws", "secrets", "svc-secrets"):
        (root / d).mkdir()
    return {"repo": repo, "ws": root / "ws", "secrets": root / "secrets",
            "svc": root / "svc-secrets"}


def realised(step: Step, global_env: tuple, dirs: dict[str, Path]) -> tuple[str, object]:
    """(derivation hash, what the runtime is handed, normalised): the OCI spec of the step
    and each service's spec, without what is documented as out of the key."""
    pipeline = Pipeline(name="p", steps=(step,), env=global_env)
    node = compile_pipeline(pipeline, resolver=fake_resolver, repo_root=dirs["repo"],
                            context=CONTEXT).nodes[step.name]
    assert node.drv_hash is not None
    svcs = tuple(specs.service_spec(node, s, dirs["svc"] if s.secrets else None)
                 for s in step.services)
    spec = specs.step_spec(node, workdir=dirs["ws"],
                           secrets_dir=dirs["secrets"] if step.secrets else None,
                           run_id="r", services=svcs)
    oci = build_spec(spec, container_id="c", image_env=("PATH=/bin", "HOME=/root"),
                     rlimits=step_rlimits(RLIM_INFINITY_OCI, RLIM_INFINITY_OCI),  # not this host's
                     hosts_file=shared_hosts_file(dirs["ws"].parent / "etc", spec.hostname))
    oci["linux"].pop("cgroupsPath")  # the container id's
    seen = {"oci": oci, "hostname": spec.hostname,
            # env as a list: the order reaches the service's process (dicts compare unordered)
            "services": [(dataclasses.replace(s, owned=()), list(s.env.items()))
                         for s in spec.services]}
    return node.drv_hash, seen


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow,
                                                                  HealthCheck.function_scoped_fixture])
@given(data=st.data(), global_env=GLOBAL_ENV)
def test_a_step_sees_nothing_its_key_does_not_cover(data, global_env, dirs) -> None:
    """Change one field: the key changes, or the container does not (REAPI's rule: two
    actions with one digest are interchangeable)."""
    base = Step(name="s", **{f: data.draw(s, label=f) for f, s in FIELDS.items()})
    field = data.draw(st.sampled_from(sorted(FIELDS)), label="changed")
    other = dataclasses.replace(base, **{field: data.draw(FIELDS[field], label="to")})
    h1, seen1 = realised(base, global_env, dirs)
    h2, seen2 = realised(other, global_env, dirs)
    if h1 == h2:
        assert seen1 == seen2, f"{field} reaches the container but not the key"


def test_a_lower_memory_limit_is_no_hit(tmp_path) -> None:
    """The decision the property enforces, in one case: a step that passed under 4 GiB is
    not a cached pass under 64 MiB, where it may be OOM-killed (and a JVM or a build tool
    sizes its heap and parallelism from the cgroup limits it sees)."""
    base = Step(name="s", image=ImageRef.parse("alpine:3.19"), commands=("make",))
    def key(r: Resources) -> str | None:
        g = compile_pipeline(Pipeline(name="p", steps=(dataclasses.replace(base, resources=r),)),
                             resolver=fake_resolver, repo_root=tmp_path)
        return g.nodes["s"].drv_hash
    assert key(Resources(memory=4 << 30)) != key(Resources(memory=64 << 20))
    assert key(Resources(cpus=2.0)) != key(Resources(cpus=1.0))
    assert key(Resources(pids=64)) != key(Resources(pids=4096))
    assert key(Resources()) != key(Resources(memory=4 << 30))


def test_limits_round_trip_and_kata_why_names_them(tmp_path) -> None:
    from kata.derivation import decode, diff

    base = Step(name="s", image=ImageRef.parse("alpine:3.19"), commands=("make",),
                services=(Service(name="db", image=ImageRef.parse("postgres:16"),
                                  resources=Resources(memory=64 << 20)),))
    def node(step: Step):
        return compile_pipeline(Pipeline(name="p", steps=(step,)), resolver=fake_resolver,
                                repo_root=tmp_path).nodes["s"]
    a = node(base)
    b = node(dataclasses.replace(base, resources=Resources(memory=1 << 30, cpus=2)))
    assert decode(b.record().encode()).derivation == b.derivation
    assert decode(a.record().encode()).derivation == a.derivation
    assert [c.field for c in diff(a.derivation, b.derivation)] == ["resources"]


# -- how kata runs a step: pinned, since no key covers kata's own code -------------------
GOLDEN_CONTAINER = Path(__file__).parent / "golden" / "step_container.json"


def test_how_a_step_runs_is_pinned(dirs) -> None:
    """What every step's container gets from kata itself, not from its config: the script
    around its commands (``set -e``, stderr into stdout, the secrets prelude), the env
    merge over the image's, user, cwd, hostname, rlimits, namespaces, its mounts. No key
    covers kata's code, so a diff here means results recorded by an older kata may not be
    what this one computes: if so, bump ``kata.derivation.FORMAT`` (every key changes, an
    old store gives no hit) in the same commit; then regenerate with KATA_UPDATE_GOLDEN=1.
    The sandbox (seccomp, AppArmor, capabilities, masked paths) is left out on purpose: it
    only takes abilities away, and is not a key (docs/architecture.md, "What is in a key")."""
    step = Step(name="s", image=ImageRef.parse("busybox@sha256:" + "a" * 64),
                commands=("make", "make check"), env=(("A", "1"), ("PATH", "/opt/bin")),
                secrets=("TOKEN",), user="1000:1000", network="none",
                resources=Resources(memory=64 << 20, cpus=1.0, pids=64))
    _, seen = realised(step, (("G", "2"),), dirs)
    oci = seen["oci"]
    process = oci["process"]
    got = {
        "args": process["args"], "env": process["env"], "cwd": process["cwd"],
        "user": process["user"], "rlimits": process["rlimits"],
        "terminal": process["terminal"], "hostname": oci["hostname"],
        "etc_hosts": hosts_text((oci["hostname"],)),
        "namespaces": oci["linux"]["namespaces"], "resources": oci["linux"]["resources"],
        "mounts": [{**m, "source": m["source"].replace(str(dirs["ws"].parent), "<tmp>")}
                   for m in oci["mounts"]],
    }
    if os.environ.get("KATA_UPDATE_GOLDEN"):
        GOLDEN_CONTAINER.write_text(json.dumps(got, indent=1, sort_keys=True) + "\n")
    assert got == json.loads(GOLDEN_CONTAINER.read_text())


def test_env_order_is_the_keys_order(dirs) -> None:
    """The key sorts env by name; the container got the config's order (`env` prints it,
    a tool that takes the first or last of a list of variables sees it), so two configs
    with one key ran two different environments."""
    db = Service(name="db", image=ImageRef.parse("postgres:16"), env=(("Y", "1"), ("X", "2")))
    a = Step(name="s", image=ImageRef.parse("alpine:3.19"), env=(("B", "1"), ("A", "2")),
             context=("CI",), services=(db,))
    b = dataclasses.replace(a, env=(("A", "2"), ("B", "1")),
                            services=(dataclasses.replace(db, env=(("X", "2"), ("Y", "1"))),))
    (ha, seen_a), (hb, seen_b) = (realised(a, (("Z", "0"), ("G", "1")), dirs),
                                  realised(b, (("G", "1"), ("Z", "0")), dirs))
    assert ha == hb
    assert seen_a["oci"]["process"]["env"] == seen_b["oci"]["process"]["env"]
    assert seen_a["services"] == seen_b["services"]


def test_every_field_out_of_the_key_is_documented() -> None:
    """Each deliberately-out field is named in docs/architecture.md's key inventory."""
    doc = (Path(__file__).resolve().parent.parent / "docs" / "architecture.md").read_text()
    section = doc[doc.index("## What is in a key, and what is not"):]
    section = section[:section.index("\n## ", 5)]
    out = {"timeout", "name", "description", "only", "when", "allow_failure", "retry",
           "matrix", "resources", "cache.paths", "labels"}
    assert out >= {f for f, why in STEP_FIELDS.items() if why != "key"} - {
        "position", "dep_positions", "pattern_positions", "matrix_of"}
    for field in out:
        assert f"`{field}`" in section, field


def test_the_platform_is_fixed_since_it_is_not_in_the_key() -> None:
    """The key names an image by the digest the tag resolved to, often an index: which of
    its manifests runs is not in the key. It is always linux/amd64; a change (the host's
    platform) must put the platform into the derivation first."""
    from kata.runtimes.containerd import images

    assert images.PLATFORM == ("linux", "amd64")


def test_docs_config_says_key_or_not_key_as_the_inventory_does() -> None:
    """Found by a review: docs/config.md's step table said `resources` is "key", while
    its `resources` section and "What is in a step's cache key" said limits are not in
    the key (they are: STEP_FIELDS). Each step key's row and the "Not in it" sentence
    agree with the inventory."""
    import re

    text = (Path(__file__).resolve().parent.parent / "docs" / "config.md").read_text()
    step_table = text.split("## A step (`steps:` entry)", 1)[1].split("\n### ", 1)[0]
    rows = {m.group(1): m.group(2).strip() for m in re.finditer(
        r"^\| `([a-z_]+)` \| [^|]* \| [^|]* \| ([^|]*) \|", step_table, re.M)}
    for field, side in STEP_FIELDS.items():
        if field not in rows:
            continue
        in_key = side == "key"
        said = rows[field]
        assert said.startswith("key") == in_key or (field == "cache"), (field, said)
    not_in = text.split("Not in it:", 1)[1].split("`kata why", 1)[0]
    for field, side in STEP_FIELDS.items():
        if side == "key":
            assert f"`{field}`" not in not_in, field
    resources = text.split("### `resources`", 1)[1].split("\n## ", 1)[0]
    assert "not in the cache key" not in resources


def test_services_in_another_order_are_one_key_and_one_container(dirs) -> None:
    """The key sorts services by name; the runtime was handed them in the config's order
    (the pod's /etc/hosts and launch order follow it): one key, two containers. The
    property above rarely draws the same services twice in swapped order: pinned here."""
    def svc(name: str) -> Service:
        return Service(name=name, image=ImageRef.parse("redis:7"), commands=("serve",))
    base = Step(name="s", image=ImageRef.parse("alpine:3.19"), commands=("true",),
                services=(svc("zeta"), svc("alpha")))
    h1, seen1 = realised(base, (), dirs)
    h2, seen2 = realised(dataclasses.replace(base, services=base.services[::-1]), (), dirs)
    assert h1 == h2
    assert seen1 == seen2
    assert [s.name for s, _ in seen1["services"]] == ["alpha", "zeta"]
