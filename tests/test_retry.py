"""`retry:` as values (issue 14): the two spellings, which failures are retried, errors with
positions, not hashed, and the run record's `attempts` (left out when 1)."""

from __future__ import annotations

import pytest

from kata.compile import compile_pipeline
from kata.errors import KataError
from kata.loader import load_text
from kata.model import Retry
from store.runs import Run, StepRecord

DIGEST = "sha256:" + "c" * 64


def _retry(text: str):
    return load_text(f"steps:\n  - name: t\n    image: alpine\n    retry: {text}\n").steps[0].retry


def test_both_spellings():
    assert _retry("2") == Retry(max=2)
    assert _retry("{max: 2, on: [exit_code: 137, timeout]}") == \
        Retry(max=2, exit_codes=(137,), timeout=True)
    assert _retry("{max: 1, 'on': [{exit_code: 3}, {exit_code: 3}]}") == \
        Retry(max=1, exit_codes=(3,))


def test_which_failures_are_retried():
    any_failure = Retry(max=1)
    assert any_failure.covers("step.failed", 1) and any_failure.covers("step.timeout", 124)
    assert any_failure.covers("artifact.missing", 0)
    assert not any_failure.covers("step.cancelled", 137)
    narrow = Retry(max=1, exit_codes=(137,))
    assert narrow.covers("step.failed", 137) and not narrow.covers("step.failed", 1)
    assert not narrow.covers("step.timeout", 137)
    assert narrow.covers("step.oom", 137)  # an out-of-memory kill is exit 137
    assert Retry(max=1, timeout=True).covers("step.timeout", 137)


@pytest.mark.parametrize("text, reason, column", [
    ("0", "config.value", 12), ("11", "config.value", 12), ("two", "config.type", 12),
    ("{on: [timeout]}", "config.missing_key", 12), ("{max: 1, on: []}", "config.value", 25),
    ("{max: 1, on: [later]}", "config.value", 26), ("{max: 1, on: [exit_code: 0]}", "config.value", 37),
    ("{max: 1, on: [{code: 1}]}", "config.unknown_key", 27), ("{max: 1, tries: 2}", "config.unknown_key", 21),
])
def test_bad_values_name_the_place(text, reason, column):
    with pytest.raises(KataError) as info:
        _retry(text)
    assert info.value.reason == reason, str(info.value)
    assert (info.value.position.line, info.value.position.column) == (4, column), str(info.value)


def test_not_in_the_key(tmp_path):
    plain = compile_pipeline(load_text("steps:\n  - name: t\n    image: alpine\n"),
                             resolver=lambda r: DIGEST, repo_root=tmp_path)
    retried = compile_pipeline(load_text("steps:\n  - name: t\n    image: alpine\n"
                                         "    retry: 3\n"), resolver=lambda r: DIGEST, repo_root=tmp_path)
    assert plain.nodes["t"].drv_hash is not None
    assert plain.nodes["t"].drv_hash == retried.nodes["t"].drv_hash


def test_attempts_in_the_run_record():
    one = StepRecord(name="t", status="passed")
    assert "attempts" not in one.to_obj()  # older readers and the golden encoding unchanged
    run = Run(id="r", steps=(StepRecord(name="t", status="passed", attempts=2), one))
    assert [s.attempts for s in Run.decode(run.encode()).steps] == [2, 1]
