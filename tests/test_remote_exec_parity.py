"""Parity of remote execution with a local run (issue 13: a remote step runs "as locally"
and is recorded like a local one): the same pipeline run by `kata run` here and by a real
`kata worker` through a real BuildGrid (PostgreSQL scheduler) must leave the same outputs,
statuses and logs. Each test runs both and compares what each recorded."""

from __future__ import annotations

import json
import secrets
from pathlib import Path

import pytest
import yaml

from support.cli import KataProcess
from test_remote_exec import grid, kata, worker_of, workers  # noqa: F401 - fixtures

pytestmark = pytest.mark.integration


def both(kata, containerd_daemon, pipeline: dict, *runs: tuple[str, ...]):  # noqa: ANN001, F811
    """Run ``pipeline`` locally (its own store) and remotely (``kata``'s store) once per
    item of ``runs`` (extra args; an item may be a callable, called between runs to edit
    the repo): {"local": [results], "remote": [results]}, each with its ``--out`` dir."""
    (kata.repo / ".kata-ci.yaml").write_text(yaml.safe_dump(pipeline, sort_keys=False))
    local = KataProcess(kata.repo, store=kata.repo.parent / f"store-local-{secrets.token_hex(3)}",
                        address=containerd_daemon.address, timeout=300)
    bg = kata.grid_url
    got: dict[str, list] = {"local": [], "remote": []}
    for item in runs:
        if callable(item):
            item()
            continue
        for where, proc, extra in (("local", local, ()), ("remote", kata,
                                                            ("--remote-executor", bg))):
            out = kata.repo.parent / f"out-{where}-{secrets.token_hex(3)}"
            res = proc("run", *extra, *item, "--out", str(out))
            res.out = out
            res.proc = proc
            got[where].append(res)
    return got


@pytest.fixture
def remote_kata(grid, kata):  # noqa: F811
    kata.grid_url = grid[0].url
    kata.image = grid[1]
    return kata


def test_cache_paths_are_restored_as_the_steps_users_on_a_worker_as_locally(
        grid, workers, remote_kata, containerd_daemon):  # noqa: F811
    """`cache.paths` come back before the next run of the step "as the step's user's and
    writable by it" (docs/config.md). On a worker they came back as the materialised
    inputs do, root's and read-only: a step with a `user:` could not add to its cache (npm
    ci, pip, cargo all write there), and failed where it passes locally."""
    kata = remote_kata
    pipeline = {"pipeline": "caches", "steps": [
        {"name": "build", "image": kata.image, "user": "1000:1000", "inputs": ["src/**"],
         "cache": {"paths": ["c/"]}, "artifacts": ["count", "owners"],
         "commands": ["mkdir -p c/sub", "echo run >> c/sub/log",
                      "wc -l < c/sub/log > count", "stat -c '%u %g %A %n' c c/sub c/sub/log "
                      "> owners"]}]}

    def edit() -> None:
        (kata.repo / "src" / "a.txt").write_text("edited: the step runs again\n")

    got = both(kata, containerd_daemon, pipeline, (), edit, ())
    for where in ("local", "remote"):
        for res in got[where]:
            assert res.returncode == 0, where + res.stdout + res.stderr
    assert worker_of(kata, "build") in {"w1", "w2"}
    second = {w: got[w][1].out / "build" for w in ("local", "remote")}
    assert (second["local"] / "count").read_text().strip() == "2"
    assert (second["local"] / "owners").read_text() == (
        "1000 1000 drwxr-xr-x c\n1000 1000 drwxr-xr-x c/sub\n1000 1000 -rw-r--r-- c/sub/log\n")
    for name in ("count", "owners"):
        assert (second["remote"] / name).read_text() == (second["local"] / name).read_text()


JUNIT = ('<testsuite name="t" tests="2"><testcase name="good"/><testcase name="bad">'
         '<failure message="boom"/></testcase></testsuite>')
SERVE = "trap 'exit 0' TERM; echo up $ROLE; nc -ll -p 5432 -e echo $ROLE & wait"


