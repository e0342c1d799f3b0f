"""Keys and scopes (the shared contract; helper core9 owns this module and its key functions).

Only ``Scope`` is defined here until core9's module lands; it replaces this file at merge.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Scope:
    """Where a run's results belong, and whether the run may be trusted.

    ref: the full ref the run builds (``refs/heads/main``, ``refs/tags/v1``; "" outside git).
    default_ref: the repository's default branch ref (``refs/heads/main``; "" unknown).
    protected: ``ref`` is a protected ref (``kata.trust``: the host config's ``protected:``,
        default the default branch).
    trusted: the run may see secrets, use ``network: host`` and write the shared cache
        (``kata.trust.decide``); an untrusted run writes only into its quarantine.
    """

    ref: str = ""
    default_ref: str = ""
    protected: bool = True
    trusted: bool = True
