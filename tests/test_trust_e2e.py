"""Issue 10's attacks on a git-native CI server, end to end: a real bare repository with the
installed post-receive hook, real `git push`es from a clone, real containerd, and a host
config protecting main, release/* and v* tags. The server's environment holds DEPLOY_TOKEN
(the hook runs in the environment of the process receiving the push).

Each test tries one attack from a feature branch, asserts it fails, and asserts that the
legitimate run on main still passes: deploy gets its secret (it checks the value's sha256),
and its cache is its own.
"""

from __future__ import annotations

import hashlib
import os
import random
import string
import subprocess
import sys
from pathlib import Path

import pytest
import yaml
import zstandard

from kata.secrets import Masker
from support.git import git, git_env
from support.listeners import LoopbackListener

pytestmark = pytest.mark.integration

ROOT = Path(__file__).resolve().parent.parent
IMAGE = "kata.local/busybox:latest"
ZSTD_MAGIC = b"\x28\xb5\x2f\xfd"
HOST_CONFIG = """
protected:
  branches: ["main", "release/*"]
  tags: ["v*"]
"""


def _git_env() -> dict[str, str]:
    return {k: v for k, v in git_env().items() if not k.startswith("KATA_")}


def _deploy(token: str) -> dict:
    """main's deploy: proves it got the server's value without printing or storing it."""
    digest = hashlib.sha256(token.encode()).hexdigest()
    return {"name": "deploy", "image": IMAGE, "depends_on": ["build"],
            "only": {"branches": ["main"]}, "secrets": ["DEPLOY_TOKEN"],
            "commands": [f'[ "$(printf %s "$DEPLOY_TOKEN" | sha256sum | cut -d" " -f1)" = '
                         f'"{digest}" ]', "echo deployed with the right token"]}


BUILD = {"name": "build", "image": IMAGE, "commands": ["cat src/app.txt > out.txt"],
         "artifacts": ["out.txt"]}


class Server:
    """The bare repository (post-receive installed), a clone, the store, the token."""

    def __init__(self, tmp: Path, address: str, *, host_config: str = HOST_CONFIG,
                 default: str = "main") -> None:
        self.tmp = tmp
        self.token = "".join(random.Random().choice(string.ascii_letters + string.digits)
                             for _ in range(32))
        self.remote = tmp / "remote.git"
        self.work = tmp / "work"
        self.store = tmp / "store"
        config = tmp / "kata-config.yaml"
        config.write_text(host_config)
        git(tmp, "init", "-q", "--bare", "-b", default, str(self.remote))
        git(tmp, "clone", "-q", str(self.remote), str(self.work))
        git(self.work, "checkout", "-q", "-b", default)
        # the server's environment: the token, the host config, kata
        self.env = {**_git_env(), "PYTHONPATH": str(ROOT), "KATA_CONFIG": str(config),
                    "DEPLOY_TOKEN": self.token}
        self.base = [sys.executable, "-m", "kata", "--store", str(self.store), "--containerd",
                     address]
        installed = self.kata("hooks", "install", cwd=self.remote)
        assert installed.returncode == 0, installed.stderr

    def kata(self, *args: str, cwd: Path | None = None, **extra: str) -> subprocess.CompletedProcess:
        proc = subprocess.run([*self.base, *args], cwd=cwd or self.work,
                              env={**self.env, **extra}, capture_output=True, text=True,
                              timeout=300)
        assert "Traceback" not in proc.stderr, proc.stderr
        return proc

    def commit(self, files: dict[str, str], message: str, pipeline: dict | None = None) -> None:
        if pipeline is not None:
            files = {**files, ".kata-ci.yaml": yaml.safe_dump(pipeline, sort_keys=False)}
        for name, text in files.items():
            path = self.work / name
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_text(text)
        git(self.work, "add", "-A")
        git(self.work, "commit", "-q", "-m", message)

    def push(self, *args: str) -> str:
        """`git push`; what the pusher sees (the hook's output comes as `remote: ` lines)."""
        proc = subprocess.run(["git", "push", "-q", *args], cwd=self.work, env=self.env,
                              capture_output=True, text=True, timeout=600)
        out = proc.stdout + proc.stderr
        assert "Traceback" not in out, out
        assert proc.returncode == 0, out
        return out

    def checkout(self, branch: str, new: bool = True) -> None:
        git(self.work, "checkout", "-q", *(["-b"] if new else []), branch)

    def runs(self) -> list:
        from store import Store

        with Store.open(self.store) as s:
            return s.list_runs(limit=50)

    def last(self, branch: str) -> dict:
        """The steps (as dicts) of the newest run of ``branch``; asserts the run's scope:
        trusted runs record ``ref:``, untrusted ones their quarantine."""
        run = next(r for r in self.runs() if r.branch == branch)
        protected = branch in ("main", "trunk") or branch.startswith("release/")
        assert run.scope == ("ref:" if protected else "quarantine:") + f"refs/heads/{branch}"
        return {s.name: s.to_obj() for s in run.steps}

    def main_deploys(self, pipeline: dict, change: str) -> str:
        """The legitimate run: a commit on main, pushed; deploy passes with its secret."""
        self.checkout("main", new=False)
        self.commit({"src/app.txt": f"app {change}\n"}, f"main: {change}", pipeline)
        out = self.push("origin", "main")
        assert "deploy | deployed with the right token" in _remote(out), out
        steps = self.last("main")
        assert steps["deploy"]["status"] == "passed" and steps["build"]["status"] == "passed"
        return out