def feature_pipeline(image: str) -> dict:
    """One small pipeline touching what a user sees of a step, feature by feature."""
    probe = ["id > id", "pwd > pwd", "env | grep -v '^HOSTNAME=' > env", "(umask; ulimit -a) > limits",
             "hostname > host", "ls /sys/class/net > nets"]
    return {"pipeline": "parity", "settings": {"fail_fast": False}, "env": {"Z": "z", "B": "b"},
            "steps": [
        {"name": "probe", "image": image, "user": "1000:1000", "workdir": "/work/x",
         "inputs": ["src/**"], "env": {"A": "a", "M": "m"},
         "resources": {"memory": "96MiB", "pids": 77, "cpus": 0.5},
         "artifacts": ["id", "pwd", "env", "limits", "host", "nets"], "commands": probe},
        {"name": "tree", "image": image, "inputs": [], "network": "default",
         "artifacts": ["out/"],
         "commands": ["mkdir -p out/empty out/d out/x", "echo f > out/d/f", "chmod 600 out/d/f",
                      "printf '#!/bin/sh\\necho hi\\n' > out/x/run", "chmod 755 out/x/run",
                      "ln -s d/f out/link", "ln -s /etc/passwd out/abs", "chmod 700 out/d",
                      "touch -d @1000000000 out/d/f", "ls /sys/class/net | grep -vx lo"]},
        {"name": "reader", "image": image, "depends_on": ["tree"], "artifacts": ["seen"],
         "commands": ["ls -lAR --full-time out | grep -v '^total' | "
                      "sed -e 's/  */ /g' > seen", "cat out/link >> seen"]},
        {"name": "retried", "image": image, "inputs": [], "retry": 1,
         "allow_failure": True, "commands": ["echo trying", "exit 3"]},
        {"name": "slow", "image": image, "inputs": [], "timeout": "2s", "allow_failure": True,
         "commands": ["echo start", "sleep 30"]},
        {"name": "signalled", "image": image, "inputs": [], "allow_failure": True,
         "commands": ["echo before", "echo to-stderr >&2", "sh -c 'kill -TERM $$'"]},
        {"name": "forks", "image": image, "inputs": [], "allow_failure": True,
         "resources": {"pids": 20}, "commands": ["for i in $(seq 40); do sleep 5 & done"]},
        {"name": "hog", "image": image, "inputs": [], "allow_failure": True,
         "resources": {"memory": "32MiB"},
         "commands": ["dd if=/dev/zero of=/dev/null bs=64M count=1"]},
        {"name": "tests", "image": image, "inputs": [], "reports": {"junit": ["r/*.xml"]},
         "allow_failure": True,
         "commands": ["mkdir r", f"echo '{JUNIT}' > r/unit.xml", "exit 1"]},
        {"name": "svc", "image": image, "inputs": [], "matrix": {"ROLE": ["primary"]},
         "services": [{"name": "db", "image": image, "commands": [SERVE],
                       "env": {"EXTRA": "x"}, "ready": {"tcp": 5432, "timeout": "20s"}}],
         "artifacts": ["reply"], "commands": ["nc db 5432 </dev/null > reply",
                                              "grep -qx primary reply"]},
        {"name": "unready", "image": image, "inputs": [], "allow_failure": True,
         "services": [{"name": "db", "image": image, "commands": ["echo waiting; sleep 30"],
                       "ready": {"tcp": 5432, "timeout": "2s"}}],
         "commands": ["echo never"]},
        {"name": "gone", "image": image, "inputs": [], "allow_failure": True,
         "services": [{"name": "db", "image": image, "commands": ["echo bye; exit 3"],
                       "ready": {"tcp": 5432, "timeout": "20s"}}],
         "commands": ["echo never"]},
        {"name": "missing", "image": image, "inputs": [], "allow_failure": True,
         "artifacts": ["nothing-here"], "commands": ["true"]},
        {"name": "status", "image": image, "inputs": [], "when": "always()",
         "depends_on": ["probe", "reader"], "commands": ["echo status step ran"]},
    ]}


_TIMES = __import__("re").compile(r"\d+(\.\d+)?(ms|s)\b")


def _shown(res) -> tuple[int, list[str]]:  # noqa: ANN001
    """A history command's exit status and lines, run ids, times and `ran on` lines aside."""
    import re

    lines = [re.sub(r"\d{8}-\d{6}-[0-9a-f]{6}", "RUN", _TIMES.sub("T", line))
             for line in (res.stdout + res.stderr).splitlines()
             if not line.startswith(("kata: ran on worker", "kata: ran locally"))]
    return res.returncode, lines


