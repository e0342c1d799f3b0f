"""The containerd runtime: kata's steps in real containers over containerd's gRPC API.

The only package that imports grpc and the generated stubs (``_api``, made by
``protogen``). ``ContainerdRuntime.connect()`` finds or starts containerd.

``ContainerdRuntime`` is imported on first use so that ``python3 -m
kata.runtimes.containerd.protogen`` can run in a tree whose stubs are not yet
generated (importing the runtime needs them).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from .runtime import ContainerdRuntime

__all__ = ["ContainerdRuntime"]


def __getattr__(name: str) -> object:
    if name == "ContainerdRuntime":
        from .runtime import ContainerdRuntime

        return ContainerdRuntime
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
