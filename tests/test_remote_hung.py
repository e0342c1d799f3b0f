"""A remote that *hangs* mid-run (BuildGrid SIGSTOPped: the kernel still accepts
connections and takes bytes, nothing answers) or stalls mid-stream, for the remote cache
and for the remote executor: the run ends in bounded time, with one warning line for the
cache, and leaves nothing half-written in the store (docs/remote.md "When the remote
fails")."""

from __future__ import annotations

import subprocess
import time
from pathlib import Path

import pytest
import yaml

from support.buildgrid import buildgrid
from support.cli import KataProcess

pytestmark = pytest.mark.integration

IMAGE = "kata.local/busybox:latest"


def _repo(root: Path, steps: list[dict]) -> Path:
    root.mkdir(parents=True)
    (root / "x").write_text("x\n")
    (root / ".kata-ci.yaml").write_text(yaml.safe_dump({"pipeline": "hung", "steps": steps},
                                                       sort_keys=False))
    return root


def _run_until(kata: KataProcess, args: list[str], marker: str, action, *, env=None,
               limit: float = 120) -> tuple[subprocess.Popen, list[str], str, float]:
    """Start ``kata run ARGS``, call ``action()`` at the first stdout line starting with
    ``marker``, then wait for the end: (process, stdout lines, stderr, seconds after the
    action)."""
    proc = subprocess.Popen([*kata.base, "run", *args], cwd=kata.repo,
                            env={**kata.env, **(env or {})}, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)
    out: list[str] = []
    assert proc.stdout is not None
    acted = None
    for line in proc.stdout:
        out.append(line.rstrip("\n"))
        if line.startswith(marker):
            action()
            acted = time.monotonic()
            break
    assert acted is not None, out
    try:
        rest, err = proc.communicate(timeout=limit)
    except subprocess.TimeoutExpired:
        proc.kill()
        rest, err = proc.communicate()
        raise AssertionError(f"no end {limit}s after the remote hung:\n" + "\n".join(out)
                             + rest + err) from None
    return proc, out + rest.splitlines(), err, time.monotonic() - acted


def test_a_cache_that_hangs_mid_run_costs_one_timeout_and_one_warning(tmp_path,
                                                                       containerd_daemon,
                                                                       runtime):
    """BuildGrid SIGSTOPped while a step runs, with a 4 MiB artifact on its way up: the
    run passes locally, says so once, and ends within a few ``remote.timeout``s, not one
    per call; the store verifies."""
    steps = [
        {"name": "one", "image": IMAGE, "inputs": ["x"], "artifacts": ["o"],
         "commands": ["head -c 4194304 /dev/urandom > o"]},
        {"name": "two", "image": IMAGE, "depends_on": ["one"], "inputs": ["x"],
         "artifacts": ["t"], "commands": ["echo started", "sleep 2", "cat o > t"]},
        {"name": "three", "image": IMAGE, "depends_on": ["two"], "inputs": ["x"],
         "artifacts": ["h"], "commands": ["head -c 4194304 /dev/urandom > h"]},
        {"name": "four", "image": IMAGE, "depends_on": ["two"], "inputs": ["x"],
         "commands": ["test -s t"]},
    ]
    repo = _repo(tmp_path / "repo", steps)
    kata = KataProcess(repo, store=tmp_path / "store", address=containerd_daemon.address)
    with buildgrid(tmp_path / "bgd") as server:
        cfg = tmp_path / "config.yaml"
        cfg.write_text(f"remote:\n  cache: {server.url}\n  timeout: 3s\n  backoff: 0s\n")
        try:
            proc, out, err, took = _run_until(kata, [], "two | started", server.pause,
                                              env={"KATA_CONFIG": str(cfg)})
        finally:
            server.resume()
    print(f"took {took:.1f}s after the pause\n" + "\n".join(out) + err)
    assert proc.returncode == 0, "\n".join(out) + err
    assert "Traceback" not in err
    warnings = [x for x in err.splitlines() if "remote cache" in x]
    assert len(warnings) == 1, err
    assert warnings[0].startswith(f"kata: warning: remote cache {server.url} unavailable (")
    # what to do, not only what happened
    assert warnings[0].endswith("going on with the local store only; `kata doctor "
                                f"--remote-cache {server.url}` says what to fix"), warnings[0]
    assert took < 40, took  # a few 3 s timeouts, not one per call
    verify = kata("store", "verify")
    assert verify.returncode == 0, verify.stdout + verify.stderr


BIG = 48 << 20  # bytes of the artifact that is on its way when the link goes silent


def _big_pipeline(root: Path, y: str) -> Path:
    steps = [
        {"name": "big", "image": IMAGE, "inputs": ["x"], "artifacts": ["b"],
         "commands": [f"head -c {BIG} /dev/urandom > b"]},
        {"name": "use", "image": IMAGE, "depends_on": ["big"], "inputs": ["y"],
         "commands": [f"test $(wc -c < b) -eq {BIG}", "cat y"]},
    ]
    repo = _repo(root, steps)
    (repo / "y").write_text(y)
    return repo


