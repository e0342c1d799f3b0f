"""Imports flow one way (STYLE.md habit 1), checked over the source, not by convention.

    procs            imports nothing of kata or store (process identity, shared by both)
    store            imports nothing of kata
    kata (compiler)  imports neither store nor kata.runtimes nor kata.realise/kata.cli
    kata.runtimes    imports no store, no kata.realise, no kata.cli
    kata.realise     may import store and kata.runtimes, never kata.cli
    kata.web         reads the store (the dashboard); only kata.cli imports it
    kata.cli         wires everything together
and only kata.runtimes.containerd imports grpc or protobuf.
"""

from __future__ import annotations

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def _module_name(path: Path, root: Path) -> str:
    rel = path.relative_to(root).with_suffix("")
    parts = list(rel.parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def _imports(path: Path, root: Path) -> set[str]:
    tree = ast.parse(path.read_text(encoding="utf-8"), filename=str(path))
    module = _module_name(path, root)
    package = module if path.name == "__init__.py" else module.rpartition(".")[0]
    found: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")
                base = base[: len(base) - (node.level - 1)]
                name = ".".join(base + ([node.module] if node.module else []))
            else:
                name = node.module or ""
            found.add(name)
            found.update(f"{name}.{alias.name}" for alias in node.names)
    return found


def _sources(root: Path) -> dict[str, set[str]]:
    result = {}
    for top in ("kata", "store", "grammar", "procs"):
        for path in sorted((root / top).rglob("*.py")):
            if "_api" in path.parts:  # generated gRPC stubs
                continue
            result[_module_name(path, root)] = _imports(path, root)
    return result


def _under(name: str, *prefixes: str) -> bool:
    return any(name == p or name.startswith(p + ".") for p in prefixes)


def _violations(root: Path = ROOT) -> list[str]:
    bad = []
    for module, imports in _sources(root).items():
        for imp in imports:
            if _under(module, "store", "grammar") and _under(imp, "kata"):
                bad.append(f"{module} imports {imp}: the store and grammars import nothing of kata")
            if _under(module, "procs") and _under(imp, "kata", "store"):
                bad.append(f"{module} imports {imp}: procs imports nothing of kata or the store")
            if _under(module, "kata") and not _under(module, "kata.cli", "kata.realise", "kata.web"):
                if _under(imp, "store"):
                    bad.append(f"{module} imports {imp}: only kata.realise, kata.web and kata.cli "
                               "use the store")
                if _under(imp, "kata.runtimes") and not _under(module, "kata.runtimes"):
                    bad.append(f"{module} imports {imp}: only kata.realise and kata.cli use a runtime")
            if not _under(module, "kata.cli", "kata.web") and _under(imp, "kata.web"):
                bad.append(f"{module} imports {imp}: only the CLI serves the dashboard")
            if not _under(module, "kata.cli", "kata.__main__") and _under(imp, "kata.cli"):
                bad.append(f"{module} imports {imp}: nothing imports the CLI")
            if _under(module, "kata.runtimes") and _under(imp, "kata.realise"):
                bad.append(f"{module} imports {imp}: runtimes do not know the realiser")
            if _under(imp, "grpc", "google.protobuf") and not _under(module, "kata.runtimes.containerd"):
                bad.append(f"{module} imports {imp}: only the containerd adapter speaks gRPC")
    return sorted(bad)


def test_imports_flow_one_way() -> None:
    assert _violations() == []


def test_checker_sees_a_violation(tmp_path: Path) -> None:
    # the checker itself must be able to fail: a store module importing kata is caught
    (tmp_path / "store").mkdir()
    (tmp_path / "store" / "probe.py").write_text("from kata.errors import KataError\n", encoding="utf-8")
    (tmp_path / "kata").mkdir()
    (tmp_path / "kata" / "model.py").write_text("import store.index\nimport grpc\n", encoding="utf-8")
    (tmp_path / "procs").mkdir()
    (tmp_path / "procs" / "__init__.py").write_text("import store.objects\n", encoding="utf-8")
    assert set(_violations(tmp_path)) == {
        "kata.model imports grpc: only the containerd adapter speaks gRPC",
        "kata.model imports store.index: only kata.realise, kata.web and kata.cli use the store",
        "store.probe imports kata.errors: the store and grammars import nothing of kata",
        "store.probe imports kata.errors.KataError: the store and grammars import nothing of kata",
        "procs imports store.objects: procs imports nothing of kata or the store",
    }
