"""Kata next to Bazel on the same 1,000-step graph, measured in one run.

    apt-get install bazel-bootstrap          # Debian's Bazel 4.2; this script installs nothing
    python3 bench/bazel_side_by_side.py [--levels 10] [--width 100] [--repeat 5] [--skip-build]

The graph: ``levels`` x ``width`` steps; every step above level 0 depends on two steps
of the level below (as Bazel users' genrule graphs do) and writes a file made of its
dependencies' files plus its own line. It is generated twice: as a BUILD file of
genrules (a Bazel workspace) and as a ``.kata-ci.yaml`` whose steps pass their files on
as artifacts (busybox image, a private embedded containerd under /tmp).

Printed, each as Kata / Bazel (or Kata / Kata) with the issue's limit:
1. first build with artifacts: ``kata run`` on an empty store vs ``bazel clean`` +
   ``bazel build //...`` (limit <= 3x);
2. fully cached no-op, a new kata process, piped, vs Bazel's warm-server no-op
   (limit <= 0.5x) and vs a cold server (``bazel shutdown`` first); after one warm-up run
   that leaves the no-op record (``kata.realise.noop``), as a user's second run does;
3. Kata's no-op vs ``kata validate`` of the same file (limit <= 1.3x);
4. the no-op on a terminal (a pseudo-terminal) vs piped, at 5,000 steps (limit <= 1.2x);
5. ``kata validate`` at 10,000 vs 1,000 steps (linear loading: about 10x).
Medians of ``--repeat`` runs, interleaved (kata, bazel, kata, ...) so both see the same
machine load. If the first build fails (deep artifact stacks, before merged layers), that
is printed and the no-op figures use realisations recorded directly into a second store.
Without ``bazel`` on PATH, it says so and exits 0.
"""

from __future__ import annotations

import argparse
import os
import pty
import resource
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path[:0] = [str(ROOT), str(ROOT / "tests")]

import yaml  # noqa: E402
from timing import kata_env  # noqa: E402


def step_name(level: int, i: int) -> str:
    return f"s{level}_{i}"


def deps_of(level: int, i: int, width: int) -> tuple[str, str]:
    """The two steps of the level below that step (level, i) depends on."""
    return step_name(level - 1, i), step_name(level - 1, (i * 7 + 3) % width if width > 1 else i)


def build_file(levels: int, width: int) -> str:
    """The graph as genrules: each writes its dependencies' files and its own line."""
    rules = []
    for lvl in range(levels):
        for i in range(width):
            name = step_name(lvl, i)
            if lvl == 0:
                rules.append(f'genrule(name = "{name}", outs = ["{name}.txt"], '
                             f'cmd = "echo {lvl} {i} > $@")')
                continue
            srcs = ", ".join(f'":{d}"' for d in sorted(set(deps_of(lvl, i, width))))
            rules.append(f'genrule(name = "{name}", srcs = [{srcs}], outs = ["{name}.txt"], '
                         f'cmd = "cat $(SRCS) > $@ && echo {lvl} {i} >> $@")')
    return "\n".join(rules) + "\n"


def kata_config(levels: int, width: int, image: str, artifacts: bool = True) -> str:
    """The same graph as a pipeline: each step writes out/<name>.txt and passes it on."""
    steps = []
    for lvl in range(levels):
        for i in range(width):
            name = step_name(lvl, i)
            step: dict = {"name": name, "image": image}
            if lvl == 0:
                cmd = f"mkdir -p out && echo {lvl} {i} > out/{name}.txt"
            else:
                deps = sorted(set(deps_of(lvl, i, width)))
                step["depends_on"] = deps
                cmd = (f"mkdir -p out && cat {' '.join(f'out/{d}.txt' for d in deps)} "
                       f"> out/{name}.txt && echo {lvl} {i} >> out/{name}.txt")
            step["commands"] = [cmd]
            if artifacts:
                step["artifacts"] = [f"out/{name}.txt"]
            steps.append(step)
    doc = {"pipeline": "side-by-side", "settings": {"max_parallel": os.cpu_count() or 2},
           "steps": steps}
    return yaml.safe_dump(doc, sort_keys=False)


