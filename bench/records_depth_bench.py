"""What a chain's records cost as it deepens: realisation bytes per step against depth.

    python3 bench/records_depth_bench.py [N ...]     (default: 100 200 400)

For each N, a fresh store and a chain of N steps (step i depends on step i-1 and publishes
its own one-file artifact, so every output tree is the same small size) realised through
the Realiser with the FakeRuntime (host shell in a real overlay workspace: run as root).
Printed per N: the realisation files' bytes (distinct inodes: a step's two keys share one
file), the LMDB index's used pages, the stack digests the records hold, and the wall time
of the first build and of the fully cached run after it. A record keeps its step's whole
artifact stack, so the bytes grow as N²/2 stack entries: doubling N multiplies them by ~4
("Not done: a stack's size in its records", docs/architecture.md).
"""

from __future__ import annotations

import os
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path[:0] = [str(ROOT), str(ROOT / "tests")]

from fakes import FakeRuntime, FakeStep, compile_steps  # noqa: E402
from kata.realise.realiser import Realiser, RealiseOptions  # noqa: E402
from store import Store  # noqa: E402


def _chain(n: int) -> list[FakeStep]:
    return [FakeStep(f"s{i}", commands=(f"mkdir -p o{i}", f"echo {i} > o{i}/f"),
                     depends_on=(f"s{i - 1}",) if i else (), artifacts=(f"o{i}/",),
                     inputs=("none",))
            for i in range(n)]


def _record_bytes(store_dir: Path) -> tuple[int, int]:
    seen: set[int] = set()
    total = 0
    for dirpath, _dirs, files in os.walk(store_dir / "realisations"):
        for f in files:
            st = os.lstat(os.path.join(dirpath, f))
            if st.st_ino not in seen:
                seen.add(st.st_ino)
                total += st.st_size
    return total, len(seen)


def measure(n: int) -> dict[str, float]:
    with tempfile.TemporaryDirectory(prefix="kata-recdepth-") as tmp:
        root = Path(tmp)
        repo = root / "repo"
        repo.mkdir()
        (repo / "x").write_text("x\n")
        steps = _chain(n)
        out: dict[str, float] = {"n": n}
        with Store.open(root / "store") as store:
            for label in ("build", "cached"):
                graph = compile_steps(repo, steps)
                opts = RealiseOptions(repo_root=repo, work_root=root / "work", max_parallel=2)
                t = time.perf_counter()
                result = Realiser(graph, store=store, runtime=FakeRuntime(),
                                  emit=lambda e: None, options=opts).run()
                out[label + "_s"] = time.perf_counter() - t
                assert result.ok, [r.message for r in result.steps.values() if r.message]
            stacks = sum(len(r.stack) for r in
                         (store.get_realisation(graph.nodes[s].drv_hash) for s in graph.order)
                         if r is not None)
        size, files = _record_bytes(root / "store")
        out.update(record_bytes=size, record_files=files, stack_entries=stacks)
        return out


def main(argv: list[str]) -> None:
    sizes = [int(a) for a in argv] or [100, 200, 400]
    print(f"load average {os.getloadavg()[0]:.1f}")
    prev = None
    for n in sizes:
        m = measure(n)
        ratio = f"  x{m['record_bytes'] / prev['record_bytes']:.2f} bytes for x{n / prev['n']:.0f} steps" \
            if prev else ""
        print(f"chain {n:5d}: records {m['record_bytes'] / 1e6:8.2f} MB in {m['record_files']} files "
              f"({m['record_bytes'] / n / 1e3:.1f} kB/step), stack entries {m['stack_entries']}, "
              f"build {m['build_s']:.1f} s, cached run {m['cached_s']:.2f} s{ratio}")
        prev = m


if __name__ == "__main__":
    main(sys.argv[1:])
