"""The content-addressed store: blobs, trees, realisations, an LMDB index.

A standalone package: it imports nothing from ``kata``.
"""

import importlib

TYPE_CHECKING = False  # typing.TYPE_CHECKING without importing typing (the cached path)

from .errors import StoreError

if TYPE_CHECKING:
    from .core import Store
    from .gc import GcReport
    from .realisations import Realisation
    from .runs import Run, StepRecord
    from .tree import Limits
    from .verify import VerifyReport

# PEP 562: each name loads its module when first named, so a reader of one module (the
# cached path reads the index and writes a run record) does not import the whole store
_LAZY = {"Store": "core", "Realisation": "realisations", "Run": "runs", "StepRecord": "runs",
         "Limits": "tree", "GcReport": "gc", "VerifyReport": "verify"}


def __getattr__(name: str):  # noqa: ANN202
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module 'store' has no attribute {name!r}")
    value = getattr(importlib.import_module(f".{module}", __name__), name)
    globals()[name] = value
    return value

__all__ = ["Store", "Realisation", "Run", "StepRecord", "StoreError", "Limits", "GcReport", "VerifyReport"]
