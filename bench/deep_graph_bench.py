"""Deep artifact graphs: what a consumer's workspace costs against an overlay of one layer.

    python3 bench/deep_graph_bench.py [N] [--no-grid]

Starts a private embedded containerd under /tmp, imports the busybox test image and runs,
each into a fresh store, with every step publishing an artifact:
1. a fan-in of N (default 1,000) producers and one consumer of them all;
2. a chain of N steps, each adding a file and overwriting a shared one;
   (and a second consumer of the same producers, which finds the merged blocks built);
3. the 10 x 100 graph (each step depends on two of the level below, Bazel genrule style),
   unless --no-grid.
Every consumer checks inside its container that it sees what it must (every producer's
file; the latest writer of the shared file), so a run that passes is a correct one.

A consumer's workspace cost is the time from its layer list (unpacking its dependencies'
trees, building or reusing merged stacks) to its overlay mounted, plus the unmount and
removal afterwards; it is printed per consumer (median, p90, max, and the deepest one)
against the anchor measured in the same run: the mount, unmount and removal of an overlay
workspace over one already-unpacked layer. Step wall times are printed for scale.
"""

from __future__ import annotations

import random
import statistics
import sys
import tempfile
import threading
import time
from collections import defaultdict
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path[:0] = [str(ROOT), str(ROOT / "tests")]

from fakes import FakeStep, compile_steps  # noqa: E402
from kata.realise import realiser as realiser_mod  # noqa: E402
from kata.realise import workspace as workspace_mod  # noqa: E402
from kata.realise.realiser import Realiser, RealiseOptions  # noqa: E402
from kata.runtimes.containerd import ContainerdRuntime  # noqa: E402
from store import Store  # noqa: E402
from support.daemon import embedded_containerd  # noqa: E402
from support.images import BUSYBOX_REF, busybox_image, write_oci_archive  # noqa: E402
from timing import median_time, timed_call  # noqa: E402

_costs: dict[str, float] = defaultdict(float)  # step -> workspace seconds
_depth: dict[str, int] = {}
_current = threading.local()


def _instrument() -> None:
    """Time _layers and the Workspace's mount/unmount per step (bench only)."""
    layers, ws_init, ws_close = (Realiser._layers, workspace_mod.Workspace.__init__,
                                 workspace_mod.Workspace.close)

    def timed_layers(self, name, node):  # noqa: ANN001, ANN202
        _current.name = name
        t = time.perf_counter()
        try:
            return layers(self, name, node)
        finally:
            _costs[name] += time.perf_counter() - t
            _depth[name] = len(self._deps_stack(name))

    def timed_init(self, work_root, layers_):  # noqa: ANN001, ANN202
        t = time.perf_counter()
        try:
            ws_init(self, work_root, layers_)
        finally:
            _costs[getattr(_current, "name", "?")] += time.perf_counter() - t
            self._bench_name = getattr(_current, "name", "?")

    def timed_close(self):  # noqa: ANN001, ANN202
        t = time.perf_counter()
        try:
            ws_close(self)
        finally:
            _costs[getattr(self, "_bench_name", "?")] += time.perf_counter() - t

    Realiser._layers = timed_layers  # type: ignore[method-assign]
    workspace_mod.Workspace.__init__ = timed_init  # type: ignore[method-assign]
    workspace_mod.Workspace.close = timed_close  # type: ignore[method-assign]


def one_layer_anchor(base: Path, n: int = 30) -> float:
    """Median seconds to mount + unmount + remove an overlay workspace over one layer."""
    store = Store.open(base / "anchor-store")
    src = base / "anchor-src"
    src.mkdir()
    (src / "file").write_text("x\n")
    layer = Path(store.unpacked(store.put_tree(src)))
    work = base / "anchor-work"
    work.mkdir()
    anchor = median_time(lambda: workspace_mod.Workspace(work, [layer]).close(), n)
    store.close()
    return anchor


def realise(base: Path, rt, digest: str, tag: str, steps: list[FakeStep]) -> tuple[float, Store]:
    repo = base / f"repo-{tag}"
    repo.mkdir()
    (repo / "README").write_text("x\n")
    graph = compile_steps(repo, steps, digest=digest)
    store = Store.open(base / f"store-{tag}")
    opts = RealiseOptions(repo_root=repo, work_root=Path(store.state_dir) / "work",
                          max_parallel=2)
    wall, result = timed_call(
        Realiser(graph, store=store, runtime=rt, emit=lambda e: None, options=opts).run)
    failed = [(s.name, s.message) for s in result.steps.values() if s.status != "passed"]
    assert result.ok and not failed, failed[:3]
    return wall, store


