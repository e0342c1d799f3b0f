"""Throughput of secret masking (kata.secrets.MaskStream) against its floors.

Masks 100 MiB of log-like output carrying 10 secrets (a few occurrences of each, raw and
encoded), fed in pipe-sized chunks, and compares with, measured in the same run:
  - raw memcpy of the same bytes (the physical floor of touching the output once);
  - a bare `bytes.replace` loop over the 10 raw values (what a naive masker costs: it
    misses every encoded, split or multi-line occurrence).
Two secret sets: 10 short tokens, and 9 tokens plus one 64 KiB multi-line value (whose
lines, CRLF variant, base64 lines etc. make thousands of forms). Also 1 MiB in 1-byte
writes, the worst case of a step that writes unbuffered.

    python3 bench/mask_bench.py [MiB]
"""

from __future__ import annotations

import base64
import os
import random
import sys
import time
from pathlib import Path
from urllib.parse import quote

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from kata.secrets import Masker  # noqa: E402
from timing import best_time as best  # noqa: E402

MIB = 1 << 20


def log_text(size: int, secrets: list[str], rng: random.Random) -> bytes:
    words = [b"compiling", b"src/main.rs", b"warning:", b"unused", b"ok", b"test", b"passed",
             b"[INFO]", b"2026-11-25T16:30:00Z", b"step", b"build", b"-->", b"123", b"=", b"done"]
    lines = [b" ".join(rng.choice(words) for _ in range(rng.randint(3, 14))) for _ in range(4096)]
    block = b"\n".join(lines) + b"\n"
    forms = []
    for s in secrets:
        raw = s.encode()[:4096]
        forms += [raw, base64.b64encode(raw), raw.hex().encode(), quote(raw, safe="").encode()]
    parts, total = [], 0
    while total < size:
        parts.append(block)
        parts.append(b"token: " + rng.choice(forms) + b"\n")
        total += len(block) + 1
    return b"".join(parts)[:size]


def main() -> None:
    mib = int(sys.argv[1]) if len(sys.argv) > 1 else 100
    size = mib * MIB
    rng = random.Random(6)
    short = [os.urandom(16).hex() for _ in range(10)]
    big = "\n".join(os.urandom(24).hex() for _ in range(64 * 1024 // 49)) + "\n"
    sets = {"10 tokens": short, "9 tokens + 64 KiB multi-line": short[:9] + [big]}

    for label, secrets in sets.items():
        data = log_text(size, secrets, rng)
        t = time.perf_counter()
        masker = Masker(secrets)
        build = time.perf_counter() - t
        view = memoryview(data)

        def memcpy() -> None:
            for i in range(0, size, 1 << 16):
                bytes(view[i : i + (1 << 16)])

        def replace_loop() -> None:
            out = data
            for s in secrets:
                out = out.replace(s.encode(), b"***")

        def masked(chunk: int) -> bytes:
            stream = masker.stream()
            out = [stream.feed(view[i : i + chunk]) for i in range(0, size, chunk)]
            out.append(stream.close())
            return b"".join(out)

        t_copy = best(memcpy)
        t_replace = best(replace_loop)
        t_64k = best(lambda: masked(1 << 16), repeat=2)
        t_4k = best(lambda: masked(1 << 12), repeat=1)
        result = masked(1 << 16)
        leaks = sum(result.count(f) for s in secrets for f in (s.encode(), base64.b64encode(s.encode()[:4096])))
        print(f"== {label}: {len(masker.forms)} forms, compiled in {build * 1000:.1f} ms, {mib} MiB")
        print(f"memcpy (64 KiB chunks)        {mib / t_copy:9.1f} MiB/s")
        print(f"bytes.replace x{len(secrets)} (raw only) {mib / t_replace:9.1f} MiB/s")
        print(f"Masker, 64 KiB chunks         {mib / t_64k:9.1f} MiB/s   "
              f"ratio vs memcpy {t_copy / t_64k:.3f}, vs replace loop {t_replace / t_64k:.2f}")
        print(f"Masker, 4 KiB chunks          {mib / t_4k:9.1f} MiB/s   ratio vs memcpy {t_copy / t_4k:.3f}")
        print(f"surviving raw/base64 occurrences in the output: {leaks}")

    one = log_text(MIB, short, rng)
    masker = Masker(short)
    stream = masker.stream()
    t = time.perf_counter()
    for i in range(len(one)):
        stream.feed(one[i : i + 1])
    stream.close()
    dt = time.perf_counter() - t
    print(f"== 1-byte writes, 1 MiB, 10 tokens: {len(one) / dt / 1e6:.2f} M writes/s ({dt * 1e6 / len(one):.2f} us/byte)")


if __name__ == "__main__":
    main()
