"""Generates the containerd gRPC stubs as part of building (wheel or editable install).

Everything else lives in pyproject.toml. protogen.py is loaded by its file path:
the kata package itself must not be imported while it is being built.
"""

import importlib.util
from pathlib import Path

from setuptools import setup
from setuptools.command.build_py import build_py

HERE = Path(__file__).resolve().parent
PROTOGEN = HERE / "kata" / "runtimes" / "containerd" / "protogen.py"
API = PROTOGEN.parent / "_api"


class BuildPyWithStubs(build_py):
    """build_py that first writes kata/runtimes/containerd/_api/ into the source tree."""

    def run(self):
        spec = importlib.util.spec_from_file_location("_kata_protogen", PROTOGEN)
        module = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(module)
        module.generate(API)
        # the package list was computed before the stubs existed
        packages = self.packages if self.packages is not None else []
        for init in sorted(API.rglob("__init__.py")):
            name = ".".join(init.parent.relative_to(HERE).parts)
            if name not in packages:
                packages.append(name)
        self.packages = packages
        super().run()


setup(cmdclass={"build_py": BuildPyWithStubs})