@pytest.fixture
def server(tmp_path, containerd_daemon, runtime) -> Server:
    return Server(tmp_path, containerd_daemon.address)


def _remote(out: str) -> list[str]:
    """The hook's lines as the pusher sees them, without git's `remote: ` prefix."""
    return [line.removeprefix("remote: ").rstrip() for line in out.splitlines()
            if line.startswith("remote: ")]


def _forms(token: str) -> Masker:
    """Every form of the token to look for: raw, reversed, letter-spaced, both, and the
    masker's own encodings of each (base64 at three alignments, hex, URL)."""
    rev = token[::-1]
    return Masker([token, rev, " ".join(token), " ".join(rev)])


def _leaks(forms: Masker, roots: list[Path]) -> list[str]:
    """Files under ``roots`` holding any form (zstd objects decompressed); asserts it
    searched something."""
    found, searched = [], 0
    for root in roots:
        for dirpath, _, files in os.walk(root):
            for name in files:
                path = Path(dirpath) / name
                if path.is_symlink() or not path.is_file():
                    continue
                try:
                    data = path.read_bytes()
                except OSError:
                    continue
                blobs = [data]
                if data.startswith(ZSTD_MAGIC):
                    with zstandard.ZstdDecompressor().stream_reader(
                            data, read_across_frames=True) as r:
                        blobs.append(r.read())
                searched += 1
                if any(forms.mask(b) != b for b in blobs):
                    found.append(str(path))
    assert searched > 20, roots
    return found


def test_a_branch_cannot_read_the_servers_secret(server, containerd_daemon):
    """The branch declares DEPLOY_TOKEN itself (step and service), prints it reversed and
    letter-spaced, writes it to an artifact, and snoops the environment without declaring
    it: the value reaches nothing."""
    pipeline = {"pipeline": "server", "steps": [BUILD, _deploy(server.token)]}
    server.commit({"src/app.txt": "app v1\n"}, "initial", pipeline)
    first = server.push("origin", "main")
    assert "deploy | deployed with the right token" in _remote(first), first

    server.checkout("feature/steal")
    attack = {"pipeline": "server", "steps": [
        BUILD,
        {"name": "deploy", "image": IMAGE, "depends_on": ["build"],
         "secrets": ["DEPLOY_TOKEN"], "artifacts": ["leaked.txt"],
         "commands": ["printf %s \"$DEPLOY_TOKEN\" | rev | sed 's/./& /g'; echo",
                      "rev /run/kata/secrets/DEPLOY_TOKEN",
                      'echo "$DEPLOY_TOKEN" > leaked.txt']},
        {"name": "exfil", "image": IMAGE, "depends_on": ["deploy"],
         "commands": ["rev leaked.txt"]},
        {"name": "via-service", "image": IMAGE, "commands": ["sleep 1"],
         "services": [{"name": "vault", "image": IMAGE, "secrets": ["DEPLOY_TOKEN"],
                       "commands": ["rev /run/kata/secrets/DEPLOY_TOKEN | sed 's/./& /g'",
                                    "sleep 30"]}]},
        {"name": "snoop", "image": IMAGE, "artifacts": ["env.txt"],
         "commands": ['echo "token=[${DEPLOY_TOKEN:-}]"',
                      "env | rev > env.txt; cat env.txt",
                      "ls /run/kata/secrets 2>&1 || echo no secrets dir"]},
    ]}
    server.commit({"src/app.txt": "app attack\n"}, "steal the token", attack)
    out = server.push("origin", "feature/steal")
    lines = _remote(out)
    ref = "refs/heads/feature/steal"
    assert f"[SKIP] deploy (secret DEPLOY_TOKEN withheld: untrusted run of {ref})" in lines, out
    assert "[SKIP] exfil (dependency deploy skipped)" in lines, out
    assert (f"[SKIP] via-service (secret DEPLOY_TOKEN (service vault) withheld: untrusted "
            f"run of {ref})") in lines, out
    assert "snoop | token=[]" in lines and "snoop | no secrets dir" in lines, out
    steps = server.last("feature/steal")
    assert {n: s["status"] for n, s in steps.items()} == {
        "build": "passed", "deploy": "skipped", "exfil": "skipped", "via-service": "skipped",
        "snoop": "passed"}
    forms = _forms(server.token)
    assert forms.mask(out.encode()) == out.encode(), "the pusher saw the token"

    legit = server.main_deploys(pipeline, "v2")
    assert forms.mask(legit.encode()) == legit.encode()
    assert _leaks(forms, [server.store, containerd_daemon.root.parent]) == []


