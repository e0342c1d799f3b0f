"""This checkout's hot functions against a baseline checkout's, paired, in CPU seconds.

    git worktree add /tmp/kata-base REV
    python3 bench/regress_bench.py --baseline /tmp/kata-base [--repeat 7] [--only NAME,...]

Each case is a short script run in a fresh process with one checkout first on
``sys.path`` (its own code, its own fixture); it builds its fixture, then prints the CPU
seconds (user+sys of the process and of the children it waited for, getrusage) of the
measured part alone. The cases alternate A (this checkout) and B (the baseline),
``--repeat`` times each, so the machine's load hits both alike; printed per case: the
median CPU of A and B and the median of the pair-by-pair ratios A/B, with the load
average before and after. The cases:
- ``refglob-*``: ``kata.globs.ref_match`` (what trigger and ``only: branches``
  conditions call) of the patterns ``main``, ``release/*``, ``feature/**`` against
  300 typical branch names, 40 times over (36,000 evaluations);
- ``term-plain`` / ``term-colour``: a step's 200,000 output lines as ``kata run``
  prints them (``kata.report.plain.line`` of each ``OutputLine``) and as ``kata logs``
  prints its stored log (the text, lines escaped where the checkout escapes them);
- ``gitfiles-none`` / ``gitfiles-subs``: input collection's git listing
  (``kata.inputs._git_files``) of a 2,000-file repository without submodules and with 3
  submodules of 200 files each, 20 times, and the no-op replay's listing dependencies
  (``kata.realise.noop._git_paths``) 200 times;
- ``load-plain`` / ``load-anchors``: ``kata.loader.load_pipeline`` of a 3,000-step file,
  without merge keys and with every step merging two anchors (``<<: [*base, *envs]``);
- ``web-*``: ``kata web`` (Starlette's test client, in process) over a store of 500
  runs of 6 steps: the runs page, a run's page (passed), a failed run's page, 10 times.
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent

PRELUDE = r"""
import os, resource, sys, time
co = sys.argv[1]
sys.path[:0] = [co, os.path.join(co, "bench"), os.path.join(co, "tests")]
def cpu():
    c = resource.getrusage(resource.RUSAGE_CHILDREN)
    return time.process_time() + c.ru_utime + c.ru_stime
"""

CASES: dict[str, str] = {}

CASES["refglob"] = r"""
from kata.globs import ref_match
pats = ["main", "release/*", "feature/**"]
names = ([f"feature/JIRA-{i}/fix-thing" for i in range(100)] + [f"release/{i}.{i % 7}" for i in range(100)]
         + [f"user{i}/wip" for i in range(50)] + ["main", "develop"] * 25)
t = cpu()
for _ in range(40):
    for p in pats:
        for n in names:
            ref_match(p, n)
print(cpu() - t)
"""

TERM = r"""
import io
from kata.realise import events as ev
from kata.report import plain
import kata.report.text as text_mod
colour = sys.argv[2] == "colour"
line = ("\x1b[32mok\x1b[0m test_{i} \x1b[1;33m(0.{i} s)\x1b[0m" if colour else
        "ok test_{i} (0.{i} s) some ordinary build output here")
lines = [line.format(i=i) for i in range(200_000)]
events = [ev.OutputLine(step="build", stream="stdout", text=x) for x in lines]
log = "\n".join(lines) + "\n"
import inspect
from kata.cli import run_cmds
# kata logs: the expression _print_log applies to the stored text, as this checkout has it
found = [x.split("=", 1)[1].split("#")[0].strip() for x in inspect.getsource(run_cmds._print_log).splitlines()
         if "text = " in x and "terminal_safe" in x]
expr = compile(found[0] if found else "text", "logs", "eval")
scope = {"terminal_safe": getattr(text_mod, "terminal_safe", None)}
t = cpu()
out = [plain.line(e) for e in events]
text = eval(expr, scope, {"text": log})
print(cpu() - t)
"""
CASES["term-plain"] = TERM
CASES["term-colour"] = TERM

OUTPUT = r"""
import tempfile, threading
from kata.realise.output import MaskedOutput
from kata.realise import events as ev
from kata.report import plain
from kata.secrets import Masker
kind, chunking = sys.argv[2].split("-")
line = ("\x1b[32mok\x1b[0m test_{i} \x1b[1;33m(0.{i} s)\x1b[0m" if kind == "colour" else
        "ok test_{i} (0.{i} s) some ordinary build output here")
data = "".join(line.format(i=i) + "\n" for i in range(200_000)).encode()
if chunking == "lines":  # a step writing each line itself (a shell loop's echo)
    chunks = data.splitlines(keepends=True)
else:  # a step's stdio buffer, as the FIFO reader gets it
    chunks = [data[i:i + 4096] for i in range(0, len(data), 4096)]
# the step's log as this checkout's realiser makes it
src = open(os.path.join(co, "kata/realise/realiser.py")).read()
kw = {"dir": tempfile.mkdtemp(prefix="kt-regress-out-"), "buffering": 0} if "buffering=0" in src else {}
log = tempfile.SpooledTemporaryFile(max_size=1 << 20, **kw)
out = open(os.devnull, "w")
def emit(e):  # kata run's plain reporter, not on a terminal
    text = plain.line(e)
    if text is not None:
        out.write(text + "\n")
sink = MaskedOutput(Masker(["s3cr3t-value-xyz"]), "build", emit, log, threading.Lock())
t = cpu()
for c in chunks:
    sink("stdout", c)
