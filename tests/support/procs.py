"""A kata process killed with SIGKILL mid-step, for the tests of what the next start sweeps."""

from __future__ import annotations

import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent.parent


def kill_once_started(script: str, marker: Path, timeout: float = 60) -> None:
    """Run ``script`` in a fresh Python; SIGKILL it as soon as it creates ``marker``."""
    proc = subprocess.Popen([sys.executable, "-c", script], cwd=ROOT)  # kata from this checkout
    deadline = time.monotonic() + timeout
    try:
        while not marker.exists():
            assert proc.poll() is None, "the kata process died before its step started"
            assert time.monotonic() < deadline, "the kata process never started its step"
            time.sleep(0.05)
    finally:
        proc.kill()
        proc.wait()
