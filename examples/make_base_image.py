"""Write the example's base image, kata.local/busybox:latest, as an OCI archive.

Made locally from Debian's busybox-static (nothing is pulled from the internet), with
the same reproducible builder the test suite uses: the same image always has the same
digest. Usage: python3 examples/make_base_image.py OUT.tar
"""

from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests"))

from support.images import busybox_image, write_oci_archive  # noqa: E402


def main(argv: list[str]) -> int:
    if len(argv) != 2:
        print("usage: make_base_image.py OUT.tar", file=sys.stderr)
        return 2
    img = busybox_image()
    write_oci_archive(img, Path(argv[1]))
    print(f"wrote {img.ref} ({img.digest}) to {argv[1]}")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
