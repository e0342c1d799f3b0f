"""The store heals (issue 9, case 4) and scopes hold (case 3): the realiser over the
FakeRuntime, a real store, and the copying workspace (no mount needed)."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from fakes import FakeRuntime, FakeStep, compile_steps
from kata.keys import Scope
from kata.realise import events as ev
from kata.realise.plan import DAMAGED
from kata.realise.realiser import Realiser, RealiseOptions
from kata.realise.workspace import CopyWorkspace
from store import Store

DAG = [
    FakeStep("build", commands=("echo building", "mkdir -p dist", "cat src/a.txt > dist/out.txt"),
             inputs=("src/**",), artifacts=("dist/",)),
    FakeStep("test", commands=("grep hello dist/out.txt",), depends_on=("build",),
             inputs=("tests/**",)),
]
MAIN = Scope(ref="refs/heads/main", default_ref="refs/heads/main", protected=True)
FEATURE = Scope(ref="refs/heads/f", default_ref="refs/heads/main", protected=False)


class Env:
    def __init__(self, tmp_path: Path) -> None:
        self.repo = tmp_path / "repo"
        self.repo.mkdir()
        self.store = Store.open(tmp_path / "store")
        self.work = tmp_path / "work"
        self.runtime = FakeRuntime()
        self.events: list[ev.Event] = []

    def write(self, rel: str, text: str) -> None:
        path = self.repo / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)

    def realiser(self, steps, **options) -> Realiser:
        self.events = []
        self.runtime.started.clear()
        opts = RealiseOptions(repo_root=self.repo, work_root=self.work, max_parallel=2, **options)
        return Realiser(compile_steps(self.repo, steps), store=self.store, runtime=self.runtime,
                        emit=self.events.append, options=opts, workspace=CopyWorkspace)

    def run(self, steps, **options):
        return self.realiser(steps, **options).run()

    def cache(self) -> dict[str, ev.CacheChecked]:
        return {e.step: e for e in self.events if isinstance(e, ev.CacheChecked)}

    def output(self) -> list[str]:
        return [e.text for e in self.events if isinstance(e, ev.OutputLine)]


@pytest.fixture
def env(tmp_path):
    e = Env(tmp_path)
    e.write("src/a.txt", "hello\n")
    e.write("tests/t", "1")
    yield e
    e.store.close()


def flip(store: Store, digest: str) -> None:
    """Damage an object in place: one byte flipped, same size (a disk, a bad copy)."""
    path = store.objects.path(digest)
    data = bytearray(Path(path).read_bytes())
    data[len(data) // 2] ^= 0xFF
    st = os.stat(path)
    Path(path).write_bytes(bytes(data))
    os.utime(path, ns=(st.st_atime_ns, st.st_mtime_ns))  # same size, same mtime
    assert os.stat(path).st_size == st.st_size


def quarantined(store: Store, digest: str) -> bool:
    return os.path.exists(os.path.join(store.root, "quarantine", digest[7:]))


@pytest.mark.parametrize("what", ["outputs", "log"])
@pytest.mark.parametrize("how", ["flip", "delete"])
def test_a_damaged_object_behind_a_hit_rebuilds_the_step_in_the_same_run(env, what, how):
    first = env.run(DAG)
    digest = getattr(first.steps["build"], what)
    (flip if how == "flip" else lambda s, d: os.unlink(s.objects.path(d)))(env.store, digest)
    second = env.run(DAG)
    assert second.ok
    cache = env.cache()
    assert (cache["build"].hit, cache["build"].damaged, cache["build"].reason) == \
        (False, True, DAMAGED)
    assert "build" in env.runtime.started
    assert second.steps["build"].cache == "MISS"
    assert quarantined(env.store, digest) == (how == "flip")
    assert env.store.has_blob(getattr(second.steps["build"], what))
    third = env.run(DAG)  # healed: everything hits again
    assert {r.cache for r in third.steps.values()} == {"HIT"} and env.runtime.started == []


def test_every_object_damaged_never_reports_a_hit(env):
    env.run(DAG)
    for digest, _ in list(env.store.objects.iter_objects()):
        flip(env.store, digest)
    result = env.run(DAG)
    assert result.ok
    assert sorted(env.runtime.started) == ["build", "test"]
    assert not any(e.hit for e in env.cache().values())
    assert "hello" in env.output()


def test_a_dependency_tree_damaged_while_a_dependent_needs_it_is_rebuilt(env):
    first = env.run(DAG)
    tree = first.steps["build"].outputs
    env.write("tests/t", "2")  # test misses, build hits
    r = env.realiser(DAG)
    plan = r.plan()
    assert [n for n in plan.hits] == ["build"]
    flip(env.store, tree)  # damaged after the plan saw it intact
    env.store.evict_unpacked()  # ... and the dependent must unpack it
    result = r.run(plan)
    assert result.ok, result.steps
    assert env.runtime.started == ["build", "test"]
    assert env.cache()["build"].damaged
    assert quarantined(env.store, tree)
    assert result.steps["build"].cache == "MISS" and result.steps["test"].status == "passed"


def test_a_damaged_input_snapshot_is_taken_again(env):
    first = env.run(DAG)
    env.store.evict_unpacked()
    snapshots = [d for d, _ in env.store.objects.iter_objects()
                 if d not in (first.steps["build"].outputs, first.steps["build"].log,
                              first.steps["test"].log, first.steps["test"].outputs)]
    for digest in snapshots:
        flip(env.store, digest)
    result = env.run(DAG, use_cache=False)
    assert result.ok and "hello" in env.output()


def test_dry_run_reports_damage_and_changes_nothing(env):
    first = env.run(DAG)
    tree = first.steps["build"].outputs
    flip(env.store, tree)
    entries = {e.step: e for e in env.realiser(DAG).dry_run()}
    assert (entries["build"].hit, entries["build"].why) == (False, DAMAGED)
    assert not quarantined(env.store, tree) and os.path.exists(env.store.objects.path(tree))


CACHED = FakeStep("install", commands=(
    'echo "restored: $(cat cachedir/stamp 2>/dev/null || echo none)"',
    "mkdir -p cachedir && cp stamp cachedir/stamp"),
    inputs=("stamp",), cache_paths=("cachedir/",), key_files=("lock",))


def restored(env: Env) -> str:
    return next(t for t in env.output() if t.startswith("restored: "))[len("restored: "):]


def test_cache_directories_never_cross_from_a_branch_into_the_default_branch(env):
    env.write("lock", "1")
    env.write("stamp", "from-feature")
    env.run([CACHED], scope=FEATURE)
    assert restored(env) == "none"
    env.write("stamp", "from-main")
    env.run([CACHED], scope=MAIN)
    assert restored(env) == "none"  # main never restores what a branch wrote
    env.write("stamp", "main-2")
    env.run([CACHED], scope=MAIN)
    assert restored(env) == "from-main"
    env.write("stamp", "feature-2")
    env.run([CACHED], scope=FEATURE)
    assert restored(env) == "from-feature"  # its own scope first
    other = Scope(ref="refs/heads/g", default_ref="refs/heads/main", protected=False)
    env.write("stamp", "g")
    env.run([CACHED], scope=other)
    assert restored(env) == "from-main"  # then the default branch's
    scopes = sorted(r.scope for r in _records(env.store) if r.kind == "cache-dir")
    assert scopes == ["ref:refs/heads/f", "ref:refs/heads/g", "ref:refs/heads/main"]


def test_a_protected_ref_restores_only_its_own_entries(env):
    env.write("lock", "1")
    env.write("stamp", "main")
    env.run([CACHED], scope=MAIN)
    tag = Scope(ref="refs/tags/v1", default_ref="refs/heads/main", protected=True)
    env.write("stamp", "tag")
    env.run([CACHED], scope=tag)
    assert restored(env) == "none"


def test_untrusted_runs_write_only_their_quarantine(env):
    untrusted = Scope(ref="refs/pull/1/head", default_ref="refs/heads/main", protected=False,
                      trusted=False)
    env.write("lock", "1")
    env.write("stamp", "evil")
    env.run([CACHED], scope=untrusted)
    assert env.runtime.started == ["install"]
    env.run([CACHED], scope=untrusted)  # its own quarantine: a hit
    assert env.runtime.started == []
    env.run([CACHED], scope=MAIN)  # a trusted run never reads the quarantine
    assert env.runtime.started == ["install"] and restored(env) == "none"
    records = _records(env.store)
    assert {r.scope for r in records if r.kind in ("step", "cache-dir")} == \
        {"quarantine:refs/pull/1/head", "", "ref:refs/heads/main"}
    env.write("stamp", "pr-2")
    env.run([CACHED], scope=untrusted)  # reads its quarantine first
    assert restored(env) == "evil"


def _records(store: Store):
    from store.realisations import Realisation

    return [Realisation.decode(Path(p).read_bytes()) for _, p, _ in store.iter_realisations()]