def recorded(res) -> dict:  # noqa: ANN001
    """What a `kata run --json` says of each step, timings and where it ran left out."""
    steps: dict[str, dict] = {}
    for line in res.stdout.splitlines():
        ev = json.loads(line)
        name = ev.get("step")
        if not name:
            continue
        mine = steps.setdefault(name, {"events": [], "output": []})
        kind = ev["event"]
        if kind == "output":
            if not ev["text"].startswith("kata: ran "):
                mine["output"].append(f'{ev["stream"]}: {ev["text"]}')
        elif kind in ("pass", "fail", "retry", "skip", "export", "cache"):
            ev = {k: v for k, v in ev.items() if k not in ("time", "duration", "path",
                                                              "version", "produced_by")}
            if "message" in ev:
                ev["message"] = _TIMES.sub("T", ev["message"])
            mine["events"].append(ev)
    return steps


def test_a_pipeline_records_the_same_locally_and_on_a_worker(grid, workers, remote_kata,
                                                               containerd_daemon):  # noqa: F811
    """The same pipeline, run here and on the workers, records the same thing for every
    step: status, exit status, reason, message, retries, test report, log lines, and the
    output tree's digest (so a key built on one machine cuts off early on another)."""
    kata = remote_kata
    got = both(kata, containerd_daemon, feature_pipeline(kata.image), ("--json",))
    local, remote = got["local"][0], got["remote"][0]
    want, have = recorded(local), recorded(remote)
    failed = {s: e for s, v in want.items() for e in v["events"]
              if e["event"] == "fail" and not e["allowed"]}
    assert local.returncode == 0, (failed, want.get(next(iter(failed), ""), local.stderr))
    assert remote.returncode == 0, remote.stdout[-3000:] + remote.stderr
    assert set(want) == set(have)
    differ = {step: (want[step], have[step]) for step in sorted(want) if have[step] != want[step]}
    assert not differ, "\n".join(f"{s}:\n  local  {w}\n  remote {h}" for s, (w, h) in differ.items())
    procs = {"local": local.proc, "remote": kata}
    # what the history commands show of the two runs, where it ran and timings aside
    for step in sorted(want):
        for args in (("logs", "--step", step), ("logs", "--step", step, "--service", "db")):
            if "--service" in args and not step.startswith(("svc", "unready", "gone")):
                continue
            shown = {w: _shown(procs[w](*args)) for w in procs}
            assert shown["remote"] == shown["local"], args
    runs = {w: json.loads(procs[w]("runs", "--json").stdout)["runs"][0] for w in procs}
    assert {k: v for k, v in runs["remote"].items() if k not in ("id", "started", "duration")} \
        == {k: v for k, v in runs["local"].items() if k not in ("id", "started", "duration")}
    (kata.repo / "src" / "a.txt").write_text("edited\n")
    why = {w: _shown(procs[w]("why", "//probe")) for w in procs}
    assert why["remote"] == why["local"]
    for step in ("probe", "tree", "reader", "svc (ROLE=primary)"):
        assert worker_of(kata, step) in {"w1", "w2"}, step
    out = local.out
    assert (out / "probe" / "id").read_text().startswith("uid=1000 gid=1000")
    assert (out / "probe" / "pwd").read_text() == "/work/x\n"


def _uppers_under(root: Path) -> list[Path]:
    """The upper layers of the overlays mounted below ``root`` now (steps' workspaces)."""
    uppers = []
    for line in Path("/proc/self/mounts").read_text().splitlines():
        fields = line.split()
        if fields[2] != "overlay":
            continue
        for option in fields[3].split(","):
            if option.startswith("upperdir=") and option[9:].startswith(str(root)):
                uppers.append(Path(option[9:]))
    return uppers