def test_a_branch_cannot_poison_mains_cache(server):
    """The branch writes a script into the cached directory main restores and runs."""
    def pipeline(tool_cmds: list[str]) -> dict:
        return {"pipeline": "server", "steps": [
            BUILD, _deploy(server.token),
            {"name": "tools", "image": IMAGE,
             "cache": {"paths": [".tools"], "key_files": ["tools.lock"]},
             "commands": tool_cmds}]}

    legit = pipeline(['if [ -f .tools/run.sh ]; then echo "restored: $(sh .tools/run.sh)"; '
                      'else mkdir -p .tools; echo "echo legit-tool" > .tools/run.sh; '
                      'echo "fresh: $(sh .tools/run.sh)"; fi'])
    server.commit({"src/app.txt": "app v1\n", "tools.lock": "tool 1.0\n"}, "initial",
                  {"pipeline": "server", "steps": [BUILD, _deploy(server.token)]})
    server.push("origin", "main")  # main has never run `tools`: its cache is empty

    server.checkout("feature/poison")
    poison = pipeline(["mkdir -p .tools", "echo 'echo PWNED' > .tools/run.sh",
                       "echo planted"])
    server.commit({"src/app.txt": "app poison\n"}, "plant a tool", poison)
    planted = _remote(server.push("origin", "feature/poison"))
    assert "tools | planted" in planted
    assert server.last("feature/poison")["tools"]["status"] == "passed"

    first = _remote(server.main_deploys(legit, "v2"))
    assert "tools | fresh: legit-tool" in first, "\n".join(first)  # not the branch's script
    assert not any("PWNED" in line for line in first)
    second = _remote(server.main_deploys(legit, "v3"))
    assert "tools | restored: legit-tool" in second, "\n".join(second)  # its cache is its own

    # the branch reads its own quarantine first, and never wrote main's
    server.checkout("feature/poison", new=False)
    check = pipeline(['echo "branch sees: $(sh .tools/run.sh)"'])
    server.commit({"src/app.txt": "app poison 2\n"}, "look", check)
    again = _remote(server.push("origin", "feature/poison"))
    assert "tools | branch sees: PWNED" in again, "\n".join(again)
    third = _remote(server.main_deploys(legit, "v4"))
    assert "tools | restored: legit-tool" in third, "\n".join(third)


HOST_MARKER = "host-loopback-only-service"


@pytest.fixture
def host_service():
    service = LoopbackListener(reply=lambda n: HOST_MARKER.encode() + b"\n")
    yield service
    service.close()


def test_a_branch_cannot_use_the_host_network(server, host_service):
    """`network: host` on a branch is refused; the default network cannot reach the host's
    loopback either (the bridge's gateway address is not 127.0.0.1)."""
    port = host_service.port

    def probe(network: str, only: list[str] | None = None) -> dict:
        step = {"name": f"probe-{network}", "image": IMAGE, "network": network,
                "commands": [f"nc -w 3 {'127.0.0.1' if network == 'host' else '10.89.0.1'} "
                             f"{port} </dev/null || echo unreachable"]}
        if only:
            step["only"] = {"branches": only}
        return step

    legit = {"pipeline": "server", "steps": [BUILD, _deploy(server.token),
                                             probe("host", ["main"])]}
    server.commit({"src/app.txt": "app v1\n"}, "initial", legit)
    main = _remote(server.push("origin", "main"))
    assert f"probe-host | {HOST_MARKER}" in main, main  # trusted: as declared
    assert host_service.count == 1

    server.checkout("feature/net")
    attack = {"pipeline": "server", "settings": {"fail_fast": False},
              "steps": [BUILD, probe("host"), probe("default")]}
    server.commit({"src/app.txt": "app net\n"}, "reach the host", attack)
    out = server.push("origin", "feature/net")
    lines = _remote(out)
    ref = "refs/heads/feature/net"
    assert any(line.startswith("[FAIL] probe-host (step probe-host: network: host refused: "
                               f"untrusted run of {ref}") for line in lines), out
    assert "probe-default | unreachable" in lines, out
    assert HOST_MARKER not in out
    assert host_service.count == 1  # nothing from the branch arrived
    steps = server.last("feature/net")
    assert steps["probe-host"]["status"] == "failed"
    assert steps["probe-host"]["exit_status"] is None  # refused: no container ran
    assert "kata: failed: the pipeline failed for feature/net (exit 1)" in lines

    again = _remote(server.main_deploys(legit, "v2"))
    assert f"probe-host | {HOST_MARKER}" in again
    assert host_service.count == 2


