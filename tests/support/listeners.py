"""A TCP server on the host's 127.0.0.1 that counts the connections it accepts.

Tests use it as a host service a step (or kata itself) must, or must not, reach:

    with LoopbackListener(reply=lambda n: f"{n}\\n".encode()) as listener:
        ... listener.port ...
        assert listener.count == 0      # nothing arrived
"""

from __future__ import annotations

import socket
import threading
from collections.abc import Callable


class LoopbackListener:
    """Accepts on 127.0.0.1:<free port>; ``count`` is the number of connections so far
    (a test may set it, e.g. to shift what ``reply`` answers). ``reply(n)``: the bytes the
    n-th connection is sent before it is closed (None: closed at once)."""

    def __init__(self, reply: Callable[[int], bytes] | None = None) -> None:
        self.reply = reply
        self.sock = socket.create_server(("127.0.0.1", 0))
        self.port = self.sock.getsockname()[1]
        self.count = 0
        self._thread = threading.Thread(target=self._serve, daemon=True)
        self._thread.start()

    def _serve(self) -> None:
        while True:
            try:
                conn, _ = self.sock.accept()
            except OSError:
                return
            with conn:
                self.count += 1
                if self.reply is not None:
                    conn.sendall(self.reply(self.count))

    def close(self) -> None:
        self.sock.close()
        self._thread.join(timeout=5)

    def __enter__(self) -> LoopbackListener:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


class HungListener:
    """A hung server on 127.0.0.1:<free port>: accepts each connection, counts it
    (``count``) and keeps it open without reading or answering (a remote whose process is
    stuck, or a proxy in front of a dead one). ``close`` drops every connection."""

    def __init__(self) -> None:
        self.sock = socket.create_server(("127.0.0.1", 0))
        self.port = self.sock.getsockname()[1]
        self.count = 0
        self._held: list[socket.socket] = []
        self._thread = threading.Thread(target=self._serve, daemon=True)
        self._thread.start()

    def _serve(self) -> None:
        while True:
            try:
                conn, _ = self.sock.accept()
            except OSError:
                return
            self.count += 1
            self._held.append(conn)

    def close(self) -> None:
        self.sock.close()
        self._thread.join(timeout=5)
        for conn in self._held:
            conn.close()

    def __enter__(self) -> HungListener:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
