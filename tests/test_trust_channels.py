"""Channels by which an untrusted run could hand a trusted reader what it made, beyond the
realisations and cache directories test_trust_e2e.py covers: each is closed here."""

from __future__ import annotations

import time
from pathlib import Path

from store import Store
from store.runs import Run, StepRecord
from support.cli import KataProcess


def _run(s: Store, tmp: Path, run_id: str, scope: str, started: float, text: str) -> None:
    src = tmp / f"src-{run_id}"
    (src / "dist").mkdir(parents=True)
    (src / "dist" / "app").write_text(text)
    tree = s.put_tree(src, paths=("dist",))
    s.put_run(Run(id=run_id, pipeline="p", scope=scope, started=started, wall=1.0,
                  status="passed", steps=(StepRecord(name="build", status="passed",
                                                     cache="MISS", outputs=tree),)))


def test_export_without_run_never_takes_an_untrusted_runs_artifacts(tmp_path) -> None:
    """`kata export --out DIR` (a deploy script after main's push) takes "the last run":
    a branch pushed just after main made that its own run, so the script shipped the
    branch's artifacts. Without --run only a trusted run is taken; an untrusted one
    only when named (--run ID)."""
    repo = tmp_path / "repo"
    repo.mkdir()
    (repo / ".kata-ci.yaml").write_text("pipeline: p\nsteps:\n  - {name: build, image: x}\n")
    store = tmp_path / "store"
    now = time.time()
    with Store.open(store) as s:
        _run(s, tmp_path, "20261130-000001-aaaaaa", "ref:refs/heads/main", now - 10, "main's")
        _run(s, tmp_path, "20261130-000002-bbbbbb", "quarantine:refs/heads/evil", now, "evil")
    out = tmp_path / "out"
    kata = KataProcess(repo, store=store)
    proc = kata("export", "--out", str(out))
    assert proc.returncode == 0, proc.stderr
    assert (out / "build" / "dist" / "app").read_text() == "main's"
    assert "20261130-000001-aaaaaa" in proc.stderr + proc.stdout  # says which run it took
    named = tmp_path / "named"
    proc = kata("export", "--run", "20261130-000002-bbbbbb", "--out", str(named))
    assert proc.returncode == 0, proc.stderr
    assert (named / "build" / "dist" / "app").read_text() == "evil"


def test_untrusted_runs_without_a_ref_do_not_share_one_quarantine(tmp_path, monkeypatch) -> None:
    """A pull-request bot runs each fork's head detached (no branch): under the empty ref
    every such run wrote and read `quarantine:`, so one fork's run restored the cache
    directory (a planted `node_modules`) another fork's run left. Each is now its commit's."""
    from kata import keys
    from kata.trust import scope_for

    config = tmp_path / "host.yaml"
    config.write_text("{}\n")
    monkeypatch.setenv("KATA_CONFIG", str(config))
    a = scope_for(tmp_path, branch="", event="pull_request", default_branch="main",
                  commit="a" * 40)
    b = scope_for(tmp_path, branch="", event="pull_request", default_branch="main",
                  commit="b" * 40)
    assert not a.trusted and not b.trusted
    assert a.label() == "quarantine:commit:" + "a" * 40
    key = "c" * 64
    assert not set(keys.cache_dir_keys(a, key)) & {(l, k) for l, k in keys.cache_dir_keys(b, key)
                                                   if l.startswith("quarantine:")}
    assert set(a.realisation_keys(key)) & set(b.realisation_keys(key)) == {key}
    # both still read what trusted runs of the default branch wrote
    assert ("ref:refs/heads/main", keys.scoped_key("ref:refs/heads/main", key)) in \
        keys.cache_dir_keys(a, key)
    # a ref keeps its own quarantine; a trusted run without a ref is unchanged
    assert scope_for(tmp_path, branch="pr-7", event="pull_request",
                     commit="a" * 40).label() == "quarantine:refs/heads/pr-7"
    assert scope_for(tmp_path / "nogit", branch="", commit="a" * 40).ref == ""


def _logged_run(s: Store, run_id: str, scope: str, started: float, text: str,
                drv: tuple[str, bytes] | None = None) -> None:
    drv_hash = ""
    if drv is not None:
        drv_hash, encoded = drv
        s.put_derivation(drv_hash, encoded)
    s.put_run(Run(id=run_id, pipeline="p", scope=scope, started=started, wall=1.0,
                  status="passed", steps=(StepRecord(name="build", status="passed",
                                                     cache="MISS", drv_hash=drv_hash,
                                                     log=s.put_blob(text.encode())),)))