class Bazel:
    def __init__(self, binary: str, workspace: Path, output_root: Path) -> None:
        self.base = [binary, f"--output_user_root={output_root}"]
        self.workspace = workspace

    def __call__(self, *args: str) -> float:
        t = time.perf_counter()
        proc = subprocess.run([*self.base, *args], cwd=self.workspace, capture_output=True,
                              text=True)
        elapsed = time.perf_counter() - t
        if proc.returncode != 0:
            raise SystemExit(f"bazel {' '.join(args)} failed:\n{proc.stderr[-3000:]}")
        return elapsed


class Kata:
    def __init__(self, address: str, store: Path) -> None:
        self.address = address
        self.env = kata_env(store)

    def argv(self, *args: str) -> list[str]:
        return [sys.executable, "-m", "kata", "--containerd", self.address, *args]

    last_cpu = 0.0  # CPU seconds (user + system) of the last kata process

    last_self_cpu = 0.0  # of that, the kata process itself (its own threads)

    def __call__(self, repo: Path, *args: str) -> tuple[float, int, str]:
        c, t = child_cpu(), time.perf_counter()
        with tempfile.TemporaryFile() as out:
            proc = subprocess.Popen(self.argv(*args), cwd=repo, env=self.env, stdout=out,
                                    stderr=subprocess.STDOUT)
            own = 0.0
            while proc.poll() is None:  # its own CPU, sampled until it exits (the last
                own = max(own, self_cpu(proc.pid))  # 50 ms of a run may be missed)
                time.sleep(0.05)
            elapsed = time.perf_counter() - t
            out.seek(0)
            text = out.read().decode(errors="replace")
        self.last_cpu = child_cpu() - c
        self.last_self_cpu = own
        return elapsed, proc.returncode, text

    def on_terminal(self, repo: Path, *args: str) -> tuple[float, int]:
        master, slave = pty.openpty()
        c, t = child_cpu(), time.perf_counter()
        proc = subprocess.Popen(self.argv(*args), cwd=repo, env={**self.env, "TERM": "xterm"},
                                stdin=slave, stdout=slave, stderr=slave)
        os.close(slave)
        while True:
            try:
                if not os.read(master, 1 << 16):
                    break
            except OSError:
                break
        os.close(master)
        status = proc.wait()
        elapsed = time.perf_counter() - t
        self.last_cpu = child_cpu() - c
        return elapsed, status


def self_cpu(pid: int) -> float:
    """User + system CPU seconds of process ``pid`` itself (not its children); 0 once gone."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return 0.0
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def child_cpu() -> float:
    """User + system CPU seconds of this process's waited-for children so far."""
    r = resource.getrusage(resource.RUSAGE_CHILDREN)
    return r.ru_utime + r.ru_stime


def median(values: list[float]) -> float:
    return statistics.median(values)


def ms(seconds: float) -> str:
    return f"{seconds * 1e3:,.0f} ms"


def verdict(ratio: float, limit: float) -> str:
    return f"{ratio:.2f}x (limit <= {limit}x: {'met' if ratio <= limit else 'NOT met'})"


