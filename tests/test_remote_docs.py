"""docs/remote.md as written: every host config snippet loads, and a team's setups run as
the page gives them, against a real BuildGrid (and PostgreSQL): the cache-only server, its
TLS and bearer-token recipe, the execution server with two `kata worker`s, and the `kata`
and `bgd` command lines around them. Only addresses and paths are rewritten (a free port
for 50051, a temporary directory for /etc, the test's BuildGrid virtualenv for
/opt/buildgrid). A snippet that stops working fails here, not at a team's first try."""

from __future__ import annotations

import json
import os
import re
import shlex
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import pytest
import yaml

from support.buildgrid import VENV, BuildGrid, BuildGridConfig
from support.cli import ROOT, KataProcess
from support.images import BUSYBOX_REF, busybox_image, write_oci_archive
from support.postgres import postgres_cluster

DOC = ROOT / "docs" / "remote.md"
CONFIG_DOC = ROOT / "docs" / "config.md"


def fenced(path: Path, lang: str) -> list[str]:
    """The ```lang blocks of a Markdown file, in order."""
    return re.findall(rf"^```{lang}\n(.*?)^```", path.read_text(), re.S | re.M)


def one(blocks: list[str], *marks: str) -> str:
    found = [b for b in blocks if all(m in b for m in marks)]
    assert len(found) == 1, f"{len(found)} blocks hold {marks} in docs/remote.md"
    return found[0]


def self_signed(at: Path, name: str) -> tuple[Path, Path]:
    key, cert = at / f"{name}.key", at / f"{name}.pem"
    subprocess.run(["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "2",
                    "-subj", "/CN=localhost", "-addext", "subjectAltName=DNS:localhost",
                    "-keyout", str(key), "-out", str(cert)], check=True, capture_output=True)
    return key, cert


def test_every_host_config_snippet_loads(tmp_path):
    """Each `remote:` snippet of docs/remote.md and docs/config.md is a host config Kata
    accepts, once the files it names exist (a certificate for *.pem, a key for *.key, a
    token for *.token)."""
    key, cert = self_signed(tmp_path, "any")
    snippets = [b for doc in (DOC, CONFIG_DOC) for b in fenced(doc, "yaml")
                if re.search(r"^remote:", b, re.M)]
    assert len(snippets) >= 5, snippets
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    for n, text in enumerate(snippets):
        for path in sorted(set(re.findall(r"/etc/kata/[\w.-]+", text))):
            local = tmp_path / f"{n}-{Path(path).name}"
            if path.endswith(".token"):
                local.write_text("a-bearer-token\n")
            else:
                local.write_bytes((key if path.endswith(".key") else cert).read_bytes())
            text = text.replace(path, str(local))
        host = tmp_path / f"host-{n}.yaml"
        host.write_text(text)
        code = ("from kata.remote.config import load_remote_config as load\n"
                "for k in ('cache', 'executor'):\n    load(key=k)\n")
        done = subprocess.run([sys.executable, "-c", code], env={**env, "KATA_CONFIG": str(host)},
                              capture_output=True, text=True, timeout=60)
        assert done.returncode == 0, f"snippet {n}:\n{text}\n{done.stderr}"


@dataclass
class AsWritten(BuildGridConfig):
    """A BuildGrid configuration from the docs: its text, 50051 made the test's port."""

    text: str = ""

    def render(self, workdir: Path, port: int) -> str:
        return self.text.replace("0.0.0.0:50051", f"127.0.0.1:{port}")


def sh(line: str, port: int, **paths: str) -> list[str]:
    """A documented command line: the doc's hosts and port made the test's."""
    for host in ("buildgrid-host", "cache.internal", "scheduler", "cache", "HOST"):
        line = re.sub(rf"(//){re.escape(host)}:50051\b", rf"\g<1>127.0.0.1:{port}", line)
    for old, new in paths.items():
        line = line.replace(old, new)
    return shlex.split(line)


