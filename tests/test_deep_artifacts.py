"""Deep artifact stacks against real containerd: a fan-in of 200 producers and a chain of 200
steps, every consumer checking (inside its container) that it sees every producer's file and,
where files collide, the right winner (the later tree in stack order). Deeper stacks than an
overlay mount takes go through the store's merged stacks; the 1,000-step cases are in
bench/deep_graph_bench.py."""

from __future__ import annotations

import os

import pytest

from fakes import FakeStep
from test_realise_integration import Env

pytestmark = pytest.mark.integration

N = 200


@pytest.fixture
def env(tmp_path, clean_runtime, busybox_digest):
    e = Env(tmp_path, clean_runtime, busybox_digest)
    yield e
    e.store.close()


def _merged(env: Env) -> list[str]:
    try:
        return [n for n in os.listdir(env.store.merged_dir) if len(n) == 64]
    except FileNotFoundError:
        return []


def _cat_check(paths: list[str], values) -> str:
    """One shell command (one cat, one tr) asserting each path holds its value, in order."""
    want = ",".join(str(v) for v in values) + ","
    return (f"got=$(cat {' '.join(paths)} | tr '\\n' ,); "
            f"test \"$got\" = {want} || {{ echo \"saw $got\"; exit 1; }}")


def test_a_fan_in_of_200_producers_sees_every_file_and_the_last_winner(env):
    env.write("README", "x\n")
    producers = [FakeStep(f"p{i}", commands=(f"mkdir -p out/p{i}", f"echo {i} > out/p{i}/file",
                                             f"echo {i} > who"),
                          artifacts=("out/", "who"), inputs=("README",))
                 for i in range(N)]
    consumer = FakeStep("sink", depends_on=tuple(p.name for p in producers), inputs=("README",),
                        commands=(_cat_check([f"out/p{i}/file" for i in range(N)], range(N)),
                                  f"test \"$(cat who)\" = {N - 1} || {{ echo who=$(cat who); exit 1; }}",
                                  "ls out | wc -l > count"),
                        artifacts=("count",))
    result = env.run([*producers, consumer])
    failed = [(s.name, s.message) for s in result.steps.values() if s.status != "passed"]
    assert result.ok and not failed, (failed, env.output("sink"))
    sink = result.steps["sink"]
    out = env.store.unpacked(sink.outputs)
    assert open(os.path.join(out, "count")).read().strip() == str(N)
    assert len(_merged(env)) == 12  # the bottom 192 trees as 12 merged blocks of 16

    # a second run is all hits and needs no container, merged stack or not
    again = env.run([*producers, consumer])
    assert again.ok and not env.ran()


def test_a_chain_of_200_steps_sees_every_earlier_file_and_the_latest_winner(env):
    env.write("README", "x\n")
    steps = []
    for i in range(N):
        check = (("true",) if i == 0 else
                 (_cat_check([f"f{j}" for j in range(i)], range(i)),
                  f"test \"$(cat top)\" = {i - 1} || {{ echo top=$(cat top); exit 1; }}",
                  f"test ! -e f{i}"))
        steps.append(FakeStep(f"c{i}", commands=(*check, f"echo {i} > f{i}", f"echo {i} > top"),
                              depends_on=(f"c{i - 1}",) if i else (), artifacts=(f"f{i}", "top"),
                              inputs=("README",)))
    result = env.run(steps)
    failed = [(s.name, s.message, env.output(s.name)) for s in result.steps.values() if s.status != "passed"]
    assert result.ok and not failed, failed[:3]
    assert len(env.ran()) == N
    # past 24 trees, blocks of 16 trees ([0:16], [16:32], ... [176:192]) shared along the chain
    assert len(_merged(env)) == (N - 1) // 16


def test_swapping_depends_on_reruns_the_dependent_that_sees_the_other_winner(env):
    """Two producers write the same path; the dependent sees the later one in its
    ``depends_on``. Swapping the order changes what it sees, so it must not hit the
    other order's result (it did: the key sorted the dependencies)."""
    env.write("README", "x\n")
    a = FakeStep("a", commands=("echo A > same",), artifacts=("same",), inputs=("README",))
    b = FakeStep("b", commands=("echo B > same",), artifacts=("same",), inputs=("README",))

    def consumer(order):
        return FakeStep("c", depends_on=order, inputs=("README",),
                        commands=("cat same > seen",), artifacts=("seen",))

    def seen(result):
        return open(os.path.join(env.store.unpacked(result.steps["c"].outputs), "seen")).read()

    first = env.run([a, b, consumer(("a", "b"))])
    assert first.ok and seen(first) == "B\n"
    swapped = env.run([a, b, consumer(("b", "a"))])
    assert swapped.ok and env.ran() == ["c"], env.ran()
    assert seen(swapped) == "A\n"
    assert env.run([a, b, consumer(("a", "b"))]).ok and env.ran() == []  # both kept
