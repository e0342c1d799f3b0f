"""`kata store ...` and `kata cache ...` as a user runs them."""

from __future__ import annotations

import os
import re
import subprocess
import sys
import time
from pathlib import Path

import pytest

from kata.cli.store_cmds import human_size, parse_size, store_location
from kata.errors import KataError
from store import Realisation, Store

from .conftest import REPO


def kata(*args: str, store: Path | None = None, env: dict | None = None) -> subprocess.CompletedProcess:
    full_env = {**os.environ, "PYTHONPATH": str(REPO), **(env or {})}
    if not env or "KATA_STORE" not in env:
        full_env.pop("KATA_STORE", None)
    argv = [sys.executable, "-m", "kata"] + (["--store", str(store)] if store else []) + list(args)
    return subprocess.run(argv, cwd=REPO, capture_output=True, text=True, env=full_env, timeout=60)


def _fill(root: Path) -> str:
    with Store.open(root) as s:
        digests = []
        for i in range(3):
            d = s.put_blob(os.urandom(1000 * (i + 1)))
            digests.append(d)
            s.put_realisation(f"{i}" * 64, Realisation(outputs=d, created=time.time(),
                                                       step=f"step{i}"))
        for hit in [True] * 17 + [False] * 3:
            s.count(hit)
        return digests[0]


def test_cache_stats_in_the_overviews_format(tmp_path: Path) -> None:
    root = tmp_path / "store"
    _fill(root)
    res = kata("cache", "stats", store=root)
    assert res.returncode == 0, res.stderr
    assert re.fullmatch(r"Entries: 3 \| Size: \d+(\.\d)?[KM]?B \| Hit rate: 85%\n", res.stdout)


def test_cache_list_and_clear(tmp_path: Path) -> None:
    root = tmp_path / "store"
    _fill(root)
    res = kata("cache", "list", store=root)
    assert res.returncode == 0 and len(res.stdout.splitlines()) == 3 and "step2" in res.stdout
    res = kata("cache", "clear", store=root)
    assert res.returncode == 0 and res.stdout.startswith("Cleared 3 entries")
    assert kata("cache", "stats", store=root).stdout == "Entries: 0 | Size: 0B | Hit rate: n/a\n"


def test_store_path_from_flag_env_and_default(tmp_path: Path, monkeypatch) -> None:
    assert kata("store", "path", store=tmp_path / "x").stdout.strip() == str(tmp_path / "x")
    res = kata("store", "path", env={"KATA_STORE": str(tmp_path / "y")})
    assert res.stdout.strip() == str(tmp_path / "y")
    monkeypatch.delenv("KATA_STORE", raising=False)
    assert store_location(None) == "/var/lib/kata/store"  # the suite runs as root
    monkeypatch.setattr(os, "geteuid", lambda: 1000)
    monkeypatch.setenv("XDG_DATA_HOME", str(tmp_path / "data"))
    assert store_location(None) == str(tmp_path / "data" / "kata" / "store")


def test_store_verify_reports_and_repairs(tmp_path: Path) -> None:
    root = tmp_path / "store"
    first = _fill(root)
    assert kata("store", "verify", store=root).returncode == 0
    path = root / "objects" / "sha256" / first[7:9] / first[7:]
    raw = bytearray(path.read_bytes())
    raw[-6] ^= 0xFF
    path.write_bytes(raw)
    res = kata("store", "verify", store=root)
    assert res.returncode == 1 and f"corrupt: {first}" in res.stdout
    assert "Traceback" not in res.stderr
    res = kata("store", "verify", "--repair", store=root)
    assert res.returncode == 0 and "quarantined 1, dropped 1" in res.stdout
    assert kata("store", "verify", "--reindex", store=root).returncode == 0


def test_store_gc_and_stats(tmp_path: Path) -> None:
    root = tmp_path / "store"
    _fill(root)
    res = kata("store", "gc", "--dry-run", "--grace", "0s", "--keep-runs", "0", store=root)
    assert res.returncode == 0 and res.stdout.startswith("Would delete 3 realisations and 3 objects")
    res = kata("store", "gc", store=root)  # everything is younger than the 1h grace period
    assert res.returncode == 0 and res.stdout.startswith("Deleted 0 realisations")
    res = kata("store", "stats", store=root)
    assert res.returncode == 0 and "Objects: 3" in res.stdout and "Hit rate: 85%" in res.stdout


@pytest.mark.parametrize("args", [
    ("store", "gc", "--max-size", "lots"),
    ("store", "gc", "--older-than", "soon"),
    ("store", "gc", "--older-than", "1h30"),
])
def test_bad_arguments_are_usage_errors(tmp_path: Path, args: tuple[str, ...]) -> None:
    res = kata(*args, store=tmp_path / "store")
    assert res.returncode == 2 and "Traceback" not in res.stderr


def test_unusable_store_is_one_line_not_a_traceback(tmp_path: Path) -> None:
    (tmp_path / "file").write_text("not a dir")
    res = kata("cache", "stats", store=tmp_path / "file" / "store")
    assert res.returncode == 1 and res.stderr.startswith("error:") and "Traceback" not in res.stderr


def test_parsers() -> None:
    assert parse_size("500MB") == 500_000_000
    assert parse_size("2GiB") == 2 * 1024 ** 3
    assert parse_size("1024") == 1024
    assert parse_size("1.5k") == 1500
    with pytest.raises(KataError) as err:
        parse_size("1.2.3MB")
    assert err.value.reason == "cli.bad_size"
    assert human_size(48_000_000) == "48MB"
    assert human_size(512) == "512B"
    assert human_size(1_500) == "1.5KB"
