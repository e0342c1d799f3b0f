"""A hostile step on a remote worker: a workspace nested deeper than Python recurses
(``mkdir -p d/d/...``, 1,500 levels). The worker packs it, the client writes it back,
a dependent on a worker reads it, and the worker removes each lease's input root: real
BuildGrid with PostgreSQL, a real registry, a real `kata worker`."""

from __future__ import annotations

import time
from pathlib import Path

import pytest
import yaml

from kata.executor import action as act
from kata.executor.files import digest_of, message_bytes
from kata.remote._api.build.bazel.remote.execution.v2 import remote_execution_pb2 as re_pb2
from procs.leftovers import remove_tree
from support.hostile_reapi import HostileClient, props
from support.images import busybox_image
from test_remote_exec import Worker, grid, kata, worker_of, worker_pool  # noqa: F401 - fixtures

# one grid for the module: its tests share one BuildGrid and one refusing worker
pytestmark = [pytest.mark.integration, pytest.mark.xdist_group("hostile_remote")]

DEEP = "d/" * 1500


def _leases_left(worker, timeout: float = 15) -> list[str]:
    """The lease input roots still in the worker's work root once it settles."""
    root = worker.state / "worker"
    deadline = time.monotonic() + timeout
    while True:
        left = [p.name for p in root.iterdir() if p.name.startswith("lease-")] \
            if root.is_dir() else []
        if not left or time.monotonic() > deadline:
            return left
        time.sleep(0.2)


def test_a_remote_step_nesting_its_workspace_deeper_than_python_recurses(grid, kata):  # noqa: F811
    bg, image = grid
    (kata.repo / ".kata-ci.yaml").write_text(yaml.safe_dump({"pipeline": "deep", "steps": [
        {"name": "make", "image": image, "inputs": ["src/**"], "artifacts": ["d/"],
         "commands": [f"mkdir -p {DEEP} && echo bottom > {DEEP}f"]},
        {"name": "use", "image": image, "inputs": ["src/**"], "depends_on": ["make"],
         "commands": [f"cat {DEEP}f"]}]}))
    with worker_pool(grid, names=("wdeep",)) as (worker,):
        try:
            run = kata("run", "--remote-executor", bg.url)
            assert run.returncode == 0, run.stdout + run.stderr + worker.text()
            assert "use | bottom" in run.stdout.splitlines()
            assert worker_of(kata, "make") == worker_of(kata, "use") == "wdeep"
            assert "crashed" not in worker.text(), worker.text()
            assert _leases_left(worker) == []
        finally:  # what a failure left must not stop the worker's own clean-up
            for lease in (worker.state / "worker").glob("lease-*"):
                remove_tree(str(lease))
    for child in kata.repo.parent.iterdir():
        remove_tree(str(child))


# -- a hostile REAPI client: Actions sent straight to the scheduler, not by kata run --------
# Anyone who reaches the scheduler can send an Action, and a `kata worker` runs what it is
# leased: each Action below is one kata's client never writes. The worker must refuse it
# with a clear status (INVALID_ARGUMENT, which BuildGrid does not retry), run nothing, touch
# nothing of its host, and leave no container, mount, process or input root behind.

INVALID_ARGUMENT, FAILED_PRECONDITION = 3, 9


def _pinned(grid) -> str:  # noqa: ANN001
    """The grid's image as NAME@sha256:… (what a kata action names)."""
    return f"{grid[1].rsplit(':', 1)[0]}@{busybox_image().digest}"


def _clean(worker) -> None:  # noqa: ANN001
    """The worker is alive, crashed on nothing, and left no input root, no mount under
    its state directory (a step's root filesystem, its workspace's bind) and no process
    but its containerd."""
    assert worker.proc.poll() is None, worker.text()
    text = worker.text()
    assert "crashed" not in text and "Traceback" not in text, text
    assert _leases_left(worker) == [], worker.text()
    deadline = time.monotonic() + 15
    while True:
        with open("/proc/self/mountinfo") as f:
            mounts = [line for line in f if str(worker.state) in line.split()[4]]
        children = Path(f"/proc/{worker.proc.pid}/task/{worker.proc.pid}/children")
        kids = [Path(f"/proc/{p}/comm").read_text().strip()
                for p in children.read_text().split() if Path(f"/proc/{p}").exists()]
        if (not mounts and set(kids) <= {"containerd"}) or time.monotonic() > deadline:
            break
        time.sleep(0.2)
    assert mounts == [], mounts
    assert set(kids) <= {"containerd"}, kids


