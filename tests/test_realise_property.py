"""Property: over random small DAGs and random edits, the steps that rerun are exactly
those whose inputs changed — their own files, or what a dependency hands them (no false
hits, no false misses). This module's quick form: FakeRuntime (host shell in the real
overlay) + the real store. The full form, on real containerd, with every kind of edit
the issue names and a store on sshfs too, is tests/test_hit_property.py.

Step i reads ``in/i``, strips its spaces (so a whitespace edit is a no-op for its
output: early cutoff), and appends every direct dependency's output. The model: a
step runs iff the pair (raw bytes of in/i, outputs of its direct dependencies) was
never realised before — content addressing, with earlier results kept in the store.
"""

from __future__ import annotations

import shutil
import tempfile
from pathlib import Path

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from fakes import FakeRuntime, FakeStep, compile_steps
from kata.realise import events as ev
from kata.realise.realiser import Realiser, RealiseOptions
from store import Store

CONTENTS = st.sampled_from(["a", "a ", " a", "b", "ab", "a b", ""])


@st.composite
def dags(draw):
    n = draw(st.integers(min_value=1, max_value=5))
    deps = [tuple(sorted(draw(st.sets(st.integers(0, i - 1), max_size=2)))) if i else ()
            for i in range(n)]
    first = [draw(CONTENTS) for _ in range(n)]
    edits = draw(st.lists(st.lists(st.tuples(st.integers(0, n - 1), CONTENTS), max_size=3),
                          min_size=1, max_size=3))
    return deps, first, edits


def _steps(deps):
    steps = []
    for i, ds in enumerate(deps):
        cmds = [f"mkdir -p o{i}", f"tr -d ' ' < in/{i} > o{i}/v"]
        cmds += [f"cat o{d}/v >> o{i}/v" for d in ds]
        steps.append(FakeStep(f"s{i}", commands=tuple(cmds), depends_on=tuple(f"s{d}" for d in ds),
                              inputs=(f"in/{i}",), artifacts=(f"o{i}/",)))
    return steps


def _model_outputs(deps, files):
    out: list[str] = []
    for i, ds in enumerate(deps):
        out.append(files[i].replace(" ", "") + "".join(out[d] for d in ds))
    return out


@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(dags())
def test_reruns_are_exactly_the_changed_steps(case):
    deps, files, edits = case
    tmp = Path(tempfile.mkdtemp(prefix="kata-prop-"))
    try:
        repo = tmp / "repo"
        (repo / "in").mkdir(parents=True)
        store = Store.open(tmp / "store")
        runtime = FakeRuntime()
        steps = _steps(deps)
        seen: set[tuple] = set()
        rounds = [[]] + edits
        files = list(files)
        for edit in rounds:
            for i, text in edit:
                files[i] = text
            for i, text in enumerate(files):
                (repo / "in" / str(i)).write_text(text)
            outs = _model_outputs(deps, files)
            expected = set()
            for i, ds in enumerate(deps):
                key = (i, files[i], tuple(outs[d] for d in ds))
                if key not in seen:
                    expected.add(f"s{i}")
                    seen.add(key)
            events: list[ev.Event] = []
            graph = compile_steps(repo, steps)
            opts = RealiseOptions(repo_root=repo, work_root=tmp / "work", max_parallel=2)
            result = Realiser(graph, store=store, runtime=runtime, emit=events.append,
                              options=opts).run()
            assert result.ok, events
            ran = {e.step for e in events if isinstance(e, ev.StepStarted)}
            assert ran == expected, (deps, files, edit)
        store.close()
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