def test_a_link_gone_silent_mid_download_of_a_remote_hit_rebuilds_it(tmp_path,
                                                                     containerd_daemon,
                                                                     runtime):
    """Host B's connection to the cache goes silent for good (no RST) while it downloads a
    48 MiB remote hit that a step needs: B rebuilds the hit locally, the run passes with
    one warning in bounded time, and nothing half-downloaded is in its store."""
    from support.proxy import FaultProxy

    a = KataProcess(_big_pipeline(tmp_path / "a", "a\n"), store=tmp_path / "store-a",
                    address=containerd_daemon.address)
    b = KataProcess(_big_pipeline(tmp_path / "b", "b\n"), store=tmp_path / "store-b",
                    address=containerd_daemon.address)
    with buildgrid(tmp_path / "bgd") as server:
        built = a("run", "--remote-cache", server.url)
        assert built.returncode == 0, built.stdout + built.stderr
        with FaultProxy(("127.0.0.1", server.port)) as proxy:
            cfg = tmp_path / "config.yaml"
            cfg.write_text(f"remote:\n  cache: grpc://127.0.0.1:{proxy.port}\n  timeout: 3s\n"
                           "  backoff: 0s\n")
            proxy.trip_down = BIG // 3
            started = time.monotonic()
            run = b("run", KATA_CONFIG=str(cfg))
            took = time.monotonic() - started
            assert proxy.tripped.is_set(), "the download never reached a third: no fault"
    assert run.returncode == 0, run.stdout + run.stderr
    assert "Traceback" not in run.stderr
    warnings = [x for x in run.stderr.splitlines() if "remote cache" in x]
    assert len(warnings) == 1, run.stderr
    assert "MISS (remote cache unavailable, rebuilding)" in run.stdout, run.stdout
    assert "use | b" in run.stdout
    assert took < 90, took
    verify = b("store", "verify")
    assert verify.returncode == 0, verify.stdout + verify.stderr


def test_a_link_gone_silent_mid_upload_leaves_the_result_queued(tmp_path, containerd_daemon,
                                                                runtime):
    """The connection goes silent for good while a 48 MiB artifact goes up: the run passes
    with one warning in bounded time, the store verifies, and the result stays queued: the
    next run against a cache that answers sends it, and a second host hits it."""
    from support.proxy import FaultProxy

    a = KataProcess(_big_pipeline(tmp_path / "a", "a\n"), store=tmp_path / "store-a",
                    address=containerd_daemon.address)
    with buildgrid(tmp_path / "bgd") as server:
        with FaultProxy(("127.0.0.1", server.port)) as proxy:
            cfg = tmp_path / "config.yaml"
            cfg.write_text(f"remote:\n  cache: grpc://127.0.0.1:{proxy.port}\n  timeout: 3s\n"
                           "  backoff: 0s\n")
            proxy.trip_up = BIG // 3
            started = time.monotonic()
            run = a("run", KATA_CONFIG=str(cfg))
            took = time.monotonic() - started
            assert proxy.tripped.is_set(), "the upload never reached a third: no fault"
        assert run.returncode == 0, run.stdout + run.stderr
        assert "Traceback" not in run.stderr
        warnings = [x for x in run.stderr.splitlines() if "remote cache" in x]
        assert len(warnings) == 1, run.stderr
        assert took < 90, took
        verify = a("store", "verify")
        assert verify.returncode == 0, verify.stdout + verify.stderr
        pushed = a("remote", "push", "--remote-cache", server.url)
        assert pushed.returncode == 0, pushed.stdout + pushed.stderr
        b = KataProcess(_big_pipeline(tmp_path / "b", "a\n"), store=tmp_path / "store-b",
                        address=containerd_daemon.address)
        hit = b("run", "--remote-cache", server.url)
        assert hit.returncode == 0, hit.stdout + hit.stderr
        assert hit.stdout.splitlines()[-1].startswith("[DONE] 2 steps (2 cached, 0 ran)"), \
            hit.stdout


def test_a_slow_link_that_keeps_moving_carries_a_big_artifact_both_ways(tmp_path,
                                                                        containerd_daemon,
                                                                        runtime):
    """A link far slower than the per-call timeout allows for (about 3 MB/s, with
    ``remote.timeout: 2s``) but never stalled: the 48 MiB artifact goes up from A and
    comes down to B, with no warning on either: the timeout bounds a transfer's silence,
    not its length."""
    from support.proxy import FaultProxy

    a = KataProcess(_big_pipeline(tmp_path / "a", "a\n"), store=tmp_path / "store-a",
                    address=containerd_daemon.address)
    b = KataProcess(_big_pipeline(tmp_path / "b", "b\n"), store=tmp_path / "store-b",
                    address=containerd_daemon.address)
    with buildgrid(tmp_path / "bgd") as server, \
            FaultProxy(("127.0.0.1", server.port)) as proxy:
        cfg = tmp_path / "config.yaml"
        cfg.write_text(f"remote:\n  cache: grpc://127.0.0.1:{proxy.port}\n  timeout: 2s\n"
                       "  backoff: 0s\n")
        proxy.delay = 0.02  # per chunk of at most 64 KiB: ~3 MB/s
        up = a("run", KATA_CONFIG=str(cfg))
        assert up.returncode == 0, up.stdout + up.stderr
        assert "remote cache" not in up.stderr, up.stderr
        sent = proxy.up
        assert sent > BIG, sent
        down = b("run", KATA_CONFIG=str(cfg))
        assert down.returncode == 0, down.stdout + down.stderr
        assert "remote cache" not in down.stderr, down.stderr
        assert "[CACHE] big: HIT" in down.stdout, down.stdout
        assert "use | b" in down.stdout
        verify = b("store", "verify")
        assert verify.returncode == 0, verify.stdout + verify.stderr
