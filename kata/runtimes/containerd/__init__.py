"""The containerd runtime: kata's steps in real containers over containerd's gRPC API.

The only package that imports grpc and the generated stubs (``_api``, made by
``protogen``). ``ContainerdRuntime.connect()`` finds or starts containerd.
"""

from .runtime import ContainerdRuntime

__all__ = ["ContainerdRuntime"]
