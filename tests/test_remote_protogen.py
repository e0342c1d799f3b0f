"""The REAPI stubs generate from the vendored protos and live beside containerd's."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def test_protogen_rewrites_imports(tmp_path):
    from kata.remote import protogen

    out = protogen.generate(tmp_path / "_api")
    files = list(out.rglob("*_pb2*.py"))
    names = {str(f.relative_to(out)) for f in files}
    assert "build/bazel/remote/execution/v2/remote_execution_pb2_grpc.py" in names
    assert "google/bytestream/bytestream_pb2_grpc.py" in names
    assert "google/devtools/remoteworkers/v1test2/bots_pb2_grpc.py" in names
    text = "\n".join(f.read_text() for f in files)
    assert "\nfrom build" not in text and "\nfrom google.rpc" not in text
    assert "from kata.remote._api.google.rpc import status_pb2" in text


def test_status_proto_matches_containerds():
    """Both stub sets register google/rpc/status.proto in the default descriptor pool;
    protobuf accepts the second only if it is byte-identical (see protos/README.md)."""
    ours = (ROOT / "kata/remote/protos/google/rpc/status.proto").read_bytes()
    theirs = Path("/usr/share/gocode/src/github.com/gogo/googleapis/google/rpc/status.proto")
    assert ours == theirs.read_bytes()
    for first, second in (("remote", "containerd"), ("containerd", "remote")):
        mods = {
            "remote": "kata.remote._api.build.bazel.remote.execution.v2.remote_execution_pb2",
            "containerd": "kata.runtimes.containerd._api.api.services.introspection.v1.introspection_pb2",
        }
        code = f"import {mods[first]}, {mods[second]}; print('ok')"
        r = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True,
                           timeout=60)
        assert r.returncode == 0 and r.stdout.strip() == "ok", r.stderr