def _repo(tmp_path: Path, name: str = "repo") -> Path:
    repo = tmp_path / name
    repo.mkdir()
    (repo / "src.txt").write_text("docs\n")
    (repo / ".kata-ci.yaml").write_text(yaml.safe_dump({"pipeline": "docs", "steps": [
        {"name": "build", "image": BUSYBOX_REF, "inputs": ["src.txt"], "artifacts": ["out"],
         "commands": ["cp src.txt out"]},
        {"name": "check", "image": BUSYBOX_REF, "depends_on": ["build"],
         "commands": ["cat out"]}]}))
    return repo


def _host(tmp_path: Path, name: str, address: str) -> KataProcess:
    kata = KataProcess(_repo(tmp_path, name), store=tmp_path / f"{name}-store",
                       address=address, timeout=300)
    image = tmp_path / "busybox.tar"
    if not image.exists():
        write_oci_archive(busybox_image(), image)
    assert kata("image", "import", str(image)).returncode == 0
    return kata


@pytest.mark.integration
def test_the_cache_only_team_server_as_written(tmp_path, containerd_daemon):
    """The cache-only configuration and its `bgd server start` / `kata run` lines, then the
    `bgd actioncache` line and the action-hash one-liner: host B hits what host A built."""
    blocks = fenced(DOC, "sh")
    config = one(fenced(DOC, "yaml"), "!lru-storage &cas", "instances:")
    config = config.replace("size: 16G", "size: 256M")
    bg = BuildGrid(tmp_path / "bgd", AsWritten(instance="main", text=config))
    bg.start()
    try:
        port = bg.port
        start = one(blocks, "bgd server start /etc/buildgrid/cache.yml")
        run_line = [x for x in start.splitlines() if x.startswith("kata run")][0]
        argv = sh(run_line, port)[1:]
        for name in ("a", "b"):
            kata = _host(tmp_path, name, containerd_daemon.address)
            done = kata(*argv)
            assert done.returncode == 0 and "warning" not in done.stderr, done.stdout + done.stderr
        assert "build: HIT" in done.stdout and "remote)" in done.stdout, done.stdout
        # `kata run --dry-run --json` gives the key; the one-liner its action; bgd reads it
        dry = kata("run", "--dry-run", "--json")
        key = next(e["key"] for e in map(json.loads, dry.stdout.splitlines())
                   if e.get("step") == "build" and e.get("key"))
        liner = re.search(r"`(python3 -c '.*?')`", DOC.read_text().replace("\n", " ")).group(1)
        digest = subprocess.run([sys.executable if w == "python3" else w
                                 for w in shlex.split(liner.replace("KEY", key))],
                                env=kata.env, capture_output=True, text=True, check=True).stdout.strip()
        get = one(blocks, "bgd actioncache").splitlines()[0]
        argv = sh(get.replace("<action hash>/<size>", digest), port)
        got = subprocess.run([str(VENV / "bin" / "bgd"), *argv[1:]], capture_output=True,
                             text=True, timeout=60)
        assert got.returncode == 0 and "kata/record" in got.stdout, got.stdout + got.stderr
    finally:
        bg.stop()


