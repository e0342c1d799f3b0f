"""Secrets end to end (issue 6): real kata processes, real containerd, a store of their own.

THE test: steps print 10 secrets (one a 64 KiB multi-line value) in 1-byte writes to
stdout and stderr, raw and encoded (base64 at all three alignments, URL-encoded, hex);
then the terminal output, `kata logs`, `--json`, every file of the store (zstd objects
decompressed), the LMDB index, the test containerd's root and state directories and /run
are searched for every value in every form (`kata.secrets.secret_forms`): zero hits.
"""

from __future__ import annotations

import json
import os
import random
import string
import subprocess
import sys
from pathlib import Path

import pytest
import yaml
import zstandard

from kata.secrets import Masker, secret_forms
from support.cli import KataProcess

pytestmark = pytest.mark.integration

ROOT = Path(__file__).resolve().parent.parent
IMAGE = "kata.local/busybox:latest"
ZSTD_MAGIC = b"\x28\xb5\x2f\xfd"

# prints the secret file $1 in every form, one byte per write(2), to stdout or stderr ($2)
PRINT_FORMS = r"""
show() {
  f=/run/kata/secrets/$1
  {
    echo "begin $1"
    cat "$f"; echo
    for a in 0 1 2; do { head -c $a /dev/zero; cat "$f"; } | base64 -w0; echo; done
    od -An -v -tx1 "$f" | tr -d ' \n'; echo
    od -An -v -tx1 "$f" | tr -s ' \n' '\n\n' | awk 'BEGIN { for (i = 0; i < 256; i++) h[sprintf("%02x", i)] = i }
      NF { b = h[$1]; if ((b >= 48 && b <= 57) || (b >= 65 && b <= 90) || (b >= 97 && b <= 122) || b == 45 || b == 46 || b == 95 || b == 126) printf "%c", b; else printf "%%%s", toupper($1) }'
    echo
    echo "end $1"
  } | dd bs=1 2>/dev/null
}
"""


def _token(rng: random.Random, n: int, alphabet: str = string.ascii_letters + string.digits) -> str:
    return "".join(rng.choice(alphabet) for _ in range(n))


def _values() -> dict[str, str]:
    rng = random.Random()  # fresh values every run: nothing can be there by accident
    big_lines = [_token(rng, 63, string.ascii_letters + string.digits + "+/=-_ !#") for _ in range(1040)]
    return {
        "S_BIG": "\n".join(big_lines)[: 64 * 1024],  # 64 KiB, multi-line, no trailing newline
        "S_PLAIN": _token(rng, 24),
        "S_URL": f"p@ss w/{_token(rng, 8)}+&=?%",
        "S_QUOTE": f"it's \"{_token(rng, 10)}\" $HOME `x`",
        "S_UNICODE": f"pässwörd-{_token(rng, 10)}-秘密",
        "S_CRLF": f"{_token(rng, 12)}\r\n{_token(rng, 12)}",
        "S_SHORTISH": _token(rng, 10),
        "S_SPACES": f"  {_token(rng, 12)}  ",
        "S_B64ISH": _token(rng, 30, string.ascii_letters + "+/"),
        "S_HEXISH": _token(rng, 32, "0123456789abcdef"),
    }


def _pipeline(names: list[str]) -> dict:
    half = len(names) // 2
    first, second = names[:half], names[half:]
    return {
        "pipeline": "secrets",
        "steps": [
            {"name": "leak-out", "image": IMAGE, "secrets": first,
             "commands": [PRINT_FORMS + "\n".join(f"show {n}" for n in first),
                          # delivered through the environment too, whole (64 KiB included)
                          *[f'[ "${n}" = "$(cat /run/kata/secrets/{n})" ]' for n in first],
                          'echo "$S_BIG" | dd bs=1 2>/dev/null',
                          # files 0400 on a tmpfs mounted read-only
                          '[ "$(stat -c %a /run/kata/secrets/S_PLAIN)" = 400 ]',
                          "grep -q ' /run/kata/secrets tmpfs ro' /proc/mounts",
                          '! touch /run/kata/secrets/new 2>/dev/null']},
            {"name": "leak-err", "image": IMAGE, "secrets": second,
             "commands": [PRINT_FORMS + "\n".join(f"show {n} >&2" for n in second),
                          # only what it declares
                          f'[ -z "${{{first[0]}:-}}" ] && ! test -e /run/kata/secrets/{first[0]}',
                          'printf "%s" "$S_PLAIN" >&2']},
        ],
    }


