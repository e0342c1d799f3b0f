"""Generate ``seccomp_default.json`` from containerd's own default profile.

The source is containerd's ``contrib/seccomp/seccomp_default.go`` (``DefaultProfile``),
which Debian ships in golang-github-containerd-containerd-dev (``.ci/install`` installs
it). That Go function builds the profile at run time from four parts; this script reads
the Go source and writes the same four parts as data, so kata assembles the identical
structure in ``kata.runtimes.containerd.sandbox.seccomp_profile`` without Go:

- ``syscalls``: the rules every container gets (the big allow list, ``personality``
  with its five permitted arguments);
- ``kernel``: rules added on a minimum kernel version (``ptrace`` from 4.8);
- ``arch``: names allowed per Go architecture (``amd64``: arch_prctl, modify_ldt);
- ``caps``: names allowed only when the bounding set holds a capability
  (``CAP_SYS_ADMIN``: mount, unshare, setns, bpf, clone3...);
- ``non_admin``: without CAP_SYS_ADMIN, ``clone`` is allowed only when its flags hold
  no ``CLONE_NEW*`` namespace bit, and ``clone3`` fails with ENOSYS (so libc falls back
  to ``clone``, where the flags can be inspected).

Run ``python3 -m kata.runtimes.containerd.seccompgen`` to regenerate after containerd's
profile changes; ``tests/test_sandbox.py`` checks the committed file matches the
installed source.
"""

from __future__ import annotations

import json
import re
import sys
from pathlib import Path

SOURCE = Path("/usr/share/gocode/src/github.com/containerd/containerd/contrib/seccomp/"
              "seccomp_default.go")
OUTPUT = Path(__file__).with_name("seccomp_default.json")
FORMAT = "kata-seccomp/1"

# golang.org/x/sys/unix values (linux), for the masked clone rule
CLONE_FLAGS = {"CLONE_NEWNS": 0x20000, "CLONE_NEWUTS": 0x4000000, "CLONE_NEWIPC": 0x8000000,
               "CLONE_NEWUSER": 0x10000000, "CLONE_NEWPID": 0x20000000,
               "CLONE_NEWNET": 0x40000000, "CLONE_NEWCGROUP": 0x2000000}
ERRNOS = {"ENOSYS": 38}
OPS = {"OpEqualTo": "SCMP_CMP_EQ", "OpMaskedEqual": "SCMP_CMP_MASKED_EQ",
       "OpNotEqual": "SCMP_CMP_NE", "OpGreaterEqual": "SCMP_CMP_GE"}
ACTIONS = {"ActAllow": "SCMP_ACT_ALLOW", "ActErrno": "SCMP_ACT_ERRNO"}

_NAMES = re.compile(r"Names:\s*\[\]string\{(.*?)\}", re.S)
_STR = re.compile(r'"([^"]+)"')


class SourceError(ValueError):
    """The Go source does not have the shape this generator understands."""


def _between(text: str, start: str, end: str) -> str:
    i = text.find(start)
    j = text.find(end, i + len(start))
    if i < 0 or j < 0:
        raise SourceError(f"cannot find {start!r} ... {end!r} in {SOURCE.name}")
    return text[i + len(start):j]


def _value(expr: str) -> int:
    expr = expr.strip()
    if "unix." in expr:
        total = 0
        for name in re.findall(r"unix\.(\w+)", expr):
            if name not in CLONE_FLAGS:
                raise SourceError(f"unknown constant unix.{name}")
            total |= CLONE_FLAGS[name]
        return total
    return int(expr, 0)


