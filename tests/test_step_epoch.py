"""Files a step *makes* get the same time on every run and host (SOURCE_DATE_EPOCH).

What a step sees already carries one mtime everywhere (``store.tree.STEP_MTIME_NS``), but
what it generates carries the time it ran: a Python wheel built from a C extension (the
compiled ``.so``, the generated ``.dist-info``) or an sdist's ``PKG-INFO`` made different
bytes on every build, so early cutoff never held for the steps after it. Every tool that
follows reproducible-builds.org's ``SOURCE_DATE_EPOCH`` (wheel, setuptools, pip, dpkg, gcc's
``__DATE__``, sphinx ...) stamps its outputs with that time instead; a step gets it set to
the same time as its inputs, as Nix's builders do, unless its env sets it.
Real containerd, the real CLI, busybox's ``touch``/``tar`` in the part of such a tool.
"""

from __future__ import annotations

import json

import pytest

from store.tree import STEP_MTIME_NS
from support.cli import KataProcess

pytestmark = pytest.mark.integration

PIPELINE = """\
pipeline: epoch
steps:
  - name: pack
    image: kata.local/busybox:latest
    inputs: []
    commands:
      - echo "$SOURCE_DATE_EPOCH" > epoch
      - mkdir gen && echo made > gen/made && touch -d "@$SOURCE_DATE_EPOCH" gen gen/made
      - tar -cf gen.tar gen
    artifacts: [epoch, gen.tar]
  - name: own
    image: kata.local/busybox:latest
    inputs: []
    env: {SOURCE_DATE_EPOCH: "1"}
    commands: ['test "$SOURCE_DATE_EPOCH" = 1']
"""


def _outputs(kata: KataProcess) -> dict[str, str]:
    doc = json.loads(kata("cache", "list", "--json").stdout)
    return {e["step"]: e["outputs"] for e in doc["entries"] if e["kind"] == "step"}


def test_what_a_step_makes_is_stamped_with_source_date_epoch(tmp_path, containerd_daemon,
                                                             runtime):
    repo = tmp_path / "repo"
    repo.mkdir()
    (repo / ".kata-ci.yaml").write_text(PIPELINE)
    kata = KataProcess(repo, store=tmp_path / "store", address=containerd_daemon.address)
    first = kata("run", "--out", str(tmp_path / "out"))
    assert first.returncode == 0, first.stdout + first.stderr
    assert (tmp_path / "out" / "pack" / "epoch").read_text() == f"{STEP_MTIME_NS // 10**9}\n"
    made = _outputs(kata)["pack"]
    again = kata("run", "--no-cache", "--step", "pack")
    assert again.returncode == 0, again.stdout + again.stderr
    assert _outputs(kata)["pack"] == made  # the tar's bytes did not take the run's time
