"""Remote execution behind TLS and a bearer token, as docs/remote.md tells a team to secure
BuildGrid (`insecure-mode: false` with a certificate, `authorization: jwt`): a real
BuildGrid with PostgreSQL, a real registry, one real `kata worker` and `kata run`, both
given the CA and the token file by the host config's `remote:` section. The worker had no
way to present either (only --executor URL): it could not join such a scheduler."""

from __future__ import annotations

import subprocess

import pytest
import yaml

from support.buildgrid import BGD, BuildGrid
from support.buildgrid_exec import execution_config
from support.cli import KataProcess
from support.images import busybox_image
from support.postgres import postgres_cluster
from support.registry import docker_registry, push_image
from test_remote_cas import _jwt, _self_signed
from test_remote_exec import Worker, worker_of

pytestmark = pytest.mark.integration


def test_a_worker_and_a_client_use_the_host_configs_tls_and_token(tmp_path,
                                                                   containerd_daemon):
    key, cert = _self_signed(tmp_path)
    secret = tmp_path / "jwt.secret"
    secret.write_text("a-shared-hs256-secret-for-the-exec-test")
    token = tmp_path / "token"
    token.write_text(_jwt(secret.read_text()) + "\n")
    with postgres_cluster() as db, docker_registry(tmp_path / "registry") as registry:
        migrated = subprocess.run([str(BGD), "migrate", "apply", db], capture_output=True,
                                  text=True, timeout=180)
        assert migrated.returncode == 0, migrated.stderr
        config = execution_config(db)
        config.tls_key, config.tls_cert, config.auth_secret = key, cert, secret
        bg = BuildGrid(tmp_path / "bgd", config)
        bg.start()
        push_image(registry, "kata/busybox", "1", busybox_image())
        image = f"{registry.removeprefix('http://')}/kata/busybox:1"
        host = tmp_path / "kata-config.yaml"
        host.write_text(f"worker:\n  allow_private_registries: true\n"
                        f"remote:\n  executor: {bg.url}\n  tls:\n    ca: {cert}\n"
                        f"  token_file: {token}\n")
        worker = None
        try:
            worker = Worker("wtls", bg.url, bg.url, env={"KATA_CONFIG": str(host)})
            worker.wait_ready()
            repo = tmp_path / "repo"
            repo.mkdir()
            (repo / "x").write_text("x\n")
            (repo / ".kata-ci.yaml").write_text(yaml.safe_dump({"pipeline": "tls", "steps": [
                {"name": "s", "image": image, "inputs": ["x"], "commands": ["cat x"]}]}))
            kata = KataProcess(repo, store=tmp_path / "store",
                               address=containerd_daemon.address, timeout=300)
            run = kata("run", KATA_CONFIG=str(host))
            assert run.returncode == 0, run.stdout + run.stderr + worker.text()
            assert worker_of(kata, "s") == "wtls"
        finally:
            if worker is not None:
                worker.close()
            bg.stop()
