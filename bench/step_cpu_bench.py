"""Kata's own CPU per container step: a first build of N independent trivial steps.

    python3 bench/step_cpu_bench.py [N]

Starts a private embedded containerd under /tmp, imports the busybox test image, writes
a pipeline of N (default 200) independent `true` steps (network "default") and runs
`kata run` on it as a process, twice, each time into a fresh store (every step misses and
runs in a container). Kata's own CPU is the user+sys time of that process and of what it
runs itself (`ip`, CNI plugins), from getrusage(RUSAGE_CHILDREN) around it. With direct
steps (the default ``containerd.step_runner``, kata/runtimes/containerd/direct.py) crun
and the steps' own processes are kata's children too and are counted: the figure is then
everything a step costs but containerd's View per image. On containerd tasks
(``step_runner: task``), containerd, its shims and crun/runc are not kata's children and
are not counted (bench/shim_cost_bench.py counts them). The better run is kept.

Prints the CPU per step against the target (<= 20 ms) and against the floor, bare
`runc run` of the same bundle (wall time per step, measured in the same run). To see
where the CPU goes: `py-spy record --gil -- python3 -m kata run` on the same pipeline.
"""

from __future__ import annotations

import json
import os
import resource
import subprocess
import sys
import tarfile
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path[:0] = [str(ROOT), str(ROOT / "tests")]

from fakes import FakeStep, write_pipeline  # noqa: E402
from kata.runtimes.base import StepSpec  # noqa: E402
from kata.runtimes.containerd import ContainerdRuntime  # noqa: E402
from kata.runtimes.containerd.spec import build_spec  # noqa: E402
from support.daemon import embedded_containerd  # noqa: E402
from support.images import BUSYBOX_REF, busybox_image, busybox_layer, write_oci_archive  # noqa: E402
from timing import median_time, timed_call  # noqa: E402

TARGET_MS = 20.0


def children_cpu() -> tuple[float, float]:
    r = resource.getrusage(resource.RUSAGE_CHILDREN)
    return r.ru_utime, r.ru_stime


def kata(base: Path, address: str, repo: Path, tag: str, *args: str) -> tuple[float, float, float, str]:
    """(user s, sys s, wall s, stdout) of one `kata` process (bytecode cached, as installed)."""
    env = {k: v for k, v in os.environ.items() if k != "PYTHONDONTWRITEBYTECODE"}
    env.update(KATA_STORE=str(base / f"store-{tag}"), PYTHONPATH=str(ROOT),
               PYTHONPYCACHEPREFIX=str(base / "pycache"))
    u0, s0 = children_cpu()
    wall, proc = timed_call(lambda: subprocess.run(
        [sys.executable, "-m", "kata", "--containerd", address, *args],
        cwd=repo, env=env, capture_output=True, text=True))
    u1, s1 = children_cpu()
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr
    return u1 - u0, s1 - s0, wall, proc.stdout


def kata_run(base: Path, address: str, n: int, tag: str) -> tuple[float, float, float, float]:
    """(user s, sys s, wall s, CPU s of `kata validate` of it) of `kata run` of n independent
    trivial steps, first build."""
    repo = base / f"repo-{tag}"
    repo.mkdir()
    (repo / "README").write_text("x\n")
    write_pipeline(repo, [FakeStep(f"s{i}", commands=(f"true {i}",)) for i in range(n)])
    vu, vs, _, _ = kata(base, address, repo, tag, "validate", "--offline")
    user, sys_, wall, out = kata(base, address, repo, tag, "run")
    assert f"All {n} steps passed" in out, out[-2000:]
    return user, sys_, wall, vu + vs


def runc_floor(base: Path, digest: str, n: int = 20) -> float:
    bundle = base / "bundle"
    (bundle / "rootfs").mkdir(parents=True)
    import io

    with tarfile.open(fileobj=io.BytesIO(busybox_layer())) as tar:
        tar.extractall(bundle / "rootfs", filter="fully_trusted")
    cfg = build_spec(StepSpec(image=digest, argv=("true",)), container_id="bench", image_env=())
    cfg["root"] = {"path": str(bundle / "rootfs")}
    del cfg["linux"]["cgroupsPath"]
    (bundle / "config.json").write_text(json.dumps(cfg))
    ids = iter(range(n))
    return median_time(lambda: subprocess.run(
        ["runc", "--root", str(base / "runc"), "run", "--bundle", str(bundle),
         f"floor-{next(ids)}"], check=True, stdout=subprocess.DEVNULL), n)


def main() -> None:
    n = int(sys.argv[1]) if len(sys.argv) > 1 else 200
    with embedded_containerd("ks") as paths, tempfile.TemporaryDirectory() as tmp:
        base = Path(tmp)
        rt = ContainerdRuntime.connect(address=paths.address, state_dir=str(paths.root.parent))
        try:
            rt.import_image(write_oci_archive(busybox_image(), base / "bb.tar"))
            digest = rt.resolve_image(BUSYBOX_REF)
        finally:
            rt.close()
        kata(base, paths.address, base, "warm", "--help")  # compile the bytecode once
        runs = [kata_run(base, paths.address, n, tag) for tag in ("a", "b")]
        floor = runc_floor(base, digest)
    user, sys_, wall, fixed = min(runs, key=lambda r: r[0] + r[1])
    per_step = (user + sys_) / n * 1e3
    marginal = (user + sys_ - fixed) / n * 1e3
    print(f"`kata run`, first build of {n} independent `true` steps (best of 2):")
    print(f"  wall {wall:.2f} s = {wall / n * 1e3:.1f} ms per step (max_parallel = CPUs)")
    print(f"  kata's own CPU (kata + what it runs: ip/CNI; direct steps: crun and the steps) "
          f"{user + sys_:.2f} s "
          f"(user {user:.2f}, sys {sys_:.2f}) = {per_step:.1f} ms per step "
          f"| ratio {per_step / TARGET_MS:.2f}x the 20 ms target (target <= 1.0x)")
    print(f"  of which the process's fixed cost (CPU of `kata validate` of it) {fixed:.2f} s; "
          f"per step beyond it {marginal:.1f} ms | ratio {marginal / TARGET_MS:.2f}x the target")
    print(f"  bare `runc run` of `true` (the floor, wall): {floor * 1e3:.1f} ms per step "
          f"| kata CPU / runc wall {per_step / (floor * 1e3):.2f}x")


if __name__ == "__main__":
    main()
