"""`kata run` with services on real containerd, and `kata logs --step S --service NAME`."""

from __future__ import annotations


import pytest

from fakes import FakeStep, write_pipeline
from support.cli import KataProcess

pytestmark = pytest.mark.integration

IMAGE = "kata.local/busybox:latest"
SERVE = "trap 'exit 0' TERM; nc -ll -p 5432 -e echo pong & wait"


@pytest.fixture
def kata(tmp_path, containerd_daemon, runtime):
    repo = tmp_path / "repo"
    repo.mkdir()
    return KataProcess(repo, store=tmp_path / "store", address=containerd_daemon.address)


def test_a_step_with_a_service_and_its_log(kata):
    db = {"name": "db", "image": IMAGE, "env": {"GREETING": "db-hello"},
          "commands": ["echo $GREETING", SERVE], "ready": {"tcp": 5432, "timeout": "20s"}}
    write_pipeline(kata.repo, [FakeStep("it", commands=("nc db 5432 </dev/null",),
                                        inputs=("x",), services=(db,))], name="svc")
    first = kata("run")
    assert first.returncode == 0, first.stdout + first.stderr
    assert "it | pong" in first.stdout.splitlines()
    assert "db-hello" not in first.stdout  # a service's output is its own log
    logs = kata("logs", "--step", "it", "--service", "db")
    assert logs.returncode == 0, logs.stderr
    assert "db-hello" in logs.stdout.splitlines()
    second = kata("run")  # cached: the log is the one of the run that ran the service
    assert second.returncode == 0 and "[CACHE] it: HIT" in second.stdout
    again = kata("logs", "--step", "it", "--service", "db")
    assert again.returncode == 0 and "db-hello" in again.stdout.splitlines()
    missing = kata("logs", "--step", "it", "--service", "nope")
    assert missing.returncode == 1 and "nope" in missing.stderr
    assert kata("logs", "--service", "db").returncode == 2  # which step's?


def test_a_crashing_service_fails_the_step_naming_it(kata):
    db = {"name": "postgres", "image": IMAGE,
          "commands": ["echo initdb", "echo 'FATAL: role missing' >&2", "exit 1"],
          "ready": {"tcp": 5432}}
    write_pipeline(kata.repo, [FakeStep("it", commands=("echo step ran",), inputs=("x",),
                                        services=(db,))], name="svc")
    proc = kata("run")
    assert proc.returncode == 1
    assert "it | step ran" not in proc.stdout.splitlines()  # the step never started
    out = proc.stdout + proc.stderr
    assert "service postgres exited" in out and "FATAL: role missing" in out
    logs = kata("logs", "--step", "it")
    assert "service postgres exited" in logs.stdout
    svc = kata("logs", "--step", "it", "--service", "postgres")
    assert svc.returncode == 0 and "FATAL: role missing" in svc.stdout


def test_a_service_log_masks_the_secrets_of_the_run(kata):
    token = "s3rvice-t0ken-value"
    db = {"name": "db", "image": IMAGE, "secrets": ["DB_TOKEN"],
          "commands": ['echo "token=$(cat /run/kata/secrets/DB_TOKEN)"', SERVE],
          "ready": {"tcp": 5432, "timeout": "20s"}}
    write_pipeline(kata.repo, [FakeStep("it", commands=("nc db 5432 </dev/null",),
                                        inputs=("x",), secrets=("DB_TOKEN",),
                                        services=(db,))], name="svc")
    proc = kata("run", "--secret", f"DB_TOKEN={token}")
    assert proc.returncode == 0, proc.stdout + proc.stderr
    logs = kata("logs", "--step", "it", "--service", "db")
    assert logs.returncode == 0, logs.stderr
    assert "token=***" in logs.stdout.splitlines()
    assert token not in logs.stdout + proc.stdout + proc.stderr


def test_a_step_whose_service_declares_a_secret_is_cached_only_with_cache_true(kata):
    """The step reads the service's secret through the service (here: as its reply) and puts
    it in its artifact; the value is in no key, so a step whose service declares a secret is
    not served from the cache unless ``cache: true`` says so, as a step that declares one
    (it was: a rotated secret left the step's old result a hit)."""
    import yaml

    def pipeline(**extra):
        db = {"name": "db", "image": IMAGE, "secrets": ["DB_TOKEN"],
              "commands": ['trap "exit 0" TERM; '
                           'nc -ll -p 5432 -e cat /run/kata/secrets/DB_TOKEN & wait'],
              "ready": {"tcp": 5432, "timeout": "20s"}}
        step = {"name": "it", "image": IMAGE, "inputs": [], "services": [db], "artifacts": ["got"],
                "commands": ["nc db 5432 </dev/null > got", "rev got"], **extra}
        (kata.repo / ".kata-ci.yaml").write_text(yaml.safe_dump({"pipeline": "svcsecret",
                                                                 "steps": [step]}))

    pipeline()
    for value in ("first-s3cret", "rotated-s3cret"):
        run = kata("run", "--secret", f"DB_TOKEN={value}")
        assert run.returncode == 0, run.stdout + run.stderr
        assert "[RUN] it" in run.stdout and f"it | {value[::-1]}" in run.stdout, run.stdout
    plan = kata("run", "--dry-run")
    assert "[PLAN] it: MISS (a service declares secrets (cache: true caches it))" in plan.stdout
    pipeline(cache=True)
    first = kata("run", "--secret", "DB_TOKEN=first-s3cret")
    assert first.returncode == 0, first.stdout + first.stderr
    second = kata("run", "--secret", "DB_TOKEN=first-s3cret")
    assert "[CACHE] it: HIT" in second.stdout, second.stdout