@pytest.fixture(scope="module")
def client(grid):  # noqa: F811
    c = HostileClient(grid[0].url)
    yield c
    c.close()


def test_network_host_runs_only_on_a_worker_whose_host_config_allows_it(grid, client, tmp_path):  # noqa: F811
    draft = client.kata_action(_pinned(grid), "cat /proc/net/dev | grep -c : ; echo ran")
    draft.spec["network"] = "host"
    draft.platform = props(ISA=act.ISA, OSFamily=act.OS_FAMILY,
                           container_image=f"docker://{_pinned(grid)}", network="host")
    config = tmp_path / "worker.yaml"
    config.write_text("worker:\n  allow_host_network: true\n"
                      "  allow_private_registries: true\n")
    bg, _image = grid
    allowing = Worker("whost", bg.url, bg.logstream, env={"KATA_CONFIG": str(config)})
    try:
        allowing.wait_ready()
        assert "network: host allowed" in allowing.text()
        outcome = client.execute(draft)
        assert outcome.code == 0, (outcome, allowing.text())
        assert outcome.result.exit_code == 0
        assert b"ran" in client.read(outcome.result.stdout_digest)
        _clean(allowing)
    finally:
        allowing.close()


def _registry(grid) -> str:  # noqa: ANN001
    return grid[1].split("/", 1)[0]


@pytest.fixture(scope="module")
def refusing(grid, tmp_path_factory):  # noqa: F811
    """One worker with the default worker: section (nothing allowed beyond the sandbox),
    which declares the tests' registry (on 127.0.0.1) as the one private registry it may
    pull from."""
    config = tmp_path_factory.mktemp("refusing") / "kata-config.yaml"
    config.write_text(f'registries:\n  "{_registry(grid)}": {{}}\n')
    with worker_pool(grid, names=("wrefuse",), env={"KATA_CONFIG": str(config)}) as (worker,):
        assert "network: host refused" in worker.text()
        assert "image pulls from public or declared registries only" in worker.text()
        yield worker


def test_the_hostile_clients_honest_action_runs(grid, client, refusing):  # noqa: F811
    outcome = client.execute(client.kata_action(_pinned(grid), "cat in.txt; echo hi"))
    assert outcome.code == 0, (outcome, refusing.text())
    assert outcome.result.exit_code == 0
    assert client.read(outcome.result.stdout_digest) == b"input\nhi\n"
    _clean(refusing)


def test_network_host_is_refused_by_a_worker_by_default(grid, client, refusing):  # noqa: F811
    draft = client.kata_action(_pinned(grid), "echo ran")
    draft.spec["network"] = "host"
    draft.platform = props(ISA=act.ISA, OSFamily=act.OS_FAMILY,
                           container_image=f"docker://{_pinned(grid)}", network="host")
    outcome = client.execute(draft)
    assert outcome.code == INVALID_ARGUMENT, outcome
    assert "worker.allow_host_network" in outcome.message, outcome
    # with several workers, the client's user must know whose host config to change
    assert outcome.message.startswith("worker wrefuse: refused: network: host"), outcome
    assert outcome.result is None or not outcome.result.stdout_digest.size_bytes
    _clean(refusing)


def test_a_workspace_that_is_a_link_to_a_host_directory_is_refused(grid, client, refusing,
                                                                  tmp_path):  # noqa: F811
    """`ws` as a symlink: the worker chmodded and bind-mounted whatever it named (here a
    host directory; `/` works as well) into the step's container, read-write."""
    canary = tmp_path / "host-dir"
    canary.mkdir(mode=0o700)
    canary.chmod(0o700)
    (canary / "secret").write_text("host only\n")
    draft = client.kata_action(_pinned(grid), "cat secret; echo pwned > pwned")
    draft.root = {act.WORKSPACE_DIR: ("link", str(canary))}
    outcome = client.execute(draft)
    assert outcome.code == INVALID_ARGUMENT, outcome
    assert "exactly the directory ws/" in outcome.message, outcome
    assert not (canary / "pwned").exists()
    assert canary.stat().st_mode & 0o777 == 0o700
    _clean(refusing)