def record_cached(repo: Path, store_dir: Path, digest: str) -> None:
    """Record every step of ``repo``'s pipeline as realised (empty outputs), as the realiser
    would after a run: for the no-op figures when the real first build could not finish."""
    from kata.compile import compile_pipeline
    from kata.loader import load_pipeline
    from store import Realisation, Store

    with Store.open(store_dir) as store:
        graph = compile_pipeline(load_pipeline(repo / ".kata-ci.yaml"),
                                 resolver=lambda ref: digest, repo_root=repo,
                                 stat_cache=store.stat_cache)
        empty = Path(tempfile.mkdtemp())
        tree, log = store.put_tree(empty), store.put_blob(b"")
        empty.rmdir()
        for name in graph.order:
            store.put_realisation(graph.nodes[name].drv_hash,
                                  Realisation(outputs=tree, log=log, step=name))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--levels", type=int, default=10)
    ap.add_argument("--width", type=int, default=100)
    ap.add_argument("--repeat", type=int, default=5)
    ap.add_argument("--skip-build", action="store_true",
                    help="no first builds (figure 1): record the cache directly")
    args = ap.parse_args()
    binary = shutil.which("bazel")
    if binary is None:
        print("bazel is not installed: nothing to compare with. Install Debian's Bazel with\n"
              "    apt-get install bazel-bootstrap\nand run this again.")
        return
    from kata.runtimes.containerd import ContainerdRuntime
    from support.daemon import embedded_containerd
    from support.images import BUSYBOX_REF, busybox_image, write_oci_archive

    n = args.levels * args.width
    tmp = Path(tempfile.mkdtemp(prefix="kata-bazel-"))
    bazel = None
    try:
        ws = tmp / "ws"
        ws.mkdir()
        (ws / "WORKSPACE").write_text("")
        (ws / "BUILD").write_text(build_file(args.levels, args.width))
        bazel = Bazel(binary, ws, tmp / "bazel-root")
        with embedded_containerd("kbz") as paths:
            rt = ContainerdRuntime.connect(address=paths.address,
                                           state_dir=str(paths.root.parent))
            rt.import_image(write_oci_archive(busybox_image(), tmp / "bb.tar"))
            digest = rt.resolve_image(BUSYBOX_REF)
            rt.close()
            repo = tmp / "repo"
            repo.mkdir()
            (repo / ".kata-ci.yaml").write_text(kata_config(args.levels, args.width, BUSYBOX_REF))
            kata = Kata(paths.address, tmp / "store")
            warm = tmp / "warm"  # bytecode of everything `kata run` imports, as installed
            warm.mkdir()
            (warm / ".kata-ci.yaml").write_text(kata_config(1, 1, BUSYBOX_REF))
            Kata(paths.address, tmp / "store-warm")(warm, "run")
            print(f"graph: {args.levels} levels x {args.width} = {n} steps, each above level 0 "
                  "depending on two of the level below")
            print(f"machine: {os.cpu_count()} CPUs; bazel {binary}; kata from {ROOT}")

            # 1. first build, with artifacts
            built = False
            if not args.skip_build:
                bazel("build", "//...")  # server up, external deps fetched: not measured
                bazel("clean")
                b_first = bazel("build", "//...")
                k_first, status, out = kata(repo, "run")
                built = status == 0
                print(f"1. first build with artifacts: bazel {ms(b_first)}, kata {ms(k_first)}")
                if built:
                    print(f"   kata / bazel: {verdict(k_first / b_first, 3.0)}")
                    step_cpu = kata.last_self_cpu / n * 1e3
                    runs = (kata.last_cpu - kata.last_self_cpu) / n * 1e3
                    print(f"   the kata process's own CPU {kata.last_self_cpu:.1f} s = "
                          f"{step_cpu:.1f} ms per step vs the 20 ms target: "
                          f"{verdict(step_cpu / 20.0, 1.0)} (bench/artifact_cpu_bench.py)")
                    print(f"   what it runs (direct steps: crun and the steps; ip/CNI) "
                          f"{runs:.1f} ms per step; together {step_cpu + runs:.1f} ms")
                else:
                    failed = [x for x in out.splitlines() if x.startswith(("[FAIL]", "error:"))]
                    print(f"   kata's first build FAILED (exit {status}); no ratio. First failures:")
                    for x in failed[:3]:
                        print(f"     {x[:300]}")
                    print("   (expected until merged artifact layers land: deep stacks do not fit "
                          "one overlay mount)")
            else:
                print("1. first build: skipped (--skip-build)")
            if not built:
                kata = Kata(paths.address, tmp / "store-recorded")
                record_cached(repo, tmp / "store-recorded", digest)
                print("   no-op figures below: every step recorded as realised directly")

            # 2./3. no-ops, interleaved
            time.sleep(2.1)  # files this old may go in the no-op record (git's racy rule)
            _, status, out = kata(repo, "run")  # warm the page cache, write the no-op record
            if status != 0 or f"({n} cached, 0 ran)" not in out:
                raise SystemExit(f"kata's no-op is not fully cached:\n{out[-2000:]}")
            bazel("build", "//...")
            warm_k, warm_b, validate, cpu_k, cpu_v = [], [], [], [], []
            for _ in range(args.repeat):
                warm_k.append(kata(repo, "run")[0])
                cpu_k.append(kata.last_cpu)
                warm_b.append(bazel("build", "//..."))
                validate.append(kata(repo, "validate", "--offline")[0])
                cpu_v.append(kata.last_cpu)
            cold_b = []
            for _ in range(max(1, args.repeat // 2)):
                bazel("shutdown")
                cold_b.append(bazel("build", "//..."))
            k, b, v, c = median(warm_k), median(warm_b), median(validate), median(cold_b)
            print(f"2. no-op: kata (new process, piped) {ms(k)}; bazel warm server {ms(b)}; "
                  f"bazel cold server {ms(c)}")
            print(f"   kata / bazel warm: {verdict(k / b, 0.5)}")
            print(f"   kata / bazel cold: {k / c:.2f}x")
            print(f"3. kata no-op / kata validate ({ms(v)}): {verdict(k / v, 1.3)}")
            print(f"   CPU time (user+sys, less sensitive to other load): no-op "
                  f"{ms(median(cpu_k))}, validate {ms(median(cpu_v))}: "
                  f"{median(cpu_k) / median(cpu_v):.2f}x")

            # 4. a terminal vs a pipe, 5,000 cached steps
            big = tmp / "repo5000"
            big.mkdir()
            (big / ".kata-ci.yaml").write_text(kata_config(50, 100, BUSYBOX_REF))
            bigk = Kata(paths.address, tmp / "store5000")
            record_cached(big, tmp / "store5000", digest)
            time.sleep(2.1)
            bigk(big, "run")
            piped, tty, cpu_p, cpu_t = [], [], [], []
            for _ in range(args.repeat):
                piped.append(bigk(big, "run")[0])
                cpu_p.append(bigk.last_cpu)
                elapsed, status = bigk.on_terminal(big, "run")
                if status != 0:
                    raise SystemExit(f"kata run on a terminal exited {status}")
                tty.append(elapsed)
                cpu_t.append(bigk.last_cpu)
            print(f"4. 5,000 cached steps: piped {ms(median(piped))}, on a terminal "
                  f"{ms(median(tty))}: {verdict(median(tty) / median(piped), 1.2)}")
            print(f"   CPU time: piped {ms(median(cpu_p))}, on a terminal {ms(median(cpu_t))}: "
                  f"{median(cpu_t) / median(cpu_p):.2f}x")

            # 5. loading stays linear
            sizes = {}
            for count, lv in ((1000, 10), (10000, 100)):
                r = tmp / f"validate{count}"
                r.mkdir()
                (r / ".kata-ci.yaml").write_text(kata_config(lv, 100, BUSYBOX_REF))
                sizes[count] = median([kata(r, "validate", "--offline")[0] for _ in range(3)])
            print(f"5. kata validate: 1,000 steps {ms(sizes[1000])}, 10,000 steps "
                  f"{ms(sizes[10000])}: {sizes[10000] / sizes[1000]:.1f}x for 10x the steps")
    finally:
        if bazel is not None:
            subprocess.run([*bazel.base, "shutdown"], cwd=bazel.workspace, capture_output=True)
        shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    main()