def _rules(block: str, text: str) -> list[dict]:
    """The ``specs.LinuxSyscall`` literals of ``block``, in order, as OCI JSON."""
    rules = []
    parts = [m.start() for m in _NAMES.finditer(block)] + [len(block)]
    for start, end in zip(parts, parts[1:]):
        chunk = block[start:end]
        names = _STR.findall(_NAMES.match(chunk).group(1))
        action = re.search(r"Action:\s*specs\.(\w+)", chunk)
        if action is None or action.group(1) not in ACTIONS:
            raise SourceError(f"rule for {names[:3]} has no known action")
        rule: dict = {"names": names, "action": ACTIONS[action.group(1)]}
        errno = re.search(r"ErrnoRet:\s*&(\w+)", chunk)
        if errno is not None:
            var = re.search(rf"{errno.group(1)}\s*:=\s*uint\(unix\.(\w+)\)", text)
            if var is None or var.group(1) not in ERRNOS:
                raise SourceError(f"unknown errno {errno.group(1)}")
            rule["errnoRet"] = ERRNOS[var.group(1)]
        args = []
        for a in re.finditer(r"\{\s*Index:\s*(\d+),\s*Value:\s*([^,]+?),\s*"
                             r"(?:ValueTwo:\s*([^,]+?),\s*)?Op:\s*specs\.(\w+),?\s*\}", chunk):
            args.append({"index": int(a.group(1)), "value": _value(a.group(2)),
                         "valueTwo": _value(a.group(3) or "0"), "op": OPS[a.group(4)]})
        if args:
            rule["args"] = args
        rules.append(rule)
    return rules


def _cases(block: str) -> dict[str, list[str]]:
    """``case "X":`` (or ``case "a", "b":``) → the names its rule allows."""
    out: dict[str, list[str]] = {}
    marks = list(re.finditer(r"case ((?:\"[^\"]+\",?\s*)+):", block))
    for m, nxt in zip(marks, [*marks[1:], None]):
        body = block[m.end():nxt.start() if nxt else len(block)]
        found = _NAMES.search(body)
        if found is None:
            continue
        for key in _STR.findall(m.group(1)):
            out[key] = _STR.findall(found.group(1))
    return out


def generate(source: Path = SOURCE) -> dict:
    """The profile parts of ``source`` (containerd's seccomp_default.go) as a dict."""
    text = source.read_text()
    base = _between(text, "syscalls := []specs.LinuxSyscall{", "s := &specs.LinuxSeccomp{")
    kernel = _between(text, "// include by kernel version", "// include by arch")
    version = re.search(r"KernelVersion\{Kernel:\s*(\d+),\s*Major:\s*(\d+)\}", kernel)
    if version is None:
        raise SourceError("no kernel version rule")
    arch_block = _between(text, "// include by arch", "admin := false")
    caps_block = _between(text, "admin := false", "if !admin {")
    non_admin = text[text.index("if !admin {"):]
    default_branch = non_admin[non_admin.index("default:"):]
    arch_fn = _between(text, "func arches()", "\n}\n")
    arches = {}
    for m in re.finditer(r'case "(\w+)":\s*return \[\]specs\.Arch\{([^}]*)\}', arch_fn):
        arches[m.group(1)] = ["SCMP_ARCH_" + a.upper() for a in
                                re.findall(r"specs\.Arch(\w+)", m.group(2))]
    return {
        "format": FORMAT,
        "source": "containerd contrib/seccomp/seccomp_default.go (DefaultProfile), "
                  "generated by kata/runtimes/containerd/seccompgen.py",
        "defaultAction": "SCMP_ACT_ERRNO",
        "architectures": arches,
        "syscalls": _rules(base, text),
        "kernel": [{"min": [int(version.group(1)), int(version.group(2))],
                    "names": _STR.findall(_NAMES.search(kernel).group(1))}],
        "arch": _cases(arch_block),
        "caps": _cases(caps_block),
        "non_admin": _rules(default_branch, text),
    }


def render(parts: dict) -> str:
    return json.dumps(parts, indent=1, sort_keys=True) + "\n"


def main() -> int:
    OUTPUT.write_text(render(generate()))
    print(f"wrote {OUTPUT}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
