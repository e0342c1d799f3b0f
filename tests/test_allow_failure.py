"""`allow_failure:` as values (issue 14): what the loader accepts, which failures it allows,
and that it is not hashed (it decides how a failure counts, not what the step computes)."""

from __future__ import annotations

import pytest

from kata.compile import compile_pipeline
from kata.errors import KataError
from kata.loader import load_text

DIGEST = "sha256:" + "b" * 64


def _step(extra: str):
    return load_text(f"steps:\n  - name: t\n    image: alpine\n{extra}").steps[0]


def test_true_allows_every_failure_but_a_cancellation():
    s = _step("    allow_failure: true\n")
    assert s.allow_failure is True
    assert s.allows("step.failed", 1) and s.allows("step.timeout", 124)
    assert s.allows("artifact.missing", 0)
    assert not s.allows("step.cancelled", 137)
    assert not _step("    allow_failure: false\n").allows("step.failed", 1)
    assert not _step("").allows("step.failed", 1)


def test_exit_codes_allow_only_those_exits():
    s = _step("    allow_failure: [137, 3, 3]\n")
    assert s.allow_failure == (3, 137)
    assert s.allows("step.failed", 3) and s.allows("step.failed", 137)
    assert not s.allows("step.failed", 1)
    assert not s.allows("step.timeout", 137)  # a timeout is no exit the step chose
    assert s.allows("step.oom", 137)


@pytest.mark.parametrize("value, reason, column", [
    ("[]", "config.value", 20), ("[0]", "config.value", 21), ("[256]", "config.value", 21),
    ("yes please", "config.type", 20), ("[a]", "config.type", 21), ("{a: 1}", "config.type", 20),
])
def test_bad_values_name_the_place(value, reason, column):
    with pytest.raises(KataError) as info:
        _step(f"    allow_failure: {value}\n")
    assert info.value.reason == reason, str(info.value)
    assert (info.value.position.line, info.value.position.column) == (4, column)


def test_not_in_the_key(tmp_path):
    a = compile_pipeline(load_text("steps:\n  - name: t\n    image: alpine\n"),
                         resolver=lambda r: DIGEST, repo_root=tmp_path)
    b = compile_pipeline(load_text("steps:\n  - name: t\n    image: alpine\n"
                                   "    allow_failure: true\n"), resolver=lambda r: DIGEST, repo_root=tmp_path)
    assert a.nodes["t"].drv_hash is not None
    assert a.nodes["t"].drv_hash == b.nodes["t"].drv_hash