def test_pull_requests_and_untrusted_runs_get_no_secrets(server):
    """`kata run --event pull_request` and `kata run --untrusted` in a working copy, with the
    token in the environment: no secret; a plain local run and pre-push stay trusted."""
    unguarded = {k: v for k, v in _deploy(server.token).items() if k != "only"}
    pipeline = {"pipeline": "server", "steps": [BUILD, unguarded]}
    server.commit({"src/app.txt": "app v1\n"}, "initial", pipeline)
    server.checkout("feature/pr")
    server.commit({"src/app.txt": "app pr\n"}, "a contribution")
    ref = "refs/heads/feature/pr"
    for args in (("--event", "pull_request"), ("--untrusted",),
                 ("--event", "pull_request", "--branch", "main"),
                 ("--untrusted", "--secret", f"DEPLOY_TOKEN={server.token}")):
        run = server.kata("run", *args)
        assert run.returncode == 0, run.stdout + run.stderr
        target = "refs/heads/main" if "main" in args else ref
        assert (f"[SKIP] deploy (secret DEPLOY_TOKEN withheld: untrusted run of {target})"
                in run.stdout.splitlines()), (args, run.stdout)
        assert server.token not in run.stdout + run.stderr
    # without a value anywhere an untrusted run still runs (nothing asks for one)
    bare = server.kata("run", "--untrusted", DEPLOY_TOKEN="")
    assert bare.returncode == 0 and "[SKIP] deploy (secret DEPLOY_TOKEN withheld" in bare.stdout
    # the developer's own runs: trusted
    local = server.kata("run")
    assert local.returncode == 0, local.stdout + local.stderr
    assert "deploy | deployed with the right token" in local.stdout
    assert server.kata("hooks", "install").returncode == 0  # pre-push in the clone
    out = server.push("origin", "feature/pr")
    mine = [line for line in out.splitlines() if not line.startswith("remote: ")]
    assert "deploy | deployed with the right token" in mine, out  # pre-push: trusted
    assert (f"[SKIP] deploy (secret DEPLOY_TOKEN withheld: untrusted run of {ref})"
            in _remote(out)), out  # the server's post-receive: not a protected ref


def test_an_untrusted_run_writes_only_its_quarantine(server):
    """An untrusted run's realisations and cache directories stay in its quarantine: the
    trusted run that follows hits nothing it wrote; the untrusted run reads what trusted
    runs wrote."""
    pipeline = {"pipeline": "server", "steps": [
        {"name": "compute", "image": IMAGE, "commands": ["echo computed"]},
        {"name": "tools", "image": IMAGE, "cache": {"paths": [".tools"]},
         "commands": ['if [ -f .tools/t ]; then echo "restored $(cat .tools/t)"; '
                      "else mkdir -p .tools; cat /proc/sys/kernel/random/uuid > .tools/t; "
                      'echo "fresh"; fi']}]}
    server.commit({"src/app.txt": "app v1\n"}, "initial", pipeline)
    server.checkout("feature/q")
    untrusted = server.kata("run", "--untrusted")
    assert untrusted.returncode == 0, untrusted.stdout + untrusted.stderr
    assert "tools | fresh" in untrusted.stdout
    trusted = server.kata("run")
    assert trusted.returncode == 0, trusted.stdout + trusted.stderr
    assert "compute | computed" in trusted.stdout  # ran: not a hit on the quarantine
    assert "tools | fresh" in trusted.stdout  # not the untrusted run's cache
    again = server.kata("run", "--untrusted")
    assert "[CACHE] compute: HIT" in again.stdout  # reads what the trusted run wrote


def test_a_branch_cannot_hand_its_artifacts_to_mains_export(server, tmp_path):
    """main's deploy script runs `kata export --out DIR` after main's push; a branch pushed
    in between made the last run its own. The script gets main's artifact, never the
    branch's; the branch's run is exported only when named (--run ID)."""
    server.commit({"src/app.txt": "app main\n"}, "initial",
                  {"pipeline": "server", "steps": [BUILD]})
    server.push("origin", "main")
    server.checkout("feature/swap")
    server.commit({"src/app.txt": "app EVIL\n"}, "swap the artifact")
    server.push("origin", "feature/swap")
    evil = server.runs()[0]
    assert evil.branch == "feature/swap" and evil.scope.startswith("quarantine:")
    out = tmp_path / "deploy"
    proc = server.kata("export", "--out", str(out))
    assert proc.returncode == 0, proc.stderr
    assert (out / "build" / "out.txt").read_text() == "app main\n"
    assert evil.id not in proc.stderr
    named = tmp_path / "named"
    proc = server.kata("export", "--run", evil.id, "--out", str(named))
    assert proc.returncode == 0, proc.stderr
    assert (named / "build" / "out.txt").read_text() == "app EVIL\n"


