"""Generates the gRPC stubs as part of building (wheel or editable install).

Everything else lives in pyproject.toml. Each protogen.py is loaded by its file path:
the kata package itself must not be imported while it is being built. Two stub sets:
containerd's API (kata/runtimes/containerd/_api/) and the Remote Execution API
(kata/remote/_api/).
"""

import importlib.util
from pathlib import Path

from setuptools import setup
from setuptools.command.build_py import build_py

HERE = Path(__file__).resolve().parent
PROTOGENS = (
    HERE / "kata" / "runtimes" / "containerd" / "protogen.py",
    HERE / "kata" / "remote" / "protogen.py",
)


class BuildPyWithStubs(build_py):
    """build_py that first writes each protogen's _api/ into the source tree."""

    def run(self):
        # the package list was computed before the stubs existed
        packages = self.packages if self.packages is not None else []
        for index, protogen in enumerate(PROTOGENS):
            spec = importlib.util.spec_from_file_location(f"_kata_protogen{index}", protogen)
            module = importlib.util.module_from_spec(spec)
            spec.loader.exec_module(module)
            api = protogen.parent / "_api"
            module.generate(api)
            for init in sorted(api.rglob("__init__.py")):
                name = ".".join(init.parent.relative_to(HERE).parts)
                if name not in packages:
                    packages.append(name)
        self.packages = packages
        super().run()


setup(cmdclass={"build_py": BuildPyWithStubs})