def _directory_bomb(draft, levels: int) -> None:  # noqa: ANN001
    """``ws`` as a Directory that names the one below it twice, ``levels`` deep: 2^levels
    paths from ``levels`` small messages."""
    below = re_pb2.Directory()
    below.files.add(name="f", digest=digest_of(b"x"))
    draft.extra_blobs[digest_of(b"x").hash] = b"x"
    for _ in range(levels):
        data = message_bytes(below)
        d = digest_of(data)
        draft.extra_blobs[d.hash] = data
        below = re_pb2.Directory()
        below.directories.add(name="a", digest=d)
        below.directories.add(name="b", digest=d)
    data = message_bytes(below)
    draft.extra_blobs[digest_of(data).hash] = data
    draft.root = {act.WORKSPACE_DIR: ("dir", digest_of(data))}


def _raw_ws(draft, *, files=(), links=()) -> None:  # noqa: ANN001
    """``ws`` as a Directory message written as given (a dict cannot hold two names)."""
    ws = re_pb2.Directory()
    for name, data in files:
        ws.files.add(name=name, digest=digest_of(data))
        draft.extra_blobs[digest_of(data).hash] = data
    for name, target in links:
        ws.symlinks.add(name=name, target=target)
    data = message_bytes(ws)
    draft.extra_blobs[digest_of(data).hash] = data
    draft.root = {act.WORKSPACE_DIR: ("dir", digest_of(data))}


def _deep_path(draft, levels: int, name: str) -> None:  # noqa: ANN001
    below = re_pb2.Directory()
    for _ in range(levels):
        data = message_bytes(below)
        d = digest_of(data)
        draft.extra_blobs[d.hash] = data
        below = re_pb2.Directory()
        below.directories.add(name=name, digest=d)
    data = message_bytes(below)
    draft.extra_blobs[digest_of(data).hash] = data
    draft.root = {act.WORKSPACE_DIR: ("dir", digest_of(data))}


def _platform(**changes: str):  # noqa: ANN202
    def change(draft, image):  # noqa: ANN001
        base = dict(ISA=act.ISA, OSFamily=act.OS_FAMILY, container_image=f"docker://{image}",
                    network="none")
        base.update(changes)
        draft.platform = props(**dict(sorted(base.items(), key=lambda kv: kv[0].replace("_", "-"))))
    return change


def _spec(**changes):  # noqa: ANN001, ANN202
    def change(draft, image):  # noqa: ANN001
        draft.spec.update(changes)
    return change


def _ws(tree):  # noqa: ANN001, ANN202
    def change(draft, image):  # noqa: ANN001
        draft.root = {act.WORKSPACE_DIR: tree}
    return change


def _set(**fields):  # noqa: ANN001, ANN202
    def change(draft, image):  # noqa: ANN001
        for k, v in fields.items():
            setattr(draft, k, v)
    return change


def _both(*changes):  # noqa: ANN001, ANN202
    def change(draft, image):  # noqa: ANN001
        for c in changes:
            c(draft, image)
    return change


def _image_everywhere(ref: str):  # noqa: ANN202
    def change(draft, image):  # noqa: ANN001
        draft.spec["image"] = ref
        _platform(container_image=f"docker://{ref}")(draft, image)
    return change