def test_the_client_leaves_a_remote_steps_restored_cache_to_the_worker(
        grid, workers, remote_kata, containerd_daemon):  # noqa: F811
    """The worker gives a `user:` step its restored `cache.paths` on its own copy. The
    client gave them on its overlay too, for nothing: each re-owned file was copied up
    (data and all) into the workspace's upper layer and hashed afresh to be sent. A step
    with a secret, which the remote runtime runs here, still gets them as locally."""
    import subprocess
    import time

    kata = remote_kata
    store = kata.repo.parent / "store"
    pipeline = {"pipeline": "caches", "steps": [
        {"name": "build", "image": kata.image, "user": "1000:1000", "inputs": ["src/**"],
         "cache": {"paths": ["c/"]}, "artifacts": ["count"],
         "commands": ["sleep 3", "mkdir -p c", "test -e c/keep || echo once > c/keep",
                      "echo run >> c/log", "wc -l < c/log > count"]},
        {"name": "deploy", "image": kata.image, "user": "1000:1000", "inputs": ["src/**"],
         "secrets": ["TOKEN"], "cache": {"paths": ["d/"]}, "artifacts": ["count"],
         "commands": ["mkdir -p d", "test -e d/keep || echo once > d/keep", "sleep 1",
                      "echo run >> d/log", "wc -l < d/log > count"]}]}
    (kata.repo / ".kata-ci.yaml").write_text(yaml.safe_dump(pipeline, sort_keys=False))
    args = ("run", "--remote-executor", kata.grid_url, "--secret", "TOKEN=t0ken-value")
    first = kata(*args)
    assert first.returncode == 0, first.stdout + first.stderr
    (kata.repo / "src" / "a.txt").write_text("edited: both run again\n")
    run = subprocess.Popen([*kata.base, *args, "--out", str(kata.repo.parent / "out")],
                           cwd=kata.repo, env=kata.env, stdout=subprocess.PIPE,
                           stderr=subprocess.STDOUT, text=True)
    copied_up: set[str] = set()  # of what the step leaves as it was: c/keep, d/keep
    while run.poll() is None:
        for upper in _uppers_under(store):
            copied_up.update(f"{d}/keep" for d in "cd" if (upper / d / "keep").exists())
        time.sleep(0.02)
    out = run.stdout.read()
    assert run.returncode == 0, out
    assert "build | kata: ran on worker" in out and "deploy | kata: ran locally" in out, out
    # the remote step's cache is never touched here; the local one's is given (copied up)
    assert copied_up == {"d/keep"}, copied_up
    for step in ("build", "deploy"):  # each added to its cache, as its user
        assert (kata.repo.parent / "out" / step / "count").read_text().strip() == "2"


def more_pipeline(image: str) -> dict:
    """Inputs the first parity pipeline did not use: a `user:` step whose timeout fires,
    a `user:` in a `workdir:` the image lacks, a process limit that kills the step's
    command, outputs that are a symbolic link (to a file, to a directory, to nothing) or
    an empty directory and a step that reads them, a matrix step without services whose
    instances differ in exit status, a plain `exit 3` that fails the run, output that is
    not UTF-8 (or has no last newline), a user the image's /etc/passwd lacks, and files
    with setuid, group-only and owner-only modes and a hard link."""
    return {"pipeline": "parity2", "settings": {"fail_fast": False}, "steps": [
        {"name": "late", "image": image, "user": "1000:1000", "workdir": "/home/u/w",
         "inputs": [], "timeout": "2s", "allow_failure": True,
         "commands": ["echo $(id -u) in $(pwd)", "trap 'echo termed; exit 9' TERM",
                      "sleep 30 & wait"]},
        {"name": "nested", "image": image, "user": "1000:1000", "workdir": "/opt/x/y",
         "inputs": ["src/**"], "artifacts": ["made/"],
         "commands": ["mkdir made", "ls -ld . made | cut -d' ' -f1,3,4 > made/modes",
                      "cat src/a.txt > made/a"]},
        {"name": "bomb", "image": image, "inputs": [], "allow_failure": True,
         "resources": {"pids": 8},
         "commands": ["echo go", "sh -c 'for i in 1 2 3 4 5 6 7 8 9 10 11 12; do "
                      "sleep 5 & done; wait' || exit $?", "echo unreachable"]},
        {"name": "links", "image": image, "inputs": [],
         "artifacts": ["file-link", "dir-link", "dangling", "empty/", "real", "d/"],
         "commands": ["echo content > real", "mkdir -p d/sub empty", "echo x > d/sub/f",
                      "ln -s real file-link", "ln -s d dir-link", "ln -s nowhere dangling"]},
        {"name": "follow", "image": image, "depends_on": ["links"], "artifacts": ["seen"],
         "commands": ["ls -lA | grep -v '^total' | sed -e 's/  */ /g' | "
                      "cut -d' ' -f1,9- > seen", "cat file-link dir-link/sub/f >> seen",
                      "test -d empty && echo empty-dir >> seen"]},
        {"name": "mx", "image": image, "inputs": [], "allow_failure": True,
         "matrix": {"N": ["1", "2", "3"]}, "artifacts": ["n"],
         "commands": ["echo $N > n", "echo instance $N", 'test "$N" != 3 || exit 3']},
        {"name": "three", "image": image, "inputs": [], "commands": ["echo failing", "exit 3"]},
        {"name": "bytes", "image": image, "inputs": [],
         "commands": ["printf 'caf\\303\\251 \\377\\376 raw\\n'", "printf 'a\\rb\\r\\n'",
                      "printf 'tab\\there\\n' >&2", "printf 'no newline at the end'"]},
        {"name": "stranger", "image": image, "user": "70000:70000", "inputs": [],
         "commands": ["echo home=$HOME; id", "touch mine && ls -ln mine | cut -d' ' -f3,4"]},
        {"name": "modes", "image": image, "inputs": [], "artifacts": ["m/"],
         "commands": ["mkdir -p m/private", "echo s > m/suid", "chmod 4755 m/suid",
                      "echo g > m/group", "chmod 640 m/group", "chmod 700 m/private",
                      "echo x > m/private/x", "chmod 500 m/private/x", "ln m/group m/hard"]},
    ]}