print(cpu() - t)
"""
for k in ("plain-lines", "plain-4k", "colour-lines", "colour-4k"):
    CASES[f"output-{k}"] = OUTPUT

GITFILES = r"""
import subprocess, tempfile
from pathlib import Path
from kata.inputs import _git_files
from kata.realise.noop import _git_paths, _directories
subs = sys.argv[2] == "subs"
tmp = Path(tempfile.mkdtemp(prefix="kt-regress-git-"))
env = dict(os.environ, GIT_AUTHOR_NAME="b", GIT_AUTHOR_EMAIL="b@x", GIT_COMMITTER_NAME="b",
           GIT_COMMITTER_EMAIL="b@x", GIT_CONFIG_GLOBAL="/dev/null")
def git(where, *a):
    subprocess.run(["git", "-C", str(where), "-c", "protocol.file.allow=always", *a],
                   check=True, capture_output=True, env=env)
def repo(where, files):
    where.mkdir(parents=True)
    git(where, "init", "-q")
    for i in range(files):
        d = where / f"d{i % 20}"
        d.mkdir(exist_ok=True)
        (d / f"f{i}.txt").write_text(str(i))
    git(where, "add", "-A")
    git(where, "commit", "-qm", "x")
root = tmp / "main"
repo(root, 2000)
if subs:
    for k in range(3):
        repo(tmp / f"sub{k}", 200)
        git(root, "submodule", "add", "-q", str(tmp / f"sub{k}"), f"vendor/sub{k}")
    git(root, "commit", "-qm", "subs")
os.environ.update(GIT_CONFIG_GLOBAL="/dev/null")
dirs = _directories(str(root))
t = cpu()
for _ in range(20):
    files = _git_files(str(root))
for _ in range(200):
    _git_paths(str(root), dirs)
print(cpu() - t)
import shutil; shutil.rmtree(tmp)
"""
CASES["gitfiles-none"] = GITFILES
CASES["gitfiles-subs"] = GITFILES

LOAD = r"""
import tempfile
from kata.loader import load_pipeline
anchors = sys.argv[2] == "anchors"
out = ['pipeline: "bench"', "steps:"]
if anchors:
    out = ['pipeline: "bench"', "x-base: &base", '  image: "alpine:3.19"', '  timeout: "5m"',
           "  retry: 1", "x-envs: &envs", "  env:", '    CI: "true"', '    SHARD: "1"', "steps:"]
for i in range(3000):
    out.append(f'  - name: "step-{i}"')
    if anchors:
        out.append("    <<: [*base, *envs]")
    else:
        out += ['    image: "alpine:3.19"', '    timeout: "5m"', "    retry: 1", "    env:",
                '      CI: "true"', '      SHARD: "1"']
    out += ["    commands:", f'      - "make target-{i}"']
    if i:
        out.append(f"    depends_on: [step-{i - 1}]")
path = os.path.join(tempfile.mkdtemp(prefix="kt-regress-load-"), ".kata-ci.yaml")
open(path, "w").write("\n".join(out) + "\n")
load_pipeline(path)  # imports
t = cpu()
for _ in range(3):
    load_pipeline(path)
print(cpu() - t)
"""
CASES["load-plain"] = LOAD
CASES["load-anchors"] = LOAD

WEB = r"""
import tempfile, warnings
warnings.simplefilter("ignore")
from starlette.testclient import TestClient
from store import Store
from web_bench import populate
from kata.web.app import create_app
page = sys.argv[2]
s = Store.open(os.path.join(tempfile.mkdtemp(prefix="kt-regress-web-"), "store"))
populate(s, 500, 6)
client = TestClient(create_app(s, warm=False))
names = [n.split("-", 1)[1] for n in s.run_names()]
failed = next(n for n in names if s.get_run(n).status == "failed")
passed = next(n for n in names if s.get_run(n).status == "passed")
path = {"runs": "/runs", "run": f"/runs/{passed}", "failed": f"/runs/{failed}"}[page]
assert client.get(path).status_code == 200
t = cpu()
for _ in range(10):
    client.get(path)
print(cpu() - t)
"""
for page in ("runs", "run", "failed"):
    CASES[f"web-{page}"] = WEB


def case_arg(name: str) -> str:
    return name.split("-", 1)[1] if "-" in name else ""


def run(checkout: Path, name: str) -> float:
    p = subprocess.run([sys.executable, "-c", PRELUDE + CASES[name], str(checkout), case_arg(name)],
                       capture_output=True, text=True, cwd="/tmp")
    if p.returncode:
        raise SystemExit(f"{name} in {checkout} failed:\n{p.stderr[-3000:]}")
    return float(p.stdout.strip().splitlines()[-1])


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--baseline", type=Path, required=True)
    ap.add_argument("--repeat", type=int, default=7)
    ap.add_argument("--only", default="", help="comma-separated case names (default: all)")
    args = ap.parse_args()
    names = [n for n in CASES if not args.only or n in args.only.split(",")]
    print(f"load average before: {os.getloadavg()[0]:.2f}")
    print(f"{'case':16} {'A cpu s':>9} {'B cpu s':>9} {'A/B':>6}  (median; A/B pair by pair)")
    for name in names:
        a, b, ratios = [], [], []
        for i in range(args.repeat):
            order = [(ROOT, a), (args.baseline, b)]
            for checkout, into in (order if i % 2 == 0 else order[::-1]):
                into.append(run(checkout, name))
            ratios.append(a[-1] / b[-1])
        print(f"{name:16} {statistics.median(a):9.4f} {statistics.median(b):9.4f} "
              f"{statistics.median(ratios):6.2f}  load {os.getloadavg()[0]:.2f}", flush=True)
    print(f"load average after: {os.getloadavg()[0]:.2f}")


if __name__ == "__main__":
    main()