HOSTILE = {
    # platform properties
    "image-local-path": (_image_everywhere("/var/lib/kata/evil.tar"), "pinned by digest"),
    "image-by-tag": (lambda d, i: _image_everywhere(i.split("@")[0] + ":1")(d, i),
                     "pinned by digest"),
    "image-not-the-specs": (_platform(container_image="docker://x.io/y@sha256:" + "a" * 64),
                            "is not the platform's container-image"),
    "memory-negative": (_both(_platform(memory="-1"), _spec(resources={"memory": -1})),
                        "memory '-1'"),
    "memory-huge": (_both(_platform(memory="9" * 30), _spec(resources={"memory": int("9" * 30)})),
                    "memory"),
    "cpus-nan": (_both(_platform(cpus="nan"), _spec(resources={"cpus": float("nan")})), "cpus"),
    "pids-zero": (_both(_platform(pids="0"), _spec(resources={"pids": 0})), "pids '0'"),
    "memory-only-in-the-spec": (_spec(resources={"memory": 1 << 30}), "not the platform's"),
    "unknown-property": (_set(command_platform=props(
        ISA=act.ISA, OSFamily=act.OS_FAMILY, container_image="docker://IMAGE", network="none",
        privileged="true")), "'privileged' is not one this worker can satisfy"),
    "duplicate-network": (lambda d, i: setattr(d, "platform", [
        *d.platform[:-1], ("network", "host"), ("network", "none")]), "given twice"),
    "spec-network-host-platform-none": (_spec(network="host"), "is not the platform's 'none'"),
    "no-platform": (_set(platform=[], command_platform=[]), "names no platform"),
    # the input root
    "name-dotdot": (_ws({"..": b"x"}), "not one path component"),
    "name-slash": (_ws({"a/b": b"x"}), "not one path component"),
    "name-nul": (_ws({"a\0b": b"x"}), "not one path component"),
    "name-empty": (_ws({"": b"x"}), "not one path component"),
    "name-duplicate": (lambda d, i: _raw_ws(d, files=[("x", b"1")], links=[("x", "/")]),
                       "not unique"),
    "unsorted": (_ws({"b": b"1", "a": b"2"}), "not sorted"),
    "root-extra-entry": (lambda d, i: d.root.update({"etc": {"passwd": b"x"}}),
                         "exactly the directory ws/"),
    "root-ws-is-a-file": (_set(root={act.WORKSPACE_DIR: b"x"}), "exactly the directory ws/"),
    "spec-is-a-link": (lambda d, i: setattr(d, "root", {
        act.WORKSPACE_DIR: {}, act.SPEC_FILE: ("link", "/etc/passwd")}),
        "exactly the directory ws/"),
    "directory-bomb": (lambda d, i: _directory_bomb(d, 40), "more than 1,000,000 entries"),
    "path-too-long": (lambda d, i: _deep_path(d, 20, "n" * 250), "path limit"),
    "size-negative": (_ws({"f": ("file", re_pb2.Digest(hash=digest_of(b"abc").hash,
                                                       size_bytes=-1))}), "size of 0 or more"),
    "size-lies-huge": (_ws({"f": ("file", re_pb2.Digest(hash=digest_of(b"abc").hash,
                                                        size_bytes=1 << 61))}), "free"),
    "size-lies-small": (_both(_ws({"f": ("file", re_pb2.Digest(hash=digest_of(b"abc").hash,
                                                               size_bytes=5))}),
                              lambda d, i: d.extra_blobs.update({digest_of(b"abc").hash: b"abc"})),
                        "CAS: "),
    "hash-not-hex": (_ws({"f": ("file", re_pb2.Digest(hash="../../etc/passwd", size_bytes=3))}),
                     "not a SHA-256"),
    # the Command
    "working-directory-escapes": (_set(working_directory="../../etc"), "working_directory"),
    "output-path-escapes": (_set(output_paths=["ws", "../../etc"]), "output path '../../etc'"),
    "output-path-absolute": (_set(output_paths=["/etc/passwd"]), "output path '/etc/passwd'"),
    "env-name-with-equals": (_set(env=[("A=B", "c")]), "environment variable 'A=B'"),
    "env-value-nul": (_set(env=[("A", "b\0c")]), "NUL"),
    "env-duplicate": (_set(env=[("A", "1"), ("A", "2")]), "unique and sorted"),
    "argv-empty": (_set(argv=[]), "command line is empty"),
    # kata-spec.json
    "spec-not-json": (_set(spec_bytes=b"\xff not json"), "not an action kata made"),
    "spec-a-list": (_set(spec_bytes=b"[1]"), "not an action kata made"),
    "workdir-proc": (_spec(workdir="/proc"), "workdir '/proc'"),
    "workdir-root": (_spec(workdir="/"), "workdir '/'"),
    "workdir-relative": (_spec(workdir="../../"), "workdir"),
    "user-overflow": (_spec(user="9" * 20), "user"),
    "hostname-bad": (_spec(hostname="a b;rm -rf /"), "hostname"),
    "timeout-negative": (_spec(timeout=-5), "timeout -5"),
    "service-image-tag": (_spec(services=[{"name": "db", "image": "x/y:latest", "argv": [],
                                           "env": {}, "workdir": "/", "user": "",
                                           "ready": None}]), "service db's image"),
}


