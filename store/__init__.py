"""The content-addressed store: blobs, trees, realisations, an LMDB index.

A standalone package: it imports nothing from ``kata``.
"""

from .core import Store
from .errors import StoreError
from .gc import GcReport
from .realisations import Realisation
from .runs import Run, StepRecord
from .tree import Limits
from .verify import VerifyReport

__all__ = ["Store", "Realisation", "Run", "StepRecord", "StoreError", "Limits", "GcReport", "VerifyReport"]
