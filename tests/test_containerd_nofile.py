"""A containerd that holds a low open-files limit (a system unit's ``LimitNOFILE=4096``):
crun runs a containerd task under the daemon's shim and can only lower the rlimits it
inherits, so a step spec asking 65536:524288 failed every task with crun's ``setrlimit
RLIMIT_NOFILE: Operation not permitted``. Kata cuts the step's limit to the daemon's
(``spec.task_rlimits``) and `kata doctor` names the cut and the fix."""

from __future__ import annotations

import json

import pytest
import yaml

from support.cli import KataProcess
from support.daemon import embedded_containerd
from support.images import busybox_image, write_oci_archive

pytestmark = pytest.mark.integration

SERVE = "trap 'exit 0' TERM; nc -ll -p 5432 -e echo hi & wait"


@pytest.fixture(scope="module")
def limited_containerd():
    with embedded_containerd("kt-nofile", nofile="1024:4096") as paths:
        yield paths


def test_steps_on_a_containerd_with_a_low_open_files_limit_run_under_it(
        tmp_path, limited_containerd):
    repo = tmp_path / "repo"
    repo.mkdir()
    kata = KataProcess(repo, store=tmp_path / "store", address=limited_containerd.address,
                       timeout=300)
    img = busybox_image()
    imported = kata("image", "import", str(write_oci_archive(img, tmp_path / "bb.tar")))
    assert imported.returncode == 0, imported.stderr
    probe = "echo nofile=$(ulimit -n):$(ulimit -Hn)"
    (repo / ".kata-ci.yaml").write_text(yaml.safe_dump({"pipeline": "nofile", "steps": [
        {"name": "pod", "image": img.ref, "inputs": [], "commands": [probe],
         "services": [{"name": "db", "image": img.ref, "commands": [SERVE],
                       "ready": {"tcp": 5432, "timeout": "20s"}}]},
        {"name": "plain", "image": img.ref, "inputs": [], "commands": [probe]}]}))
    run = kata("run")
    assert run.returncode == 0, run.stdout + run.stderr
    assert "nofile=4096:4096" in kata("logs", "--step", "pod").stdout  # the daemon's ceiling
    assert "nofile=" in kata("logs", "--step", "plain").stdout

    doctor = kata("doctor", "--json")
    check = next(c for c in json.loads(doctor.stdout)["checks"] if c["name"] == "open-files")
    assert check["status"] == "warn", check
    assert "holds a hard open-files limit of 4096" in check["detail"], check
    assert "LimitNOFILE=infinity" in check["fix"] and "prlimit --pid" in check["fix"], check


def test_doctor_is_content_with_a_containerd_that_holds_what_kata_does(tmp_path,
                                                                        containerd_daemon):
    kata = KataProcess(tmp_path, store=tmp_path / "store", address=containerd_daemon.address)
    doctor = kata("doctor", "--json")
    check = next(c for c in json.loads(doctor.stdout)["checks"] if c["name"] == "open-files")
    assert check["status"] == "ok" and "allows" in check["detail"], check