@pytest.mark.parametrize("case", sorted(HOSTILE))
def test_a_hostile_action_is_refused_with_a_clear_status(grid, client, refusing, case):  # noqa: F811
    change, says = HOSTILE[case]
    draft = client.kata_action(_pinned(grid), "echo ran > ran; echo ran")
    change(draft, _pinned(grid))
    if draft.command_platform is not None:
        draft.command_platform = [(k, v.replace("IMAGE", _pinned(grid)))
                                  for k, v in draft.command_platform]
    outcome = client.execute(draft)
    assert outcome.code != 0, (case, outcome, refusing.text()[-3000:])
    assert outcome.result is None or not outcome.result.stdout_digest.size_bytes, outcome
    if says is not None:
        assert says in outcome.message, (case, outcome)
    if "scheduler:" not in outcome.message:  # a worker refused it, not BuildGrid
        # INVALID_ARGUMENT, or FAILED_PRECONDITION (not enough disk; an input the CAS does
        # not hold as its digest says): never a code BuildGrid retries on another worker
        assert outcome.code == INVALID_ARGUMENT or (
            outcome.code == FAILED_PRECONDITION and case.startswith("size-lies")), outcome
    _clean(refusing)


def test_an_image_on_an_undeclared_private_address_is_never_contacted(grid, client,
                                                                      refusing):  # noqa: F811
    """An Action naming a registry on the worker's own network (here its loopback, where
    something listens) makes the worker connect nowhere: its pulls are confined to public
    addresses and the registries its host config declares, as an untrusted run's are."""
    import socket

    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen(8)
    listener.settimeout(0.5)
    port = listener.getsockname()[1]
    try:
        image = f"127.0.0.1:{port}/internal/admin@sha256:{'e' * 64}"
        draft = client.kata_action(image, "echo ran")
        outcome = client.execute(draft)
        assert outcome.code == FAILED_PRECONDITION, outcome
        assert "not a public address" in outcome.message, outcome
        assert "worker.allow_private_registries" in outcome.message, outcome
        with pytest.raises(socket.timeout):
            listener.accept()  # nothing ever connected
    finally:
        listener.close()
    _clean(refusing)


def test_what_an_action_puts_in_the_environment_stays_in_its_container(grid, client,
                                                                      refusing):  # noqa: F811
    """PATH, LD_PRELOAD and friends reach the step's processes only: the worker's own
    (its containerd, crun, its Python) never see them, and its next lease runs."""
    draft = client.kata_action(_pinned(grid), "echo $LD_PRELOAD; echo $PATH")
    draft.env = [("LD_LIBRARY_PATH", "/nowhere"), ("LD_PRELOAD", "/nonexistent/evil.so"),
                 ("PATH", "/nowhere:/bin")]
    outcome = client.execute(draft)
    assert outcome.code == 0, outcome
    out = client.read(outcome.result.stdout_digest)
    assert b"/nonexistent/evil.so\n/nowhere:/bin\n" in out, out
    after = client.execute(client.kata_action(_pinned(grid), "echo next"))
    assert after.code == 0 and after.result.exit_code == 0, after
    _clean(refusing)


def test_links_to_host_files_travel_as_links_never_as_the_hosts_bytes(grid, client,
                                                                     refusing):  # noqa: F811
    """An input link to /etc/shadow resolves in the container; an output link to a host
    file comes back as a link: the worker never reads through either."""
    secret = Path("/etc/hostname").read_bytes() if Path("/etc/hostname").exists() else b""
    draft = client.kata_action(_pinned(grid), "cat shadow 2>&1 | head -c 0; "
                               "ln -s /etc/hostname out; ln -s ../../../../etc up; echo done")
    draft.root = {act.WORKSPACE_DIR: {"shadow": ("link", "/etc/shadow")}}
    outcome = client.execute(draft)
    assert outcome.code == 0 and outcome.result.exit_code == 0, outcome
    ws = next(d for d in outcome.result.output_directories if d.path == act.WORKSPACE_DIR)
    tree = re_pb2.Tree()
    tree.ParseFromString(client.read(ws.tree_digest))
    links = {s.name: s.target for s in tree.root.symlinks}
    assert links == {"out": "/etc/hostname", "shadow": "/etc/shadow",
                     "up": "../../../../etc"}, tree
    assert not tree.root.files and not tree.children, tree
    if secret:
        assert secret not in client.read(outcome.result.stdout_digest)
    _clean(refusing)