def _search_roots(tmp_path: Path, containerd_daemon) -> list[Path]:
    return [tmp_path / "store", containerd_daemon.root.parent, Path("/run")]


def _contents(path: Path) -> list[bytes]:
    """The file's bytes, and its decompressed content when it is zstd."""
    try:
        data = path.read_bytes()
    except OSError:
        return []
    out = [data]
    if data.startswith(ZSTD_MAGIC):
        with zstandard.ZstdDecompressor().stream_reader(data, read_across_frames=True) as r:
            out.append(r.read())
    return out


def _hits(masker: Masker, data: bytes) -> bool:
    # the masker replaces exactly the forms of the values: unchanged bytes hold none
    return masker.mask(data) != data


def test_ten_secrets_printed_byte_by_byte_leak_nowhere(tmp_path, containerd_daemon, runtime):
    values = _values()
    assert len(values["S_BIG"]) == 64 * 1024 and "\n" in values["S_BIG"]
    names = list(values)
    repo = tmp_path / "repo"
    repo.mkdir()
    (repo / ".kata-ci.yaml").write_text(yaml.safe_dump(_pipeline(names), sort_keys=False))
    secret_src = tmp_path / "src"
    secret_src.mkdir()
    (secret_src / "big").write_text(values["S_BIG"])
    env = {**os.environ, "KATA_STORE": str(tmp_path / "store"), "PYTHONPATH": str(ROOT)}
    args: list[str] = ["--secret-file", f"S_BIG={secret_src / 'big'}"]
    for i, name in enumerate(names[1:]):
        if i % 2:
            env[name] = values[name]  # from the environment
        else:
            args += ["--secret", f"{name}={values[name]}"]

    def kata(*a: str) -> subprocess.CompletedProcess:
        proc = subprocess.run([sys.executable, "-m", "kata", "--containerd",
                               containerd_daemon.address, *a], cwd=repo, env=env,
                              capture_output=True, timeout=600)
        assert b"Traceback" not in proc.stderr, proc.stderr.decode()
        return proc

    plain = kata("run", *args)
    assert plain.returncode == 0, (plain.stdout + plain.stderr).decode()
    out = plain.stdout.decode()
    for name in names:  # every form went through, masked
        assert f"begin {name}" in out and f"end {name}" in out
    assert out.count("***") >= 10 * 6
    json_run = kata("run", "--json", *args)  # secret steps are not cached: they run again
    assert json_run.returncode == 0, json_run.stderr.decode()
    events = [json.loads(line) for line in json_run.stdout.splitlines()]
    assert {e.get("step") for e in events if e["event"] == "run"} == {"leak-out", "leak-err"}
    logs = kata("logs")
    assert logs.returncode == 0 and b"begin S_BIG" in logs.stdout

    masker = Masker(values.values())
    assert all(secret_forms(v) <= masker.forms for v in values.values())
    for what, data in (("terminal", plain.stdout + plain.stderr),
                       ("--json", json_run.stdout + json_run.stderr),
                       ("kata logs", logs.stdout + logs.stderr)):
        assert not _hits(masker, data), what
    searched = 0
    for root in _search_roots(tmp_path, containerd_daemon):
        for dirpath, _, files in os.walk(root):
            for f in files:
                path = Path(dirpath) / f
                if not path.is_file() or path.is_symlink():
                    continue
                for data in _contents(path):
                    searched += 1
                    assert not _hits(masker, data), path
    assert searched > 20  # the store's objects, the index, containerd's metadata, /run


def _secret_pipeline(repo: Path, cache: object | None = None) -> None:
    step = {"name": "deploy", "image": IMAGE, "secrets": ["DEPLOY_TOKEN"],
            "commands": ['test -n "$DEPLOY_TOKEN"', "echo deployed"]}
    if cache is not None:
        step["cache"] = cache
    doc = {"pipeline": "sec2", "steps": [
        {"name": "build", "image": IMAGE, "commands": ["echo built"]},
        {**step, "depends_on": ["build"]}]}
    (repo / ".kata-ci.yaml").write_text(yaml.safe_dump(doc, sort_keys=False))


