"""What a client says of a step a worker ran is the worker's fact, not the client's host's
(issue 13: a remote step is recorded like a local one *there*). A step without
``memory:`` gets its worker's host default (half the worker's RAM); an out-of-memory kill
must name that limit, not the client's own default. Real BuildGrid, a real worker whose
/proc/meminfo (in a mount namespace of its own) says it has 512 MiB of RAM."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest
import yaml

from kata.resources import effective, format_size
from test_remote_exec import Worker, grid, kata  # noqa: F401 - fixtures

pytestmark = pytest.mark.integration

SMALL_RAM = 512 << 20  # the worker's MemTotal: its default limit is half that, 256 MiB


@pytest.fixture
def small_worker(grid, tmp_path):  # noqa: F811
    """One worker that believes its host has ``SMALL_RAM``: a private mount namespace
    (``unshare``, private propagation: nothing it mounts reaches the host's) in which a
    file binds over /proc/meminfo, read by kata.resources.host_defaults."""
    meminfo = tmp_path / "meminfo"
    real = Path("/proc/meminfo").read_text()
    meminfo.write_text(re.sub(r"^MemTotal:\s+\d+ kB", f"MemTotal: {SMALL_RAM >> 10} kB",
                              real, flags=re.M))
    bg, _image = grid
    wrap = ("unshare", "--mount", "--propagation", "private", "sh", "-c",
            f'mount --bind {meminfo} /proc/meminfo && exec "$@"', "sh")
    w = Worker("small", bg.url, bg.logstream, wrap=wrap)
    try:
        w.wait_ready()
        yield w
    finally:
        w.close()


def test_an_out_of_memory_kill_on_a_worker_names_the_workers_limit(grid, small_worker,
                                                                   kata):  # noqa: F811
    bg, image = grid
    here = effective(None).memory
    assert here > (256 << 20) * 4, "this host's default must differ from the worker's"
    (kata.repo / ".kata-ci.yaml").write_text(yaml.safe_dump({
        "pipeline": "oom", "settings": {"fail_fast": False}, "steps": [
            {"name": "hog", "image": image, "inputs": ["src/**"],
             "commands": ["head -c 400m /dev/zero | tail > /dev/null"]},
            {"name": "made", "image": image, "inputs": ["src/**"], "artifacts": ["a"],
             "commands": ["cp src/a.txt a"]}]}))
    run = kata("run", "--json", "--remote-executor", bg.url)
    assert run.returncode == 1, run.stdout + run.stderr
    fail = next(e for e in map(json.loads, run.stdout.splitlines()) if e.get("event") == "fail")
    assert fail["reason"] == "step.oom", fail
    assert fail["message"] == "out of memory: limit 256 MiB", (fail, format_size(here))
    assert "kata: out of memory: limit 256 MiB" in kata("logs", "--step", "hog").stdout
    assert "lease" in small_worker.text()  # it ran there
    # the realisation of what passed there names the worker that built it, not this host
    # (the remote cache hands it on as ExecutedActionMetadata.worker)
    from store import Store

    key = next(e["key"] for e in map(json.loads, run.stdout.splitlines())
               if e.get("event") == "cache" and e.get("step") == "made")
    real = Store.open(kata.env["KATA_STORE"]).get_realisation(key)
    assert real is not None and real.host == "small", real
