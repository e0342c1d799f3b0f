"""Generate the Python gRPC stubs for containerd's API into ``_api/``.

The .proto files come from Debian's ``golang-github-containerd-containerd-dev``.
grpc_tools writes modules under a top-level ``github`` package; we move them
into ``kata.runtimes.containerd._api`` and rewrite their imports, so nothing
of ours can clash with another distribution's ``github`` or ``gogoproto``.

Run by hand with ``python3 -m kata.runtimes.containerd.protogen``; setup.py's
build_py loads this file by path (without importing kata) and calls ``generate``.
This module imports nothing of kata on purpose.
"""

from __future__ import annotations

import os
import re
import shutil
import sys
import tempfile
from pathlib import Path

GOCODE = Path("/usr/share/gocode/src")
CONTAINERD = GOCODE / "github.com/containerd/containerd"
INCLUDES = (GOCODE, GOCODE / "github.com/gogo/protobuf", GOCODE / "github.com/gogo/googleapis")
# protos the API imports (even "import weak" becomes a real Python import)
EXTRA = (
    (GOCODE / "github.com/gogo/protobuf", "gogoproto/gogo.proto"),
    (GOCODE / "github.com/gogo/googleapis", "google/rpc/status.proto"),
    (GOCODE, "github.com/containerd/containerd/protobuf/plugin/fieldpath.proto"),
    # the runc v2 shim's options (which OCI runtime binary it drives): not part of api/
    (GOCODE, "github.com/containerd/containerd/runtime/v2/runc/options/oci.proto"),
)
PACKAGE = "kata.runtimes.containerd._api"
DEFAULT_OUT = Path(__file__).resolve().parent / "_api"
_MISSING = (
    "containerd's API .proto files are missing under {path}; "
    "install them with: apt install golang-github-containerd-containerd-dev"
)


def _module_of(rel: str) -> str:
    """Map a generated file's path (relative to the protoc output) to our module path."""
    rel = rel.removeprefix("github/com/containerd/containerd/")
    return rel.removesuffix(".py").replace("/", ".")


def _rewrite(source: str) -> str:
    def fix(match: re.Match[str]) -> str:
        kw, mod = match.group(1), match.group(2)
        if mod.startswith("google.protobuf"):
            return match.group(0)
        mod = mod.removeprefix("github.com.containerd.containerd.")
        return f"{kw} {PACKAGE}.{mod}"

    return re.sub(r"^(from|import) ((?:github\.com|gogoproto|google)[\w.]*)", fix, source,
                  flags=re.MULTILINE)


def generate(out_dir: Path | str = DEFAULT_OUT) -> Path:
    """Generate every stub into ``out_dir`` (replaced atomically); return it."""
    from grpc_tools import protoc  # build-time only
    import grpc_tools

    api = CONTAINERD / "api"
    if not api.is_dir():
        raise RuntimeError(_MISSING.format(path=api))
    out_dir = Path(out_dir)
    protos = sorted(str(p.relative_to(GOCODE)) for p in api.rglob("*.proto"))
    well_known = Path(grpc_tools.__file__).parent / "_proto"
    with tempfile.TemporaryDirectory(prefix="kata-protogen-") as tmp:
        gen = Path(tmp) / "gen"
        gen.mkdir()
        groups = [(GOCODE, protos)] + [(root, [rel]) for root, rel in EXTRA]
        for _root, files in groups:
            args = ["protoc", *(f"-I{i}" for i in INCLUDES), f"-I{well_known}",
                    f"--python_out={gen}", f"--grpc_python_out={gen}", *files]
            if protoc.main(args) != 0:
                raise RuntimeError(f"protoc failed on {files}")
        staged = Path(tmp) / "_api"
        staged.mkdir()
        (staged / "__init__.py").write_text('"""Generated containerd API stubs (see protogen.py)."""\n')
        for path in sorted(gen.rglob("*.py")):
            module = _module_of(str(path.relative_to(gen)))
            target = staged.joinpath(*module.split(".")).with_suffix(".py")
            target.parent.mkdir(parents=True, exist_ok=True)
            target.write_text(_rewrite(path.read_text()))
        for d in staged.rglob("*"):
            if d.is_dir() and not (d / "__init__.py").exists():
                (d / "__init__.py").write_text("")
        out_dir.parent.mkdir(parents=True, exist_ok=True)
        old = out_dir.with_name(out_dir.name + f".old-{os.getpid()}")
        if out_dir.exists():
            out_dir.rename(old)
        shutil.move(str(staged), str(out_dir))
        shutil.rmtree(old, ignore_errors=True)
    return out_dir


def main() -> int:
    out = Path(sys.argv[1]) if len(sys.argv) > 1 else DEFAULT_OUT
    try:
        print(f"generated containerd stubs in {generate(out)}")
    except RuntimeError as err:
        print(f"error: {err}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