def fan_in(n: int) -> list[FakeStep]:
    producers = [FakeStep(f"p{i}", commands=(f"mkdir -p out/p{i}", f"echo {i} > out/p{i}/file",
                                             f"echo {i} > who"),
                          artifacts=("out/", "who"), inputs=("README",)) for i in range(n)]
    check = (f"for i in $(seq 0 {n - 1}); do test \"$(cat out/p$i/file)\" = $i || exit 1; done",
             f"test \"$(cat who)\" = {n - 1}")
    # sink2 sees the same stack after sink (which publishes nothing): the warm consumer
    return [*producers,
            FakeStep("sink", depends_on=tuple(p.name for p in producers), commands=check,
                     inputs=("README",)),
            FakeStep("sink2", depends_on=(*(p.name for p in producers), "sink"), commands=check,
                     inputs=("README",))]


def chain(n: int) -> list[FakeStep]:
    steps = []
    for i in range(n):
        check = () if i == 0 else (
            f"test \"$(ls f* | wc -l)\" = {i}", f"test \"$(cat f0)\" = 0",
            f"test \"$(cat f{i - 1})\" = {i - 1}", f"test \"$(cat top)\" = {i - 1}")
        steps.append(FakeStep(f"c{i}", commands=(*check, f"echo {i} > f{i}", f"echo {i} > top"),
                              depends_on=(f"c{i - 1}",) if i else (),
                              artifacts=(f"f{i}", "top"), inputs=("README",)))
    return steps


def grid(levels: int = 10, width: int = 100) -> list[FakeStep]:
    rng = random.Random(11)
    steps: list[FakeStep] = []
    closure: dict[str, set[str]] = {}
    for lv in range(levels):
        for i in range(width):
            name = f"l{lv}_{i}"
            deps = tuple(sorted(rng.sample(range(width), 2))) if lv else ()
            dep_names = tuple(f"l{lv - 1}_{d}" for d in deps)
            seen = set().union(*(closure[d] | {d} for d in dep_names)) if dep_names else set()
            closure[name] = seen
            check = (f"test \"$(ls out | wc -l)\" = {len(seen)}",) if seen else ()
            steps.append(FakeStep(name, commands=(*check, f"mkdir -p out", f"echo {name} > out/{name}"),
                                  depends_on=dep_names, artifacts=(f"out/{name}",),
                                  inputs=("README",)))
    return steps


def report(what: str, names: list[str], anchor: float, wall: float, n_steps: int, store: Store) -> None:
    costs = sorted(_costs[n] for n in names)
    deepest = max(names, key=lambda n: _depth.get(n, 0))
    med = statistics.median(costs)
    p90 = costs[int(len(costs) * 0.9)] if len(costs) > 1 else costs[0]
    try:
        merged = len([n for n in __import__("os").listdir(store.merged_dir) if len(n) == 64])
    except FileNotFoundError:
        merged = 0
    print(f"{what}: {n_steps} steps in {wall:.1f} s ({wall / n_steps * 1e3:.0f} ms per step, "
          f"max_parallel 2); {merged} merged stacks")
    print(f"   workspace per consumer ({len(names)}): median {med * 1e3:.1f} ms = "
          f"{med / anchor:.1f}x one layer | p90 {p90 * 1e3:.1f} ms = {p90 / anchor:.1f}x | "
          f"max {costs[-1] * 1e3:.1f} ms = {costs[-1] / anchor:.1f}x")
    print(f"   deepest consumer {deepest} ({_depth.get(deepest, 0)} trees): "
          f"{_costs[deepest] * 1e3:.1f} ms = {_costs[deepest] / anchor:.1f}x one layer")
    if "sink2" in names:
        print(f"   the next consumer of the same {_depth.get('sink2', 0)} trees (merged blocks "
              f"built): {_costs['sink2'] * 1e3:.1f} ms = {_costs['sink2'] / anchor:.1f}x one layer")


def main() -> None:
    args = sys.argv[1:]
    with_grid = "--no-grid" not in args
    args = [a for a in args if a != "--no-grid"]
    n = int(args[0]) if args else 1000
    with embedded_containerd("kd") as paths, tempfile.TemporaryDirectory() as tmp:
        base = Path(tmp)
        anchor = one_layer_anchor(base)
        _instrument()
        print(f"anchor: overlay workspace over one layer, mount + unmount + remove: "
              f"{anchor * 1e3:.2f} ms (median of 30)")
        rt = ContainerdRuntime.connect(address=paths.address, state_dir=str(paths.root.parent))
        try:
            rt.import_image(write_oci_archive(busybox_image(), base / "bb.tar"))
            digest = rt.resolve_image(BUSYBOX_REF)
            cases = [("fan-in", fan_in(n), ["sink", "sink2"]), ("chain", chain(n), [f"c{i}" for i in range(1, n)])]
            if with_grid:
                g = grid()
                cases.append(("10x100 grid", g, [s.name for s in g if s.depends_on]))
            for what, steps, consumers in cases:
                wall, store = realise(base, rt, digest, what.split()[0], steps)
                report(what, consumers, anchor, wall, len(steps), store)
                store.close()
        finally:
            rt.close()
    print(f"(realiser: stacks deeper than {realiser_mod._DIRECT_LAYERS} trees mount aligned "
          f"merged blocks of {realiser_mod._MERGE_BLOCKS} trees and the rest one by one)")


if __name__ == "__main__":
    main()
