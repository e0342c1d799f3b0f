"""Where kata keeps things on this host: the store's default location.

Standard library only (the cached path, ``kata.realise.noop``, finds the store before the
command line is imported).
"""

from __future__ import annotations

import os

ROOT_STORE = "/var/lib/kata/store"


def store_location(explicit: str | None = None) -> str:
    """``--store``, else $KATA_STORE, else /var/lib/kata/store for root, else the user's."""
    if explicit:
        return os.path.abspath(os.path.expanduser(explicit))
    env = os.environ.get("KATA_STORE")
    if env:
        return os.path.abspath(os.path.expanduser(env))
    if os.geteuid() == 0:
        return ROOT_STORE
    data = os.environ.get("XDG_DATA_HOME") or os.path.join(os.path.expanduser("~"), ".local", "share")
    return os.path.join(data, "kata", "store")
