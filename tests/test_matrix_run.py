"""Matrix steps end to end (issue 14): a 2×2 matrix with one exclude and one include,
`${OS}` in the image choosing between the Debian image the suite builds and busybox, run
by a real `kata` process on real containerd. Each instance is its own derivation and cache
entry, addressable alone; a dependent sees every instance's artifacts."""

from __future__ import annotations

import json

import pytest

from support.cli import KataProcess

pytestmark = pytest.mark.integration

CONFIG = """\
pipeline: matrix
steps:
  - name: test
    image: "kata.local/${OS}"
    matrix:
      OS: ["debian:bookworm", "busybox:latest"]
      MODE: [fast, slow]
      exclude: [{OS: "busybox:latest", MODE: slow}]
      include: [{OS: "debian:bookworm", MODE: extra}]
    commands:
      - "if test -f /etc/debian_version; then d=debian; else d=other; fi; echo os=$OS mode=$MODE on $d"
      - "mkdir -p out && echo $d > out/$MODE-${OS%%:*}"
    artifacts: [out/]
  - name: report
    image: kata.local/busybox:latest
    depends_on: [test]
    commands: ["for f in $(ls out | sort); do echo $f=$(cat out/$f); done"]
"""

INSTANCES = ["test (OS=debian:bookworm, MODE=fast)", "test (OS=debian:bookworm, MODE=slow)",
             "test (OS=busybox:latest, MODE=fast)", "test (OS=debian:bookworm, MODE=extra)"]


@pytest.fixture
def kata(tmp_path, containerd_daemon, runtime, debian_digest):
    repo = tmp_path / "repo"
    repo.mkdir()
    (repo / ".kata-ci.yaml").write_text(CONFIG)
    return KataProcess(repo, store=tmp_path / "store", address=containerd_daemon.address)


def test_validate_and_graph_show_the_instances(kata):
    out = kata("validate")
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == ("Config valid. 5 steps (1 matrix step expanded to 4 "
                                  "instances), 0 cycles, 2 parallel groups")
    text = kata("graph")
    assert text.stdout.splitlines() == [", ".join(INSTANCES) + " -> report"]
    doc = json.loads(kata("graph", "--format", "json").stdout)
    steps = {s["name"]: s for s in doc["steps"]}
    assert list(steps) == [*INSTANCES, "report"]
    assert steps[INSTANCES[2]]["image"] == "kata.local/busybox:latest"
    assert steps[INSTANCES[3]]["image"] == "kata.local/debian:bookworm"
    assert steps[INSTANCES[3]]["matrix"] == {"OS": "debian:bookworm", "MODE": "extra"}
    assert steps["report"]["depends_on"] == INSTANCES


def test_run_every_instance_then_each_cached_and_one_alone(kata):
    first = kata("run")
    assert first.returncode == 0, first.stdout + first.stderr
    lines = first.stdout.splitlines()
    assert lines[0] == '[PARSE] Pipeline "matrix": 5 steps, 2 parallel groups'
    for name in INSTANCES:
        assert f"[CACHE] {name}: MISS" in lines
    assert "test (OS=debian:bookworm, MODE=fast) | os=debian:bookworm mode=fast on debian" in lines
    assert "test (OS=busybox:latest, MODE=fast) | os=busybox:latest mode=fast on other" in lines
    assert "test (OS=debian:bookworm, MODE=extra) | os=debian:bookworm mode=extra on debian" in lines
    # the dependent sees every instance's artifacts, so depends on all of them
    assert [x for x in lines if x.startswith("report | ")] == [
        "report | extra-debian=debian", "report | fast-busybox=other",
        "report | fast-debian=debian", "report | slow-debian=debian"]
    assert lines[-1].startswith("[DONE] All 5 steps passed (")

    # each instance has its own derivation and cache entry
    second = kata("run")
    assert second.returncode == 0
    hits = dict(x[len("[CACHE] "):].split(": HIT (key: ") for x in second.stdout.splitlines()
                if ": HIT (key: " in x)
    assert sorted(hits) == sorted([*INSTANCES, "report"])
    assert len(set(hits.values())) == 5
    # kata graph --format json gave drv_hash null for every step with a tagged image (and
    # all downstream); it takes the digests this host's runs resolved, as the next run does
    doc = json.loads(kata("graph", "--format", "json").stdout)
    assert {s["name"]: s["drv_hash"][:7] + "...)" for s in doc["steps"]} == hits
    assert second.stdout.splitlines()[-1].startswith("[DONE] 5 steps (5 cached, 0 ran) — ")

    # //test addresses every instance, //test(MODE=fast) some, the full name one
    def started(proc) -> list[str]:  # the steps whose container started (--json "run")
        events = [json.loads(x) for x in proc.stdout.splitlines() if x.startswith("{")]
        return sorted(e["step"] for e in events if e["event"] == "run")

    every = kata("build", "//test", "--no-cache", "--json")
    assert every.returncode == 0, every.stdout + every.stderr
    assert started(every) == sorted(INSTANCES)
    some = kata("build", "//test(MODE=fast)", "--no-cache", "--json")
    assert started(some) == sorted(INSTANCES[0:3:2])
    alone = kata("run", "--step", "test (OS=busybox:latest, MODE=fast)", "--no-cache")
    assert alone.returncode == 0, alone.stdout + alone.stderr
    ran = [x for x in alone.stdout.splitlines() if x.startswith("[RUN] ")]
    assert ran == ["[RUN] test (OS=busybox:latest, MODE=fast): "
                   "if test -f /etc/debian_version; then d=debian; else d=other; fi; echo "
                   "os=$OS mode=$MODE on $d && mkdir -p out && echo $d > out/$MODE-${OS%%:*}"]
    by_name = kata("run", "--step", "test", "--dry-run")
    assert by_name.returncode == 0, by_name.stdout + by_name.stderr
    assert [x.split(": HIT")[0] for x in by_name.stdout.splitlines()
            if x.startswith("[PLAN] ")] == [f"[PLAN] {n}" for n in INSTANCES]