def _main_then_evil(tmp_path, main_log: str, evil_log: str) -> KataProcess:  # noqa: ANN001
    """kata on a one-step pipeline whose store holds a run of main (20261130-000001-aaaaaa)
    and, 10 s later, a quarantined branch's (20261130-000002-bbbbbb), with these logs."""
    repo = tmp_path / "repo"
    repo.mkdir()
    (repo / ".kata-ci.yaml").write_text("pipeline: p\nsteps:\n  - {name: build, image: x}\n")
    store = tmp_path / "store"
    now = time.time()
    with Store.open(store) as s:
        _logged_run(s, "20261130-000001-aaaaaa", "ref:refs/heads/main", now - 10, main_log)
        _logged_run(s, "20261130-000002-bbbbbb", "quarantine:refs/heads/evil", now, evil_log)
    return KataProcess(repo, store=store)


def test_logs_without_run_never_show_an_untrusted_runs_output(tmp_path) -> None:
    """`kata logs` took "the last run" of any scope: a branch pushed just after main made
    its run's output stand in for main's (a forged "all tests passed"). As `kata export`:
    the last trusted run, named on stderr; an untrusted run only by --run ID."""
    kata = _main_then_evil(tmp_path, "main's log\n", "evil log\n")
    for args in (("logs",), ("logs", "--step", "build")):
        proc = kata(*args)
        assert proc.returncode == 0, proc.stderr
        assert "main's log" in proc.stdout and "evil" not in proc.stdout
        assert "20261130-000001-aaaaaa" in proc.stderr  # says which run it shows
    proc = kata("logs", "--run", "20261130-000002-bbbbbb")
    assert proc.returncode == 0, proc.stderr
    assert "evil log" in proc.stdout


def test_runs_shows_whether_each_run_was_trusted(tmp_path) -> None:
    """`kata runs` listed an untrusted branch's run beside main's with nothing telling
    them apart: a TRUST column (--json gives each run's `scope`)."""
    import json

    kata = _main_then_evil(tmp_path, "a\n", "b\n")
    proc = kata("runs")
    assert proc.returncode == 0, proc.stderr
    lines = proc.stdout.splitlines()
    assert "TRUST" in lines[0].split()
    row = {line.split()[0]: line for line in lines[1:]}
    assert "untrusted" in row["20261130-000002-bbbbbb"].split()
    assert "trusted" in row["20261130-000001-aaaaaa"].split()
    doc = json.loads(kata("runs", "--json").stdout)
    assert {r["id"]: r["scope"] for r in doc["runs"]} == {
        "20261130-000001-aaaaaa": "ref:refs/heads/main",
        "20261130-000002-bbbbbb": "quarantine:refs/heads/evil"}


def test_why_compares_against_the_last_trusted_realisation(tmp_path) -> None:
    """`kata why` diffed against the step's last realisation of any scope: an untrusted
    branch's run of the same derivation made main's changed step read "unchanged"."""
    from kata.realise.history import previous_derivations

    with Store.open(tmp_path / "store") as s:
        now = time.time()
        _logged_run(s, "20261130-000001-aaaaaa", "ref:refs/heads/main", now - 10, "a\n",
                    drv=("1" * 64, b"main's derivation"))
        _logged_run(s, "20261130-000002-bbbbbb", "quarantine:refs/heads/evil", now, "b\n",
                    drv=("2" * 64, b"evil derivation"))
        assert previous_derivations(s, "p", {"build": "2" * 64}, trusted=True) == \
            {"build": (b"main's derivation", False)}
        # an untrusted run's own page may still compare against what ran before it
        assert previous_derivations(s, "p", {"build": ""}) == \
            {"build": (b"evil derivation", False)}


def test_logs_in_a_directory_whose_config_does_not_load_names_whose_run_it_shows(tmp_path):
    """A config with a typo (an unknown key) made `kata logs` fall back to the last run of
    any pipeline, another project's, announced as "the last trusted run of the pipeline":
    the user read another project's output as theirs. stderr now names the run's pipeline
    and why it is not this directory's."""
    kata = _main_then_evil(tmp_path, "p's log\n", "b\n")
    (kata.repo / ".kata-ci.yaml").write_text("pipeline: mine\nsteps:\n"
                                             "  - {name: build, image: x, comand: [a]}\n")
    proc = kata("logs")
    assert proc.returncode == 0, proc.stderr
    assert "of pipeline 'p'" in proc.stderr, proc.stderr
    assert "the config here does not load" in proc.stderr and "comand" in proc.stderr, \
        proc.stderr
