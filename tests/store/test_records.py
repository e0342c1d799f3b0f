"""Typed store records: golden encodings (a format change is a visible diff) and how
records of the older formats are read."""

from __future__ import annotations

import json
import os
from pathlib import Path

import msgpack
import pytest

from store import Realisation, Run, StepRecord, StoreError

GOLDEN = Path(__file__).resolve().parent.parent / "golden" / "records.json"
D0, D1, D2 = ("sha256:" + c * 64 for c in "012")

REAL = Realisation(outputs=D0, log=D1, exit_status=0, duration=1.5, host="h", created=100.0,
                   kind="step", run="r1", pipeline="ci", step="build", stack=(D2, D0),
                   scope="quarantine:refs/pull/1/head")
RUN = Run(id="r1", pipeline="ci", commit="c" * 40, branch="main", event="push", tag="",
          scope="ref:refs/heads/main", started=100.0, wall=2.0, status="passed",
          targets=("build",), steps=(StepRecord(name="build", status="passed", cache="MISS",
                                                drv_hash="a" * 64, key="b" * 64, duration=1.5,
                                                exit_status=0, log=D1, outputs=D0,
                                                produced_by="r1",
                                                service_logs=(("db", D2),)),))


def test_golden_encodings() -> None:
    """Regenerate with KATA_UPDATE_GOLDEN=1 after a deliberate format change (and a new
    format tag)."""
    got = {"realisation": REAL.encode().hex(), "run": RUN.encode().hex()}
    if os.environ.get("KATA_UPDATE_GOLDEN"):
        GOLDEN.write_text(json.dumps(got, indent=2, sort_keys=True) + "\n")
    assert got == json.loads(GOLDEN.read_text())
    assert Realisation.decode(bytes.fromhex(got["realisation"])) == REAL
    assert Run.decode(bytes.fromhex(got["run"])) == RUN


def test_the_index_form_round_trips() -> None:
    assert Realisation.index_decode(REAL.index_encode()) == REAL


def test_old_realisations_are_read_with_meta_mapped() -> None:
    old = {"format": "kata-realisation/1", "outputs": D0, "log": D1, "exit_status": 0,
           "duration": 1.0, "host": "h", "created": 5.0,
           "meta": {"run": "r0", "step": "build", "pipeline": "ci", "stack": [D0],
                    "objects": [D0]}}
    real = Realisation.decode(msgpack.packb(old))
    assert (real.kind, real.run, real.step, real.pipeline, real.stack, real.scope) == \
        ("step", "r0", "build", "ci", (D0,), "")
    bare = Realisation.decode(msgpack.packb({**old, "meta": {}}))
    assert (bare.kind, bare.stack) == ("", ())
    index_form = msgpack.packb([D0, D1, 0, 1.0, "h", 5.0, {"stack": [D2], "run": "r0"}])
    assert Realisation.index_decode(index_form).stack == (D2,)


def test_old_untagged_runs_are_read() -> None:
    old = {"id": "r0", "pipeline": "ci", "branch": "main", "started": 1.0, "unknown": 1,
           "steps": [{"name": "s", "status": "passed", "cache": "HIT", "key": "k" * 64,
                      "service_logs": {"db": D2}}]}
    run = Run.decode(msgpack.packb(old))
    assert run.steps[0].service_logs == (("db", D2),)
    assert run.keys() == {"k" * 64}


@pytest.mark.parametrize("raw", [msgpack.packb([1]), b"\xc1", msgpack.packb({"format": "x"}),
                                 msgpack.packb({"id": "../x"})])
def test_bad_runs_are_refused(raw) -> None:
    with pytest.raises(StoreError) as err:
        Run.decode(raw)
    assert err.value.reason in ("store.corrupt_record", "store.bad_run")


def test_a_realisation_cannot_hold_a_bad_value() -> None:
    for bad in ({"kind": "weird"}, {"stack": ("nope",)}, {"scope": 3}):
        with pytest.raises(StoreError) as err:
            Realisation(outputs=D0, **bad)
        assert err.value.reason in ("store.bad_realisation", "store.bad_digest")


def test_damaged_rehashes_only_when_the_stat_changed(tmp_path, monkeypatch) -> None:
    import time as _time

    from store import Store
    from store.objects import ObjectStore

    with Store.open(tmp_path / "s") as s:
        d = s.put_blob(b"payload " * 100)
        path = s.objects.path(d)
        old = _time.time() - 10
        os.utime(path, (old, old))
        monkeypatch.setattr("store.core._RACY_NS", -1)  # the test's file is seconds old
        opened = []
        real_open = ObjectStore.open
        monkeypatch.setattr(ObjectStore, "open",
                            lambda self, digest: opened.append(digest) or real_open(self, digest))
        assert s.damaged([d]) == () and opened == [d]
        assert s.damaged([d]) == () and opened == [d]  # same stat: not read again
        data = bytearray(Path(path).read_bytes())
        data[len(data) // 2] ^= 1
        st = os.stat(path)
        Path(path).write_bytes(bytes(data))
        os.utime(path, ns=(st.st_atime_ns, st.st_mtime_ns))  # same size and mtime; ctime moves
        assert s.damaged([d]) == (d,) and opened == [d, d]
        assert not os.path.exists(path)
        assert os.path.exists(tmp_path / "s" / "quarantine" / d[7:])
        assert s.damaged([d]) == (d,)  # now missing


def test_a_just_written_object_is_not_remembered_as_verified(tmp_path) -> None:
    from store import Store

    with Store.open(tmp_path / "s") as s:
        d = s.put_blob(b"fresh")
        assert s.damaged([d]) == ()
        assert s.index.verified(d) is None  # racily clean: hashed again next time