def test_a_branch_cannot_make_the_server_read_host_files(server, tmp_path):
    """The server reads .kata-ci.yaml and .kataignore itself, as root, before any sandbox:
    links to host files are refused without quoting them."""
    host_file = tmp_path / "host-only.txt"
    host_file.write_text("host-only-line: do not show\n")
    pipeline = {"pipeline": "server", "steps": [BUILD, _deploy(server.token)]}
    server.commit({"src/app.txt": "app v1\n"}, "initial", pipeline)
    server.push("origin", "main")
    outputs = []
    for n, (name, target) in enumerate([(".kata-ci.yaml", "/etc/shadow"),
                                        (".kata-ci.yaml", str(host_file)),
                                        (".kataignore", str(host_file))]):
        server.checkout("main", new=False)
        server.checkout(f"feature/read-{n}")
        if name == ".kata-ci.yaml":
            (server.work / name).unlink()
        (server.work / name).symlink_to(target)
        git(server.work, "add", "-A")
        git(server.work, "commit", "-q", "-m", f"link {name} to {target}")
        out = server.push("origin", f"feature/read-{n}")
        lines = _remote(out)
        assert any(f"{name} is a symlink" in line for line in lines), out  # refused
        assert not any(line.startswith("[PARSE]") for line in lines), out  # nothing ran
        outputs.append(out)
    seen = "\n".join(outputs)
    assert "host-only-line" not in seen
    shadow = Path("/etc/shadow").read_text().splitlines()
    assert not any(line.split(":")[0] + ":" in seen and line in seen for line in shadow if line)
    server.main_deploys(pipeline, "v2")


def test_a_branch_cannot_restore_a_cache_written_with_a_secret(server):
    """main's deploy keeps a credentials file in a cached directory (as `docker login` or
    an .npmrc would); a branch's step of the same name, image and paths but declaring no
    secret must not restore it."""
    deploy = {**_deploy(server.token), "cache": {"paths": [".creds"]}}
    deploy["commands"] = deploy["commands"] + [
        'mkdir -p .creds; printf %s "$DEPLOY_TOKEN" > .creds/token']
    pipeline = {"pipeline": "server", "steps": [BUILD, deploy]}
    server.commit({"src/app.txt": "app v1\n"}, "initial", pipeline)
    first = server.push("origin", "main")
    assert "deploy | deployed with the right token" in _remote(first), first

    server.checkout("feature/creds")
    attack = {"pipeline": "server", "steps": [
        BUILD,
        {"name": "deploy", "image": IMAGE, "depends_on": ["build"],
         "cache": {"paths": [".creds"]},
         "commands": ["if [ -f .creds/token ]; then rev .creds/token | sed 's/./& /g'; echo; "
                      "else echo no credentials; fi"]}]}
    server.commit({"src/app.txt": "app creds\n"}, "read the cached credentials", attack)
    out = server.push("origin", "feature/creds")
    assert "deploy | no credentials" in _remote(out), out
    forms = _forms(server.token)
    assert forms.mask(out.encode()) == out.encode(), "the pusher saw the token"
    server.main_deploys(pipeline, "v2")


def _guarded_deploy(token: str, only: dict) -> dict:
    return {**_deploy(token), "only": only}


def test_protected_tags_and_release_branches_are_trusted(server):
    """The host config's patterns, through the real hook: release/* and v* tags get the
    secret; a tag or branch outside them does not."""
    pipeline = {"pipeline": "server", "steps": [
        BUILD, _guarded_deploy(server.token, {"branches": ["main", "release/*", "hotfix/*"],
                                              "tags": ["*"]})]}
    server.commit({"src/app.txt": "app v1\n"}, "initial", pipeline)
    server.push("origin", "main")
    trusted_line = "deploy | deployed with the right token"
    server.checkout("release/1.2")
    assert trusted_line in _remote(server.push("origin", "release/1.2"))
    git(server.work, "tag", "v1.2.0")
    assert trusted_line in _remote(server.push("origin", "v1.2.0"))
    git(server.work, "tag", "nightly")
    tag = _remote(server.push("origin", "nightly"))
    assert ("[SKIP] deploy (secret DEPLOY_TOKEN withheld: untrusted run of refs/tags/nightly)"
            in tag), tag
    server.checkout("hotfix/x")  # matched by the pipeline's only:, not by the host config
    hotfix = _remote(server.push("origin", "hotfix/x"))
    assert ("[SKIP] deploy (secret DEPLOY_TOKEN withheld: untrusted run of "
            "refs/heads/hotfix/x)") in hotfix, hotfix
    server.main_deploys(pipeline, "v2")


@pytest.fixture
def trunk_server(tmp_path, containerd_daemon, runtime) -> Server:
    return Server(tmp_path, containerd_daemon.address, host_config="offline: false\n",
                  default="trunk")


def test_without_protected_refs_only_the_bare_repositorys_head_is_trusted(trunk_server):
    """No protected: in the host config: the default branch is protected, and it is the
    bare repository's HEAD (trunk) as the hook reads it, never a guess: a pushed branch
    called master or main stays untrusted."""
    server = trunk_server
    pipeline = {"pipeline": "server", "steps": [
        BUILD, _guarded_deploy(server.token, {"branches": ["trunk", "main", "master"]})]}
    server.commit({"src/app.txt": "app v1\n"}, "initial", pipeline)
    first = _remote(server.push("origin", "trunk"))
    assert "deploy | deployed with the right token" in first, "\n".join(first)
    for name in ("master", "main"):
        server.checkout("trunk", new=False)
        server.checkout(name)
        out = _remote(server.push("origin", name))
        assert (f"[SKIP] deploy (secret DEPLOY_TOKEN withheld: untrusted run of "
                f"refs/heads/{name})") in out, "\n".join(out)
    server.checkout("trunk", new=False)
    server.commit({"src/app.txt": "app v2\n"}, "trunk: v2")
    again = _remote(server.push("origin", "trunk"))
    assert "deploy | deployed with the right token" in again, "\n".join(again)