@pytest.fixture
def kata2(tmp_path, containerd_daemon, runtime):
    repo = tmp_path / "repo"
    repo.mkdir()
    return KataProcess(repo, store=tmp_path / "store", address=containerd_daemon.address,
                       drop=("DEPLOY_TOKEN",))


def test_missing_secret_fails_before_anything_runs_and_a_short_one_warns(kata2):
    _secret_pipeline(kata2.repo)
    missing = kata2("run")
    assert missing.returncode == 2
    assert "DEPLOY_TOKEN" in missing.stderr and "[RUN]" not in missing.stdout
    # a run of a step that needs no secret does not ask for one
    only_build = kata2("run", "--step", "build")
    assert only_build.returncode == 0, only_build.stderr
    assert "[RUN] build" in only_build.stdout
    # a value too short to mask runs, with a warning (the product page's DEPLOY_TOKEN=xxx)
    short = kata2("run", DEPLOY_TOKEN="xxx")
    assert short.returncode == 0, short.stdout + short.stderr
    assert "warning: secret DEPLOY_TOKEN is 3 character(s) long, too short to be masked " \
        "safely (at least 4); it will appear unmasked in output and logs" in short.stderr
    assert "[RUN] deploy" in short.stdout and "deploy | deployed" in short.stdout.splitlines()


def test_secret_steps_are_cached_only_with_cache_true(kata2):
    _secret_pipeline(kata2.repo)
    for _ in range(2):
        run = kata2("run", DEPLOY_TOKEN="s3cr3t-token")
        assert run.returncode == 0, run.stdout + run.stderr
        assert "[RUN] deploy" in run.stdout
        assert "[CACHE] deploy: MISS" in run.stdout
    plan = kata2("run", "--dry-run")  # a plan needs no secret value
    assert plan.returncode == 0, plan.stderr
    assert "[PLAN] deploy: MISS (declares secrets (cache: true caches it))" in plan.stdout
    _secret_pipeline(kata2.repo, cache=True)
    first = kata2("run", DEPLOY_TOKEN="s3cr3t-token")
    assert first.returncode == 0
    second = kata2("run", DEPLOY_TOKEN="s3cr3t-token")
    assert "[CACHE] deploy: HIT" in second.stdout and "[RUN] deploy" not in second.stdout


def test_a_value_written_literally_in_a_command_is_masked_in_its_echo_too(kata2):
    """Issue 12 (d), decided: everything a run prints or records passes through one masker,
    the `[RUN]` echo of a command included, even where the value is the config's own text
    (GitHub Actions and GitLab mask the echoed script the same way). The same in the plain
    lines, `--json` and the stored log; the config itself (`kata graph`, `kata why`)
    is shown as written, since those read no value."""
    value = "literal-s3cr3t-value"
    doc = {"pipeline": "lit", "steps": [
        {"name": "show", "image": IMAGE, "commands": [f"echo {value}"]},
        {"name": "deploy", "image": IMAGE, "secrets": ["DEPLOY_TOKEN"],
         "commands": ['echo "$DEPLOY_TOKEN"'], "depends_on": ["show"]}]}
    (kata2.repo / ".kata-ci.yaml").write_text(yaml.safe_dump(doc, sort_keys=False))
    plain = kata2("run", DEPLOY_TOKEN=value)
    assert plain.returncode == 0, plain.stdout + plain.stderr
    lines = plain.stdout.splitlines()
    assert "[RUN] show: echo ***" in lines and "show | ***" in lines
    assert "deploy | ***" in lines and value not in plain.stdout + plain.stderr
    as_json = kata2("run", "--json", "--no-cache", DEPLOY_TOKEN=value)
    assert as_json.returncode == 0 and value not in as_json.stdout
    events = [json.loads(x) for x in as_json.stdout.splitlines()]
    assert {"event": "run", "step": "show", "command": "echo ***"}.items() <= next(
        e for e in events if e["event"] == "run" and e["step"] == "show").items()
    logs = kata2("logs", "--step", "show")
    assert logs.returncode == 0 and "***" in logs.stdout and value not in logs.stdout
    graph = kata2("graph")  # the config as written: it holds no secret, kata read none
    assert graph.returncode == 0
