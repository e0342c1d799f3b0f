"""Generate the Python gRPC stubs for the Remote Execution API into ``_api/``.

The .proto files are vendored under ``protos/`` (see its README for sources and
licences): REAPI v2, semver, ByteStream, long-running operations, google.rpc.Status,
the google.api annotations they import, and the Remote Workers API (v1test2).
grpc_tools writes modules under top-level ``build`` and ``google`` packages; we move
them into ``kata.remote._api`` and rewrite their imports (``google.protobuf`` stays),
so nothing of ours clashes with another distribution's ``google`` namespace.

Run by hand with ``python3 -m kata.remote.protogen``; setup.py's build_py loads this
file by path (without importing kata) and calls ``generate``. This module imports
nothing of kata on purpose.
"""

from __future__ import annotations

import os
import re
import shutil
import sys
import tempfile
from pathlib import Path

PROTOS = Path(__file__).resolve().parent / "protos"
PACKAGE = "kata.remote._api"
DEFAULT_OUT = Path(__file__).resolve().parent / "_api"


def _rewrite(source: str) -> str:
    def fix(match: re.Match[str]) -> str:
        kw, mod = match.group(1), match.group(2)
        if mod.startswith("google.protobuf"):
            return match.group(0)
        return f"{kw} {PACKAGE}.{mod}"

    return re.sub(r"^(from|import) ((?:build|google)\.[\w.]*)", fix, source, flags=re.MULTILINE)


def generate(out_dir: Path | str = DEFAULT_OUT) -> Path:
    """Generate every stub into ``out_dir`` (replaced atomically); return it.

    Raises RuntimeError when protoc fails or the vendored protos are missing.
    """
    from grpc_tools import protoc  # build-time only
    import grpc_tools

    if not PROTOS.is_dir():
        raise RuntimeError(f"the vendored .proto files are missing under {PROTOS}")
    out_dir = Path(out_dir)
    protos = sorted(str(p.relative_to(PROTOS)) for p in PROTOS.rglob("*.proto"))
    well_known = Path(grpc_tools.__file__).parent / "_proto"
    with tempfile.TemporaryDirectory(prefix="kata-protogen-") as tmp:
        gen = Path(tmp) / "gen"
        gen.mkdir()
        args = ["protoc", f"-I{PROTOS}", f"-I{well_known}",
                f"--python_out={gen}", f"--grpc_python_out={gen}", *protos]
        if protoc.main(args) != 0:
            raise RuntimeError(f"protoc failed on {PROTOS}")
        staged = Path(tmp) / "_api"
        staged.mkdir()
        (staged / "__init__.py").write_text('"""Generated REAPI stubs (see protogen.py)."""\n')
        for path in sorted(gen.rglob("*.py")):
            target = staged / path.relative_to(gen)
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
        print(f"generated REAPI stubs in {generate(out)}")
    except RuntimeError as err:
        print(f"error: {err}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
