"""A damaged LMDB index (truncated, overwritten) is detected before it is mapped and
rebuilt from the store's files: no SIGBUS, no lost realisation, one clear message."""

from __future__ import annotations

import os
import time
from pathlib import Path

from store import Realisation, Run, Store
from store.index import data_file_damage

from .test_cli_store import kata


def _filled(root: Path, n: int = 400) -> list[str]:
    keys = []
    with Store.open(root) as s:
        for i in range(n):  # enough records for the data file to span many pages
            d = s.put_blob(os.urandom(64) + str(i).encode())
            key = f"{i:064x}"
            s.put_realisation(key, Realisation(outputs=d, created=time.time(),
                                               step=f"step{i}"))
            keys.append(key)
        s.put_run(Run(id="run-1", pipeline="p"))
    return keys


def test_meta_page_check_values(tmp_path: Path) -> None:
    root = tmp_path / "store"
    _filled(root)
    data = root / "local" / "index" / "data.mdb"
    size = data.stat().st_size
    assert size > 16384
    assert data_file_damage(str(data)) == ""
    assert data_file_damage(str(tmp_path / "absent.mdb")) == ""
    (tmp_path / "empty.mdb").write_bytes(b"")
    assert data_file_damage(str(tmp_path / "empty.mdb")) == ""
    (tmp_path / "junk.mdb").write_bytes(b"\x00" * 20000)
    assert "no valid LMDB meta page" in data_file_damage(str(tmp_path / "junk.mdb"))
    os.truncate(data, 16384)
    why = data_file_damage(str(data))
    assert why.startswith(f"{data} is truncated: 16384 bytes")
    assert f"({size} bytes)" in why  # the pages the meta says are used: the old size


def test_truncated_index_is_rebuilt_by_every_command(tmp_path: Path) -> None:
    root = tmp_path / "store"
    keys = _filled(root)
    os.truncate(root / "local" / "index" / "data.mdb", 16 * 1024)

    res = kata("store", "verify", "--reindex", store=root)  # was: SIGBUS, exit -7
    assert res.returncode == 0, res.stderr
    assert "the store's index was damaged" in res.stderr
    assert "is truncated: 16384 bytes" in res.stderr
    assert "rebuilt it from the store's files (400 realisations)" in res.stderr
    assert "Traceback" not in res.stderr

    os.truncate(root / "local" / "index" / "data.mdb", 16 * 1024)
    res = kata("cache", "list", store=root)
    assert res.returncode == 0, res.stderr
    assert "rebuilt it from the store's files (400 realisations)" in res.stderr
    assert sum(1 for line in res.stdout.splitlines() if "step" in line) == 400

    res = kata("cache", "list", store=root)  # healthy again: no message
    assert res.returncode == 0 and res.stderr == ""
    with Store.open(root) as s:
        assert s.notices == []
        assert s.index.get_realisation(keys[123]) is not None  # from the index itself
        assert s.index.get_run("run-1") is not None and s.get_run("run-1").pipeline == "p"