def _tree(root: Path) -> list[tuple]:
    """Every entry below ``root``: path, kind, mode bits, link target or content."""
    import os
    import stat

    out = []
    for top, dirs, names in os.walk(root):
        for name in sorted(dirs + names):
            p = Path(top) / name
            st = p.lstat()
            rel = str(p.relative_to(root))
            if stat.S_ISLNK(st.st_mode):
                out.append((rel, "link", os.readlink(p)))
            elif stat.S_ISDIR(st.st_mode):
                out.append((rel, "dir", oct(st.st_mode & 0o7777)))
            else:
                out.append((rel, "file", oct(st.st_mode & 0o7777), p.read_bytes()))
    return sorted(out)


def test_more_inputs_record_the_same_locally_and_on_a_worker(grid, workers, remote_kata,
                                                              containerd_daemon):  # noqa: F811
    kata = remote_kata
    got = both(kata, containerd_daemon, more_pipeline(kata.image), ("--json",))
    local, remote = got["local"][0], got["remote"][0]
    want, have = recorded(local), recorded(remote)
    assert local.returncode == 1, local.stdout[-3000:] + local.stderr  # `three` fails it
    assert remote.returncode == local.returncode, remote.stdout[-3000:] + remote.stderr
    assert set(want) == set(have), (sorted(want), sorted(have))
    differ = {step: (want[step], have[step]) for step in sorted(want) if have[step] != want[step]}
    assert not differ, "\n".join(f"{s}:\n  local  {w}\n  remote {h}" for s, (w, h) in differ.items())
    assert _tree(remote.out) == _tree(local.out)
    procs = {"local": local.proc, "remote": kata}
    for step in sorted(want):
        shown = {w: _shown(procs[w]("logs", "--step", step)) for w in procs}
        assert shown["remote"] == shown["local"], step
    runs = {w: json.loads(procs[w]("runs", "--json").stdout)["runs"][0] for w in procs}
    assert {k: v for k, v in runs["remote"].items() if k not in ("id", "started", "duration")} \
        == {k: v for k, v in runs["local"].items() if k not in ("id", "started", "duration")}
    # what the steps saw, as a local run records it
    events = {s: [e for e in v["events"] if e["event"] in ("pass", "fail")] for s, v in want.items()}
    assert events["late"][0]["reason"] == "step.timeout", events["late"]
    assert events["three"][0]["exit_status"] == 3, events["three"]
    assert events["mx (N=3)"][0]["exit_status"] == 3, events["mx (N=3)"]
