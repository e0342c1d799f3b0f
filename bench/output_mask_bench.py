"""Throughput of a step's output path (kata.realise.output.MaskedOutput): raw chunks from
the runtime → one streaming masker over both streams → lines (carriage-return rewrites
collapsed) → log + events.

Feeds 32 MiB of log-like output (10 secrets occurring raw and encoded, one a 64 KiB
multi-line value) in 64 KiB chunks (what the FIFO reader gets from a chatty step), and
1 MiB in 1-byte chunks (a step writing unbuffered, the worst case), and compares with,
measured in the same run:
  - memcpy of the same bytes (the physical floor of touching the output once);
  - the same sink with no secrets (the cost of lines, log and events alone).

    python3 bench/output_mask_bench.py [MiB]
"""

from __future__ import annotations

import base64
import io
import random
import string
import sys
import threading
import time
from pathlib import Path
from urllib.parse import quote

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from kata.realise.output import MaskedOutput  # noqa: E402
from kata.secrets import Masker  # noqa: E402

MIB = 1 << 20


class _Sink:
    """A masker and an emit that counts: what MaskedOutput is given by the realiser."""

    def __init__(self, values: list[str]) -> None:
        self._masker = Masker(values)
        self.events = 0

    def emit(self, event: object) -> None:
        self.events += 1


def secrets(rng: random.Random) -> list[str]:
    alphabet = string.ascii_letters + string.digits
    big = "\n".join("".join(rng.choice(alphabet) for _ in range(63)) for _ in range(1040))
    return [big[: 64 * 1024]] + ["".join(rng.choice(alphabet) for _ in range(20)) for _ in range(9)]


def output(size: int, values: list[str], rng: random.Random) -> bytes:
    words = [b"compiling", b"src/main.rs", b"warning:", b"ok", b"test", b"passed", b"[INFO]",
             b"step", b"build", b"-->", b"123", b"done"]
    lines = [b" ".join(rng.choice(words) for _ in range(rng.randint(3, 14))) for _ in range(4096)]
    block = b"\n".join(lines) + b"\n"
    forms = []
    for v in values:
        raw = v.encode()[:2048]
        forms += [raw, base64.b64encode(raw), raw.hex().encode(), quote(raw, safe="").encode()]
    out = bytearray()
    while len(out) < size:
        out += block
        out += rng.choice(forms) + b"\n"
    return bytes(out[:size])


def run_sink(values: list[str], data: bytes, chunk: int) -> tuple[float, int]:
    realiser = _Sink(values)
    log = io.BytesIO()
    sink = MaskedOutput(realiser._masker, "step", realiser.emit, log, threading.Lock())
    view = memoryview(data)
    t = time.perf_counter()
    for i in range(0, len(data), chunk):
        sink("stdout", bytes(view[i:i + chunk]))
    sink.close()
    return time.perf_counter() - t, log.tell()


def memcpy(data: bytes, chunk: int) -> float:
    view = memoryview(data)
    t = time.perf_counter()
    for i in range(0, len(data), chunk):
        bytes(view[i:i + chunk])
    return time.perf_counter() - t


def main() -> None:
    size = int(sys.argv[1]) * MIB if len(sys.argv) > 1 else 32 * MIB
    rng = random.Random(6)
    values = secrets(rng)
    data = output(size, values, rng)
    floor = memcpy(data, 64 * 1024)
    run_sink([], data[: 4 * MIB], 64 * 1024)  # warm up
    bare, _ = run_sink([], data, 64 * 1024)
    masked, logged = run_sink(values, data, 64 * 1024)
    mb = size / MIB
    print(f"64 KiB chunks, {mb:.0f} MiB, 10 secrets (one 64 KiB multi-line):")
    print(f"  memcpy (floor)          {mb / floor:9.1f} MiB/s")
    print(f"  sink, no secrets        {mb / bare:9.1f} MiB/s   {floor / bare * 100:5.1f}% of floor")
    print(f"  sink, 10 secrets        {mb / masked:9.1f} MiB/s   {floor / masked * 100:5.1f}% of floor"
          f"   ({logged / MIB:.1f} MiB logged after masking)")
    small = data[: MIB]
    floor1 = memcpy(small, 1)
    masked1, _ = run_sink(values, small, 1)
    print("1-byte chunks, 1 MiB:")
    print(f"  memcpy (floor)          {1 / floor1:9.2f} MiB/s")
    print(f"  sink, 10 secrets        {1 / masked1:9.2f} MiB/s   {floor1 / masked1 * 100:5.1f}% of floor")


if __name__ == "__main__":
    main()