def test_logs_and_export_take_a_matrix_steps_name_as_run_does(kata, tmp_path):
    """`kata run --step test` runs every instance; `kata logs --step test` and `kata export
    --step test` said the run "has no step 'test'" (found on a real project's matrix)."""
    run = kata("run")
    assert run.returncode == 0, run.stdout + run.stderr
    logs = kata("logs", "--step", "test")
    assert logs.returncode == 0, logs.stderr
    assert all(f"== {name}: passed" in logs.stdout for name in INSTANCES), logs.stdout
    assert "== report" not in logs.stdout
    out = tmp_path / "exported"
    export = kata("export", "--step", "test", "--out", str(out))
    assert export.returncode == 0, export.stdout + export.stderr
    assert sorted(p.name for p in out.iterdir()) == sorted(INSTANCES)
    wrong = kata("logs", "--step", "tes")
    assert wrong.returncode == 2 and "has no step 'tes'" in wrong.stderr
    # --service wants one instance: the error names them (found on redis-py, whose test
    # step is a matrix over two redis-server configurations)
    service = kata("logs", "--step", "test", "--service", "db")
    assert service.returncode == 2
    assert "'test' is a matrix step of 4 instances; name one" in service.stderr, service.stderr
    assert f"--step '{INSTANCES[0]}'" in service.stderr, service.stderr


def test_logs_and_export_of_a_step_the_last_run_left_out_come_from_the_run_that_had_it(kata):
    """`kata run --step test` (or `kata build //x`) after a whole run: `kata logs --step
    report` said "run … has no step 'report' (it has: …)", though `kata logs`' help says
    the last run's output and the step's is in the store; it now reads the newest run
    that has the step (found after `kata build //sdist` on a real project)."""
    whole = kata("run")
    assert whole.returncode == 0, whole.stdout + whole.stderr
    part = kata("run", "--step", INSTANCES[2])
    assert part.returncode == 0, part.stdout + part.stderr
    logs = kata("logs", "--step", "report")
    assert logs.returncode == 0, logs.stderr
    assert logs.stdout.startswith("== report: passed") and "slow-debian=debian" in logs.stdout
    both = kata("logs", "--step", "report", "--step", INSTANCES[2])  # both in the whole run
    assert both.returncode == 0 and "== report: passed" in both.stdout, both.stderr
    alone = kata("logs")  # no --step: still the last run, and only its steps
    assert alone.returncode == 0 and "== report" not in alone.stdout, alone.stdout
    wrong = kata("logs", "--step", "nope")  # in no run: named against the last one
    assert wrong.returncode == 2 and "has no step 'nope' (it has: " + INSTANCES[2] in \
        wrong.stderr, wrong.stderr