@pytest.mark.integration
def test_the_tls_and_token_recipe_as_written(tmp_path, containerd_daemon):
    """"TLS and a bearer token": the openssl and PyJWT lines run as given, the server's
    TLS channel and `authorization:` merged into the cache-only configuration, the host
    config as given: `kata doctor` says ok and a run uploads without a warning."""
    etc = tmp_path / "etc"
    (etc / "kata").mkdir(parents=True)
    paths = {"/etc/buildgrid": str(etc / "buildgrid"), "/etc/kata": str(etc / "kata"),
             "/opt/buildgrid": str(VENV), "cache.internal": "localhost"}

    def local(text: str) -> str:
        for old, new in paths.items():
            text = text.replace(old, new)
        return text

    recipe = one(fenced(DOC, "sh"), "openssl req -x509", "jwt.encode")
    made = subprocess.run(["bash", "-euo", "pipefail", "-c", local(recipe)], cwd=tmp_path,
                          capture_output=True, text=True, timeout=120)
    assert made.returncode == 0, made.stderr
    (etc / "kata" / "remote-ca.pem").write_bytes((etc / "buildgrid" / "server.pem").read_bytes())
    (etc / "kata" / "remote.token").write_bytes((tmp_path / "remote.token").read_bytes())

    yamls = fenced(DOC, "yaml")
    cache = one(yamls, "!lru-storage &cas", "instances:").replace("size: 16G", "size: 256M")
    tls = local(one(yamls, "insecure-mode: false", "authorization:"))
    # the recipe's server: replaces the cache-only one; authorization: joins it
    cache = re.sub(r"^server:\n(?:  .*\n)+", "", cache, flags=re.M)
    config = AsWritten(instance="main", text=tls + cache,
                       tls_key=etc / "buildgrid" / "server.key",
                       tls_cert=etc / "buildgrid" / "server.pem")
    bg = BuildGrid(tmp_path / "bgd", config)
    bg.start()
    try:
        host = tmp_path / "host.yaml"
        snippet = one([y for y in yamls if "token_file" in y and "remote:" in y],
                      "cache: grpcs://cache.internal:50051")
        host.write_text(local(snippet).replace("localhost:50051", f"localhost:{bg.port}"))
        kata = _host(tmp_path, "a", containerd_daemon.address)
        doctor = kata("doctor", "--json", KATA_CONFIG=str(host))
        checks = {c["name"]: c for c in json.loads(doctor.stdout)["checks"]}
        assert checks["remote-cache"]["status"] == "ok", checks["remote-cache"]
        run = kata("run", KATA_CONFIG=str(host))
        assert run.returncode == 0 and "warning" not in run.stderr, run.stdout + run.stderr
        b = _host(tmp_path, "b", containerd_daemon.address)
        hit = b("run", KATA_CONFIG=str(host))
        assert "build: HIT" in hit.stdout and "remote)" in hit.stdout, hit.stdout + hit.stderr
        # bgd's own check line, as written
        check = re.search(r"`(bgd capabilities --remote https://cache\.internal.*?)`",
                          DOC.read_text().replace("\n", " ")).group(1)
        argv = shlex.split(local(check).replace("localhost:50051", f"localhost:{bg.port}"))
        caps = subprocess.run([str(VENV / "bin" / "bgd"), *argv[1:]], capture_output=True,
                              text=True, timeout=60)
        assert caps.returncode == 0 and "cacheCapabilities" in caps.stdout, caps.stderr
    finally:
        bg.stop()


def indented(path: Path, first: str) -> list[str]:
    """The lines of the 4-space-indented block of ``path`` whose first line starts with
    ``first``, unindented."""
    lines = path.read_text().splitlines()
    start = next(i for i, x in enumerate(lines) if x.startswith("    " + first))
    block = []
    for line in lines[start:]:
        if not line.startswith("    "):
            break
        block.append(line[4:])
    return block


def doc_worker(argv: list[str], state: Path, env: dict[str, str]):  # noqa: ANN201
    """A `kata worker` started with the doc's own command line (test_remote_exec's Worker
    for its log, readiness and cleanup)."""
    from test_remote_exec import Worker

    worker = Worker.__new__(Worker)
    worker.name, worker.state, worker.log = argv[-1], state, state / "worker.log"
    with open(worker.log, "wb") as out:
        worker.proc = subprocess.Popen([sys.executable, "-m", "kata", *argv[1:]], stdout=out,
                                       stderr=out, stdin=subprocess.DEVNULL, env=env)
    return worker


