"""A TCP proxy for network faults between Kata and a server (BuildGrid):

    with FaultProxy(("127.0.0.1", bg.port)) as proxy:
        url = f"grpc://127.0.0.1:{proxy.port}"
        proxy.delay = 0.2          # each chunk passed on waits this many seconds (a slow link)
        proxy.blackhole()          # connections open now go silent for good, both ways (a
                                   # NAT or load balancer that lost its state, a host whose
                                   # power went: no RST ever comes); new ones pass
        proxy.trip_up = N          # blackhole() once N bytes went up (client -> server)
        proxy.trip_down = N        # ... or came down (server -> client); then new
                                   # connections are black holes too

Sockets stay open: the client's kernel sees nothing wrong, as after a real half-open
connection.
"""

from __future__ import annotations

import socket
import threading
import time


class _Pair:
    def __init__(self) -> None:
        self.dead = threading.Event()


class FaultProxy:
    def __init__(self, upstream: tuple[str, int]) -> None:
        self.upstream = upstream
        self.delay = 0.0
        self.connections = 0
        self.up = self.down = 0  # bytes passed each way
        self.trip_up: int | None = None
        self.trip_down: int | None = None
        self.tripped = threading.Event()
        self._listener = socket.create_server(("127.0.0.1", 0))
        self.port = self._listener.getsockname()[1]
        self._pairs: list[_Pair] = []
        self._socks: list[socket.socket] = []
        self._lock = threading.Lock()
        threading.Thread(target=self._accept, daemon=True).start()

    def blackhole(self) -> None:
        """Every connection open now stops passing bytes (sockets kept open)."""
        with self._lock:
            for pair in self._pairs:
                pair.dead.set()

    def _accept(self) -> None:
        while True:
            try:
                client, _ = self._listener.accept()
            except OSError:
                return
            try:
                server = socket.create_connection(self.upstream)
            except OSError:
                client.close()
                continue
            pair = _Pair()
            if self.tripped.is_set():
                pair.dead.set()
            with self._lock:
                self.connections += 1
                self._pairs.append(pair)
                self._socks += [client, server]
            for src, dst, up in ((client, server, True), (server, client, False)):
                threading.Thread(target=self._pipe, args=(src, dst, pair, up),
                                 daemon=True).start()

    def _count(self, n: int, up: bool) -> None:
        with self._lock:
            if up:
                self.up += n
                trip = self.trip_up is not None and self.up >= self.trip_up
            else:
                self.down += n
                trip = self.trip_down is not None and self.down >= self.trip_down
        if trip and not self.tripped.is_set():
            self.tripped.set()
            self.blackhole()

    def _pipe(self, src: socket.socket, dst: socket.socket, pair: _Pair, up: bool) -> None:
        try:
            while data := src.recv(1 << 16):
                if self.delay:
                    time.sleep(self.delay)
                self._count(len(data), up)
                if pair.dead.is_set():
                    pair.dead.wait()  # silent for good: hold the bytes, read no more
                    return
                dst.sendall(data)
        except OSError:
            pass
        if not pair.dead.is_set():
            for s in (src, dst):
                try:
                    s.shutdown(socket.SHUT_RDWR)
                except OSError:
                    pass

    def close(self) -> None:
        self._listener.close()
        with self._lock:
            for s in self._socks:
                try:
                    s.close()
                except OSError:
                    pass

    def __enter__(self) -> FaultProxy:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