def _merge_chain(depth: int) -> str:
    """A .kata-ci.yaml of ~depth lines whose step env merges an anchor that merges the
    one before it twice, and so on: 2^depth mappings to walk, depth + 1 distinct keys."""
    lines = ["pipeline: server", 'x-m0: &m0 {K0: "0"}']
    lines += [f'x-m{i}: &m{i} {{<<: [*m{i - 1}, *m{i - 1}], K{i}: "{i}"}}'
              for i in range(1, depth + 1)]
    lines += ["steps:", "  - name: build", f"    image: {IMAGE}", f"    env: {{<<: *m{depth}}}",
              "    commands: [\"echo keys=$(env | grep -c '^K[0-9]*=')\"]"]
    return "\n".join(lines) + "\n"


def test_a_branch_cannot_hold_the_server_with_a_merge_key_bomb(server):
    """The server loads a pushed .kata-ci.yaml as root before any sandbox or limit. Merge
    keys walked once per use made 45 lines of anchors 2^45 walks: the push, and the CPU of
    the kata it started, never came back. Each merged mapping is now walked once, and a
    file whose merges add up to more than MERGE_LIMIT keys is refused (exit 2,
    file:line:column)."""
    from kata.loader import MERGE_LIMIT

    server.commit({"src/app.txt": "app v1\n"}, "initial", {"pipeline": "server",
                                                           "steps": [BUILD]})
    server.push("origin", "main")
    server.checkout("feature/bomb")
    server.commit({".kata-ci.yaml": _merge_chain(45)}, "merge bomb")
    out = _remote(server.push("origin", "feature/bomb"))
    assert "build | keys=46" in out, "\n".join(out)  # K0..K45: the env is what YAML means

    wide = ["pipeline: server", "x-a: &a {" + ", ".join(f"A{i}: x" for i in range(1000)) + "}",
            "steps:", "  - name: build", f"    image: {IMAGE}",
            "    env: {<<: [" + ", ".join(["*a"] * (MERGE_LIMIT // 1000 + 1)) + "]}",
            "    commands: [true]"]
    server.commit({".kata-ci.yaml": "\n".join(wide) + "\n"}, "wide merge")
    runs = len(server.runs())
    out = _remote(server.push("origin", "feature/bomb"))
    assert any(".kata-ci.yaml:6:" in line and "merge more than" in line for line in out), \
        "\n".join(out)
    assert not any("[RUN]" in line for line in out), "\n".join(out)
    assert len(server.runs()) == runs  # refused before anything ran


def test_a_branch_cannot_restore_a_cache_written_below_a_secret(server):
    """main's `login` holds DEPLOY_TOKEN and hands `publish` a credentials file as an
    artifact (as an .npmrc or a docker config is handed on); publish keeps its home,
    credentials included, in a cached directory. A branch's `publish` of the same name,
    image and paths, depending on nothing, restored it: the cache directory's key named
    the step's own secrets only. It names the secrets below the step too (as the remote
    cache already did: such a step is never uploaded)."""
    login = {"name": "login", "image": IMAGE, "only": {"branches": ["main"]},
             "secrets": ["DEPLOY_TOKEN"], "artifacts": ["creds/token"],
             "commands": ['mkdir -p creds; printf %s "$DEPLOY_TOKEN" > creds/token']}
    publish = {"name": "publish", "image": IMAGE, "depends_on": ["login"],
               "cache": {"paths": [".home"]},
               "commands": ["mkdir -p .home; cp creds/token .home/token", "echo published"]}
    pipeline = {"pipeline": "server", "steps": [BUILD, login, publish]}
    server.commit({"src/app.txt": "app v1\n"}, "initial", pipeline)
    first = _remote(server.push("origin", "main"))
    assert "publish | published" in first, "\n".join(first)

    server.checkout("feature/home")
    attack = {"pipeline": "server", "steps": [
        BUILD,
        {"name": "publish", "image": IMAGE, "cache": {"paths": [".home"]},
         "commands": ["if [ -f .home/token ]; then rev .home/token | sed 's/./& /g'; echo; "
                      "else echo no credentials; fi"]}]}
    server.commit({"src/app.txt": "app home\n"}, "read the cached home", attack)
    out = server.push("origin", "feature/home")
    assert "publish | no credentials" in _remote(out), out
    forms = _forms(server.token)
    assert forms.mask(out.encode()) == out.encode(), "the pusher saw the token"


def test_a_branch_named_HEAD_at_a_release_commit_is_an_untrusted_branch(server):
    """git lets a pusher create refs/heads/HEAD, and push it at the commit of the protected
    tag v1.0. It must not run as v1.0 (a pusher re-running a release's deploy whenever they
    like): it is an unprotected branch, quarantined under its own ref (it was quarantined
    by its commit, as a detached checkout is: a branch "HEAD" was read as no branch)."""
    unguarded = {k: v for k, v in _deploy(server.token).items() if k != "only"}
    pipeline = {"pipeline": "server", "steps": [BUILD, unguarded]}
    server.commit({"src/app.txt": "app v1\n"}, "initial", pipeline)
    server.push("origin", "main")
    git(server.work, "tag", "v1.0")
    trusted_line = "deploy | deployed with the right token"
    assert trusted_line in _remote(server.push("origin", "v1.0"))
    server.commit({"src/app.txt": "app v2\n"}, "main moves on")
    server.push("origin", "main")

    release = git(server.work, "rev-parse", "v1.0^{commit}")
    out = _remote(server.push("origin", f"{release}:refs/heads/HEAD"))
    assert trusted_line not in out, "\n".join(out)
    assert ("[SKIP] deploy (secret DEPLOY_TOKEN withheld: untrusted run of "
            "refs/heads/HEAD)") in out, "\n".join(out)
    run = server.runs()[0]
    assert (run.branch, run.scope) == ("HEAD", "quarantine:refs/heads/HEAD")


def test_refs_named_like_protected_ones_run_untrusted(server):
    """Names a pusher can create that read like main or a release branch: a Cyrillic а, a
    zero-width space, another case, a tag `main`, a branch `refs/heads/main`, a level below
    `release/*`. Each runs untrusted under its own exact ref (patterns compare the name,
    case and all)."""
    unguarded = {k: v for k, v in _deploy(server.token).items() if k != "only"}
    pipeline = {"pipeline": "server", "steps": [BUILD, unguarded]}
    server.commit({"src/app.txt": "app v1\n"}, "initial", pipeline)
    assert "deploy | deployed with the right token" in _remote(server.push("origin", "main"))
    server.commit({"src/app.txt": "app look-alike\n"}, "a contribution")
    for ref in ("refs/heads/m\u0430in", "refs/heads/main\u200b", "refs/heads/Main",
                "refs/tags/main", "refs/heads/refs/heads/main", "refs/heads/release/1.2/x"):
        out = _remote(server.push("origin", f"HEAD:{ref}"))
        assert (f"[SKIP] deploy (secret DEPLOY_TOKEN withheld: untrusted run of {ref})"
                in out), (ref, out)
        assert not any("deployed with the right token" in line for line in out), (ref, out)
        assert server.runs()[0].scope == f"quarantine:{ref}", ref


def test_the_hook_builds_the_commit_it_was_told_of_when_the_branch_moved_on(server):
    """A force-push racing a run: the hook that was told `A -> x` builds A and records A,
    even when x already points at B by the time it reads the repository (the second push's
    own hook builds B)."""
    pipeline = {"pipeline": "server", "steps": [
        {"name": "show", "image": IMAGE, "cache": False, "commands": ["cat src/app.txt"]}]}
    server.commit({"src/app.txt": "app v1\n"}, "initial", pipeline)
    server.push("origin", "main")
    server.checkout("feature/race")
    server.commit({"src/app.txt": "announced\n"}, "A")
    first = git(server.work, "rev-parse", "HEAD")
    server.push("origin", "feature/race")
    git(server.work, "reset", "-q", "--hard", "main")
    server.commit({"src/app.txt": "force-pushed\n"}, "B")
    server.push("-f", "origin", "feature/race")
    assert git(server.remote, "rev-parse", "refs/heads/feature/race") != first
    proc = subprocess.run(
        [*server.base, "hooks", "run", "post-receive"], cwd=server.remote, env=server.env,
        input=f"{'0' * 40} {first} refs/heads/feature/race\n", capture_output=True, text=True,
        timeout=300)
    assert proc.returncode == 0 and "Traceback" not in proc.stderr, proc.stderr
    assert f"kata: push feature/race at {first[:12]}" in proc.stderr, proc.stderr
    assert "show | announced" in proc.stderr, proc.stderr
    assert "force-pushed" not in proc.stderr
    run = server.runs()[0]
    assert (run.branch, run.commit) == ("feature/race", first)


def test_a_kata_ci_yaml_that_is_a_submodule_runs_nothing(server):
    """`.kata-ci.yaml` committed as a gitlink (a submodule): the checkout holds an empty
    directory there, which the server refuses as no regular file (exit 2), running
    nothing."""
    server.commit({"src/app.txt": "app v1\n"}, "initial", {"pipeline": "server",
                                                           "steps": [BUILD]})
    server.push("origin", "main")
    server.checkout("feature/gitlink")
    git(server.work, "rm", "-q", "--cached", ".kata-ci.yaml")
    git(server.work, "update-index", "--add", "--cacheinfo",
        f"160000,{git(server.work, 'rev-parse', 'HEAD')},.kata-ci.yaml")
    git(server.work, "commit", "-q", "-m", "config as a submodule")
    runs = len(server.runs())
    out = _remote(server.push("origin", "feature/gitlink"))
    assert any(line.startswith("error: config file ") and line.endswith(
        "/.kata-ci.yaml' is a directory; the pipeline config must be a regular YAML file")
        for line in out), "\n".join(out)
    assert "kata: failed: the pipeline failed for feature/gitlink (exit 2)" in out
    assert not any("[RUN]" in line for line in out), "\n".join(out)
    assert len(server.runs()) == runs


def test_a_branch_cannot_run_the_servers_git_filter_drivers(server):
    """The server's git defines a filter driver (as `git lfs install --system` does). A
    branch whose .gitattributes routes every file through it made the hook's checkout run
    it, as root, on the pusher's files (git-lfs then fetches from the URL a pushed
    .lfsconfig names). An untrusted push is checked out with every driver turned off; a
    protected ref keeps them (a trusted build gets its LFS content)."""
    marker = server.tmp / "filter-ran"
    git(server.remote, "config", "filter.probe.smudge", f"echo smudge >> {marker}; cat")
    git(server.remote, "config", "filter.probe.clean", f"echo clean >> {marker}; cat")
    git(server.remote, "config", "filter.probe.required", "true")
    pipeline = {"pipeline": "server", "steps": [
        {"name": "show", "image": IMAGE, "commands": ["cat data.txt"]}]}
    server.commit({"data.txt": "data\n"}, "initial", pipeline)
    server.push("origin", "main")
    assert not marker.exists()  # main routes nothing through it
    server.checkout("feature/attr")
    server.commit({".gitattributes": "* filter=probe\n"}, "every file through the filter")
    out = _remote(server.push("origin", "feature/attr"))
    assert "show | data" in out, "\n".join(out)
    assert not marker.exists(), marker.read_text()
    out = _remote(server.push("origin", "feature/attr:main"))  # a maintainer merges it
    assert "show | data" in out, "\n".join(out)
    assert "smudge" in marker.read_text()


def test_a_branch_pushed_to_a_server_with_a_remote_cache_uploads_nothing(
        tmp_path, containerd_daemon, runtime):
    """The host config names a remote cache (a real BuildGrid). main's push uploads its
    results; a branch's push uploads none: another machine building the branch's commit,
    trusted, misses, while it hits main's."""
    import json

    from support.buildgrid import BuildGridConfig, buildgrid

    with buildgrid(tmp_path / "bgd", BuildGridConfig(instance="main")) as bg:
        (tmp_path / "s").mkdir()
        server = Server(tmp_path / "s", containerd_daemon.address, host_config=HOST_CONFIG
                        + f"remote:\n  cache: {bg.url}\n  instance: main\n")
        server.commit({"src/app.txt": "app v1\n"}, "initial",
                      {"pipeline": "server", "steps": [BUILD]})
        server.push("origin", "main")
        server.checkout("feature/plant")
        server.commit({"src/app.txt": "app PLANTED\n"}, "plant a result")
        assert "[PASS] build" in "\n".join(_remote(server.push("origin", "feature/plant")))

        def elsewhere(ref: str) -> bool:
            """Whether a trusted run of ``ref`` on another machine hits build remotely."""
            git(server.work, "checkout", "-q", ref)
            proc = subprocess.run(
                [sys.executable, "-m", "kata", "--store", str(tmp_path / f"other-{ref}"),
                 "--containerd", containerd_daemon.address, "run", "--json",
                 "--remote-cache", bg.url, "--remote-instance", "main"],
                cwd=server.work, env={**server.env, "KATA_CONFIG": str(tmp_path / "none.yaml")},
                capture_output=True, text=True, timeout=300)
            assert proc.returncode == 0, proc.stdout + proc.stderr
            events = [json.loads(line) for line in proc.stdout.splitlines()
                      if line.startswith("{")]
            (cache,) = [e for e in events if e["event"] == "cache" and e["step"] == "build"]
            return bool(cache["hit"])

        (tmp_path / "none.yaml").write_text("offline: false\n")
        assert elsewhere("main")  # the remote works: main's result is there
        assert not elsewhere("feature/plant")


def test_a_branch_cannot_hold_the_server_with_a_backtracking_branch_pattern(server):
    """The pushed pipeline's `only: branches` pattern and the branch's name are both the
    pusher's, and the server matches them as root before any step: `*a` twelve times
    against a 200-character name of `a`s was a regex that backtracked for good."""
    server.commit({"src/app.txt": "app v1\n"}, "initial", {"pipeline": "server",
                                                           "steps": [BUILD]})
    server.push("origin", "main")
    name = "a" * 200
    server.checkout(name)
    build = {**BUILD, "only": {"branches": ["*a" * 12 + "*b"]}}
    server.commit({"src/app.txt": "app pattern\n"}, "a pattern that backtracks",
                  {"pipeline": "server", "steps": [build]})
    out = _remote(server.push("origin", name))
    assert any(line.startswith(f"[SKIP] build (only: branch '{name}' does not match")
               for line in out), "\n".join(out)