@pytest.mark.integration
def test_the_execution_server_and_workers_as_written(tmp_path, containerd_daemon):
    """"Running BuildGrid with execution for a team": the PostgreSQL lines (against a
    throwaway cluster instead of Debian's), `bgd migrate apply`, the documented bgd.yml,
    `bgd capabilities`, two workers from the "Workers" line (one with its `--slots 2`),
    their image imported with the documented command, and `kata run --remote-executor`:
    every step runs on a worker, and `kata logs` says which."""
    import secrets as random
    from urllib.parse import urlsplit

    setup = indented(DOC, "python3 -m venv /opt/buildgrid")
    with postgres_cluster() as db:
        pg = urlsplit(db)
        env = {**os.environ, "PGHOST": "127.0.0.1", "PGPORT": str(pg.port),
               "PGUSER": pg.username, "PGDATABASE": "postgres"}
        for line in setup:
            if line.startswith("runuser -u postgres --"):
                done = subprocess.run(shlex.split(line), env=env, capture_output=True,
                                      text=True, timeout=60)
                assert done.returncode == 0, f"{line}: {done.stderr}"
        at = f"127.0.0.1:{pg.port}/bgd"
        migrate = next(x for x in setup if "bgd migrate apply" in x)
        argv = shlex.split(migrate.replace("127.0.0.1/bgd", at))
        done = subprocess.run([str(VENV / "bin" / "bgd"), *argv[1:]], capture_output=True,
                              text=True, timeout=180)
        assert done.returncode == 0, done.stderr
        config = one(fenced(DOC, "yaml"), "!sql-scheduler &scheduler", "instances:")
        config = config.replace("127.0.0.1/bgd", at).replace(
            "/var/lib/buildgrid/cas", str(tmp_path / "cas"))
        (tmp_path / "cas").mkdir()
        bg = BuildGrid(tmp_path / "bgd", AsWritten(text=config))
        bg.start()
        workers = []
        try:
            port = bg.port
            caps = subprocess.run([str(VENV / "bin" / "bgd"), "capabilities", "--remote",
                                   f"http://127.0.0.1:{port}"], capture_output=True,
                                  text=True, timeout=60)
            assert '"execEnabled": true' in caps.stdout, caps.stdout + caps.stderr
            line = next(x for x in indented(DOC, "kata worker --executor grpc://scheduler")
                        if x.startswith("kata worker"))
            image = tmp_path / "busybox.tar"
            write_oci_archive(busybox_image(), image)
            kenv = {**os.environ, "PYTHONPATH": str(ROOT)}
            for slots in ("--slots 2", ""):
                state = Path(f"/tmp/kt-rrd-{random.token_hex(3)}")  # short: socket paths
                state.mkdir(mode=0o711)
                argv = sh(line.replace("--slots 2", slots), port,
                          **{"/var/lib/kata-worker": str(state)})
                workers.append(doc_worker(argv, state, kenv))
            for w in workers:
                w.wait_ready()
                # "kata --containerd DIR/containerd.sock image import FILE"
                imported = subprocess.run(
                    [sys.executable, "-m", "kata", "--containerd",
                     str(w.state / "containerd.sock"), "image", "import", str(image)],
                    env=kenv, capture_output=True, text=True, timeout=120)
                assert imported.returncode == 0, imported.stderr
            assert "2 slot(s)" in workers[0].text() and "1 slot(s)" in workers[1].text()
            kata = _host(tmp_path, "client", containerd_daemon.address)
            run_line = next(x for x in indented(DOC, "kata run --remote-executor")
                            if x.startswith("kata run"))
            argv = sh(re.sub(r" \[.*?\]", "", run_line).replace("HOST:PORT", "HOST:50051"),
                      port)
            run = kata(*argv[1:])
            assert run.returncode == 0, run.stdout + run.stderr + workers[0].text()
            logs = kata("logs", "--step", "check")
            assert "kata: ran on worker" in logs.stdout and "docs" in logs.stdout, logs.stdout
        finally:
            for w in workers:
                w.close()
            bg.stop()
