"""The overlay workspace on the host (root): layer order, the two ways of mounting layers."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from kata.errors import KataError
from kata.realise import workspace as ws_mod
from kata.realise.workspace import Workspace

pytestmark = pytest.mark.integration


def _layers(tmp_path: Path, n: int) -> list[Path]:
    """n layers with long paths, top first: each has its own file and a shared ``top``."""
    out = []
    for i in range(n):
        d = tmp_path / ("long-directory-name-" * 4) / f"layer{i}"
        d.mkdir(parents=True)
        (d / f"f{i}").write_text(str(i))
        (d / "top").write_text(str(i))
        out.append(d)
    return out


def _mounted(path: Path) -> bool:
    with open("/proc/self/mountinfo") as f:
        return any(line.split()[4] == str(path) for line in f)


@pytest.mark.parametrize("new_api", [True, False], ids=["lowerdir+", "one option string"])
def test_the_topmost_layer_wins_and_writes_stay_in_the_upper(tmp_path, monkeypatch, new_api):
    monkeypatch.setattr(ws_mod, "_new_api", new_api)
    layers = _layers(tmp_path, 30)  # ~3.5 KB of paths: the string form needs its short links
    with Workspace(tmp_path / "work", layers) as ws:
        assert _mounted(ws.path)
        assert sorted(os.listdir(ws.path)) == sorted([f"f{i}" for i in range(30)] + ["top"])
        assert (ws.path / "top").read_text() == "0"  # layers are given top first
        (ws.path / "f29").write_text("changed")
        assert (layers[29] / "f29").read_text() == "29"
    assert not _mounted(ws.path) and not ws.root.exists()


def test_more_layers_than_one_page_of_options_mount_one_by_one(tmp_path, monkeypatch):
    monkeypatch.setattr(ws_mod, "_new_api", True)
    layers = _layers(tmp_path, 120)  # ~15 KB of paths
    with Workspace(tmp_path / "work", layers) as ws:
        assert len(os.listdir(ws.path)) == 121 and (ws.path / "top").read_text() == "0"
    monkeypatch.setattr(ws_mod, "_new_api", False)
    with pytest.raises(KataError) as err:
        Workspace(tmp_path / "work", layers)
    assert err.value.reason == "workspace.too_many_layers"
    assert os.listdir(tmp_path / "work") == []  # nothing half-made is left


@pytest.mark.parametrize("umask", [0o077, 0o002, 0o022])
@pytest.mark.parametrize("factory", ["overlay", "copy"])
def test_the_workspace_root_mode_is_the_same_whatever_the_umask(tmp_path, umask, factory):
    """The step's working directory is the upper layer's root: it was made with kata's
    umask (0700 under 077, 0775 under 002) where a worker makes it 0755: one key, two
    views (branch cache-trust; end to end in tests/test_key_hunt_e2e.py). The copying
    fake keeps the contract too: its root took the top layer's mode (or the umask's)."""
    from kata.realise.workspace import CopyWorkspace
    from kata.runtimes.base import WORKSPACE_MODE

    layer = tmp_path / "layer"
    layer.mkdir()
    (layer / "f").write_text("f")
    layer.chmod(0o750)  # a lower layer's root mode is not what the step sees
    make = Workspace if factory == "overlay" else CopyWorkspace
    old = os.umask(umask)
    try:
        ws = make(tmp_path / "work", [layer])
    finally:
        os.umask(old)
    with ws:
        assert os.stat(ws.path).st_mode & 0o7777 == WORKSPACE_MODE == 0o755
