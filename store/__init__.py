"""The content-addressed store: blobs, trees, realisations, an LMDB index.

A standalone package: it imports nothing from ``kata``.
"""

from typing import TYPE_CHECKING

from .core import Store
from .errors import StoreError
from .realisations import Realisation
from .runs import Run, StepRecord
from .tree import Limits

if TYPE_CHECKING:
    from .gc import GcReport
    from .verify import VerifyReport


def __getattr__(name: str):  # noqa: ANN202 - PEP 562: gc and verify load when first named
    if name == "GcReport":
        from .gc import GcReport

        return GcReport
    if name == "VerifyReport":
        from .verify import VerifyReport

        return VerifyReport
    raise AttributeError(f"module 'store' has no attribute {name!r}")

__all__ = ["Store", "Realisation", "Run", "StepRecord", "StoreError", "Limits", "GcReport", "VerifyReport"]
