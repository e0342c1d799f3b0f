"""A plain (non-editable) wheel ships the lark grammars and the seccomp profile."""

from __future__ import annotations

import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def test_wheel_contains_grammars(tmp_path) -> None:
    src = tmp_path / "src"
    src.mkdir()
    for name in ("pyproject.toml", "README.md", "setup.py", "setup.cfg", "MANIFEST.in"):
        if (ROOT / name).exists():
            shutil.copy2(ROOT / name, src / name)
    for pkg in ("kata", "store", "grammar"):
        shutil.copytree(ROOT / pkg, src / pkg, ignore=shutil.ignore_patterns("__pycache__", "*.pyc"))
    out = tmp_path / "dist"
    r = subprocess.run([sys.executable, "-m", "pip", "wheel", str(src), "--no-deps",
                        "--no-build-isolation", "-q", "-w", str(out)],
                       capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr
    (wheel,) = out.glob("kata_ci-*.whl")
    names = set(zipfile.ZipFile(wheel).namelist())
    assert {"grammar/labels.lark", "grammar/conditions.lark", "grammar/__init__.py"} <= names
    assert "kata/loader.py" in names and "kata/compile.py" in names
    assert "kata/data/kata-ci.schema.json" in names  # what `kata schema` prints
    assert "kata/runtimes/containerd/seccomp_default.json" in names  # the sandbox's profile
    # kata web's templates and static files
    assert {"kata/web/templates/run.html", "kata/web/static/kata.css",
            "kata/web/static/live.js"} <= names
    # and the grammars load from the unpacked wheel, not from this checkout
    site = tmp_path / "site"
    zipfile.ZipFile(wheel).extractall(site)
    code = ("import kata.labels, kata.conditions; assert kata.labels.__file__.startswith(%r); "
            "print(kata.labels.parse_label('//b*'), kata.conditions.parse('tag =~ \"v*\"'))" % str(site))
    r = subprocess.run([sys.executable, "-c", code], cwd=tmp_path, env={"PYTHONPATH": str(site)},
                       capture_output=True, text=True, timeout=60)
    assert r.returncode == 0, r.stderr
    assert r.stdout.split() == ["//b*", "tag", "=~", '"v*"']