def test_a_service_runs_as_its_user(kata):
    """Issue 14: `user:` on a service (Postgres refuses to run as root)."""
    def db(name, **extra):
        return {"name": name, "image": IMAGE, "ready": {"tcp": 5432, "timeout": "20s"},
                "commands": ["echo uid=$(id -u) gid=$(id -g)", SERVE], **extra}

    write_pipeline(kata.repo, [
        FakeStep("as-user", commands=("nc db 5432 </dev/null",), inputs=("x",),
                 services=(db("db", user="1000:1001"),)),
        FakeStep("as-root", commands=("nc db 5432 </dev/null",), inputs=("x",),
                 services=(db("db"),)),
    ], name="svc")
    first = kata("run")
    assert first.returncode == 0, first.stdout + first.stderr
    mine = kata("logs", "--step", "as-user", "--service", "db")
    assert mine.stdout.splitlines()[1:] == ["uid=1000 gid=1001"], mine.stdout
    root = kata("logs", "--step", "as-root", "--service", "db")
    assert root.stdout.splitlines()[1:] == ["uid=0 gid=0"], root.stdout


def test_a_non_root_step_and_service_can_use_their_workspace_and_secrets(kata):
    """A step or service with `user:` writes its workspace and reads its own secrets: both
    were root's 0755 / 0700, so `touch` and the secrets prelude failed for anyone else."""
    db = {"name": "db", "image": IMAGE, "user": "1000:1001", "secrets": ["DB_TOKEN"],
          "ready": {"tcp": 5432, "timeout": "20s"},
          "commands": ['test "$DB_TOKEN" = s3cret-v && echo db-read-it', SERVE]}
    write_pipeline(kata.repo, [
        FakeStep("as-user", user="1000:1001", secrets=("STEP_TOKEN",), artifacts=("out",),
                 commands=("mkdir out", "id -u > out/uid", "touch made",
                           'test "$STEP_TOKEN" = s3cret-s && echo step-read-it',
                           "nc db 5432 </dev/null"), inputs=("x",), services=(db,)),
        FakeStep("after", depends_on=("as-user",), commands=("cat out/uid",)),
    ], name="svc")
    (kata.repo / "x").write_text("x")
    run = kata("run", "--secret", "STEP_TOKEN=s3cret-s", "--secret", "DB_TOKEN=s3cret-v")
    assert run.returncode == 0, run.stdout + run.stderr
    assert "as-user | step-read-it" in run.stdout.splitlines()
    assert "after | 1000" in run.stdout.splitlines()
    svc = kata("logs", "--step", "as-user", "--service", "db")
    assert "db-read-it" in svc.stdout.splitlines(), svc.stdout


def test_a_service_running_as_its_images_user_reads_its_secrets(kata, tmp_path):
    """Without `user:`, a service runs as its image's numeric USER: its secrets (tmpfs
    0700, files 0400) must be that user's, as they are one given by `user:`."""
    from support.images import busybox_layer, make_image, write_oci_archive

    img = make_image([busybox_layer()], "kata.local/busybox-user:1", user="1000:1001")
    archive = write_oci_archive(img, tmp_path / "user.tar")
    imported = kata("image", "import", str(archive))
    assert imported.returncode == 0, imported.stdout + imported.stderr
    db = {"name": "db", "image": img.ref, "secrets": ["DB_TOKEN"],
          "ready": {"tcp": 5432, "timeout": "20s"},
          "commands": ['echo uid=$(id -u)', 'test "$DB_TOKEN" = s3cret-v && echo db-read-it',
                       SERVE]}
    write_pipeline(kata.repo, [FakeStep("it", commands=("nc db 5432 </dev/null",),
                                        inputs=("x",), services=(db,))], name="svc")
    (kata.repo / "x").write_text("x")
    run = kata("run", "--secret", "DB_TOKEN=s3cret-v")
    assert run.returncode == 0, run.stdout + run.stderr
    svc = kata("logs", "--step", "it", "--service", "db")
    assert svc.stdout.splitlines()[1:] == ["uid=1000", "db-read-it"], svc.stdout


def test_services_in_another_order_are_one_key_and_one_container(kata):
    """The key sorts a step's services by name; the container got them in the config's
    order (its /etc/hosts line named them so, and they launched so): two configs with one
    key ran two environments, and the second was served the first's result (branch
    cache-trust). Now the runtime gets the key's order."""
    idle = "trap 'exit 0' TERM; sleep 600 & wait"

    def pipeline(*names):
        write_pipeline(kata.repo, [FakeStep(
            "it", commands=("grep -m1 localhost /etc/hosts",), inputs=("x",),
            services=tuple({"name": n, "image": IMAGE, "commands": [idle]} for n in names))],
            name="svcorder")

    (kata.repo / "x").write_text("x")
    pipeline("zeta", "alpha")
    first = kata("run")
    assert first.returncode == 0, first.stdout + first.stderr
    hosts = [line for line in first.stdout.splitlines() if line.startswith("it | ")]
    assert hosts == ["it | 127.0.0.1\tlocalhost kata alpha zeta"], first.stdout
    pipeline("alpha", "zeta")
    hit = kata("run")
    assert hit.returncode == 0 and "[CACHE] it: HIT" in hit.stdout, hit.stdout
    again = kata("run", "--no-cache")
    assert again.returncode == 0, again.stdout + again.stderr
    assert [line for line in again.stdout.splitlines() if line.startswith("it | ")] == hosts
