"""Validate and compile+hash a generated 10,000-step pipeline, against the bare YAML load.

    python3 bench/compile_bench.py [STEPS]

The floor is `yaml.load(..., Loader=yaml.CSafeLoader)` of the same file in the same
run (what any YAML-based tool pays just to read it). Target: validate <= 4x the floor.
"""

from __future__ import annotations

import hashlib
import os
import random
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import yaml  # noqa: E402

from kata.compile import compile_pipeline, plan  # noqa: E402
from kata.loader import load_pipeline  # noqa: E402
from timing import median_time  # noqa: E402


def generate(path: Path, steps: int, seed: int = 1) -> None:
    rnd = random.Random(seed)
    out = ['pipeline: "bench"', "settings:", '  timeout: "1h"', "  max_parallel: 8",
           "env:", '  CI: "true"', '  NODE_ENV: "ci"', "steps:"]
    for i in range(steps):
        out.append(f'  - name: "step-{i}"')
        if i % 3 == 0:
            out.append(f'    image: "registry.example.com/team/tool@sha256:{hashlib.sha256(str(i % 7).encode()).hexdigest()}"')
        else:
            out.append(f'    image: "{rnd.choice(["node:20-alpine", "golang:1.22-alpine", "alpine:3.19"])}"')
        out.append("    commands:")
        out.append(f'      - "make target-{i}"')
        out.append(f'      - "./check.sh --shard {i % 16}"')
        if i:
            deps = sorted({f"step-{rnd.randrange(max(0, i - 50), i)}" for _ in range(rnd.randint(0, 3))})
            if deps:
                out.append(f"    depends_on: [{', '.join(deps)}]")
        if i % 2 == 0:
            out.append("    env:")
            out.append(f'      SHARD: "{i % 16}"')
            out.append('      CGO_ENABLED: "0"')
        if i % 5 == 0:
            out.append('    artifacts: ["dist/", "bin/"]')
        if i % 10 == 0:
            out.append('    inputs: ["src/**"]')
            out.append('    timeout: "5m"')
    path.write_text("\n".join(out) + "\n")


def main() -> None:
    steps = int(sys.argv[1]) if len(sys.argv) > 1 else 10_000
    with tempfile.TemporaryDirectory(prefix="kata-compile-bench-") as tmp:
        root = Path(tmp)
        cfg = root / ".kata-ci.yaml"
        generate(cfg, steps)
        (root / "src").mkdir()
        for i in range(20):
            (root / "src" / f"f{i}.c").write_text(f"int x{i};\n")
        size = cfg.stat().st_size

        def bare() -> None:
            with open(cfg, encoding="utf-8") as f:
                yaml.load(f, Loader=yaml.CSafeLoader)

        def validate() -> None:
            plan(load_pipeline(cfg))

        def resolver(ref):
            return "sha256:" + hashlib.sha256(str(ref).encode()).hexdigest()

        def compile_hash() -> None:
            g = compile_pipeline(load_pipeline(cfg), resolver=resolver, repo_root=root)
            assert all(n.drv_hash for n in g.nodes.values())

        runs = 5
        bare_s = median_time(bare, runs)
        validate_s = median_time(validate, runs)
        compile_s = median_time(compile_hash, runs)
        env = {**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parent.parent)}
        cli = []
        for _ in range(3):
            t = time.perf_counter()
            r = subprocess.run([sys.executable, "-m", "kata", "validate", "--offline"], cwd=root, env=env,
                               capture_output=True, text=True)
            cli.append(time.perf_counter() - t)
            assert r.returncode == 0, r.stderr
        print(f"pipeline: {steps} steps, {size / 1e6:.2f} MB YAML (median of {runs} runs)")
        print(f"  yaml.load CSafeLoader (floor)   {bare_s * 1000:8.1f} ms")
        print(f"  validate (load + DAG)           {validate_s * 1000:8.1f} ms   {validate_s / bare_s:5.2f}x floor (target <= 4x)")
        print(f"  compile + hash (all drv hashes) {compile_s * 1000:8.1f} ms   {compile_s / bare_s:5.2f}x floor")
        print(f"  `kata validate` process         {statistics.median(cli) * 1000:8.1f} ms   "
              f"{statistics.median(cli) / bare_s:5.2f}x floor (incl. interpreter start)")
        print(f"  -> {r.stdout.strip()}")


if __name__ == "__main__":
    main()
