"""A spec's seccomp profile compiled to BPF once per process, for crun.

Every step's spec carries the same ``linux.seccomp`` profile (sandbox.py), and crun
compiles it with libseccomp for every container: ~2 ms of CPU per step, a third of what
the whole sandbox costs (bench/sandbox_bench.py; crun 1.8's own cache of compiled
filters needs libgcrypt, which Debian's build lacks). crun takes the compiled program
instead from the annotation ``run.oci.seccomp_bpf_data`` (base64; crun(1), "Extensions
to OCI"): it then ignores the profile's rules (its ``flags`` still apply) and loads those
bytes with ``seccomp(SECCOMP_SET_MODE_FILTER)``, exactly as it loads its own output.

``bpf_annotations`` compiles a profile the way crun 1.8's ``libcrun_generate_seccomp``
does (libcrun/seccomp.c), through the same library (libseccomp, via ctypes): default
action, architectures, then each rule's names in order, a rule whose action is the
default skipped, an unknown name skipped, several comparisons of one argument added
as separate rules. The result is byte-identical to crun's own (tests/test_sandbox.py
compares them on this host), so the filter a step runs under does not change; the
annotation replaces the profile's rules in crun's specs (task.py): crun would ignore them,
and carrying 9 KB of them through containerd, the shim and crun cost ~2 ms of CPU per
step. runc has no such annotation and gets the profile. Only a crun that takes the
annotation gets it (``takes_compiled_filter``); where libseccomp cannot be loaded no
annotation is given and crun gets the profile and compiles it itself.
"""

from __future__ import annotations

import base64
import ctypes
import functools
import json
import logging
import os
from collections.abc import Mapping
from typing import Any

ANNOTATION = "run.oci.seccomp_bpf_data"
LIBRARY = "libseccomp.so.2"
CRUN_SINCE = (1, 0)  # the annotation came in crun 0.17; older ones would ignore it

# libseccomp's seccomp.h
_ACT_KILL_THREAD, _ACT_KILL_PROCESS, _ACT_TRAP = 0x00000000, 0x80000000, 0x00030000
_ACT_ERRNO, _ACT_TRACE, _ACT_LOG, _ACT_ALLOW = 0x00050000, 0x7FF00000, 0x7FFC0000, 0x7FFF0000
_ACT_NOTIFY = 0x7FC00000
_OPS = {"SCMP_CMP_NE": 1, "SCMP_CMP_LT": 2, "SCMP_CMP_LE": 3, "SCMP_CMP_EQ": 4,
        "SCMP_CMP_GE": 5, "SCMP_CMP_GT": 6, "SCMP_CMP_MASKED_EQ": 7}
_NR_SCMP_ERROR = -1
_EEXIST = 17
_EPERM = 1

log = logging.getLogger("kata.runtime")


class SeccompCompileError(Exception):
    """The profile cannot be compiled here (no libseccomp, or libseccomp refused it)."""


class _ArgCmp(ctypes.Structure):
    _fields_ = [("arg", ctypes.c_uint), ("op", ctypes.c_int),
                ("datum_a", ctypes.c_uint64), ("datum_b", ctypes.c_uint64)]


@functools.cache
def _library() -> ctypes.CDLL:
    try:
        lib = ctypes.CDLL(LIBRARY, use_errno=True)
    except OSError as err:
        raise SeccompCompileError(f"cannot load {LIBRARY}: {err}") from None
    lib.seccomp_init.restype = ctypes.c_void_p
    lib.seccomp_init.argtypes = [ctypes.c_uint32]
    lib.seccomp_release.argtypes = [ctypes.c_void_p]
    lib.seccomp_arch_resolve_name.restype = ctypes.c_uint32
    lib.seccomp_arch_resolve_name.argtypes = [ctypes.c_char_p]
    lib.seccomp_arch_add.argtypes = [ctypes.c_void_p, ctypes.c_uint32]
    lib.seccomp_syscall_resolve_name.argtypes = [ctypes.c_char_p]
    lib.seccomp_rule_add_array.argtypes = [ctypes.c_void_p, ctypes.c_uint32, ctypes.c_int,
                                           ctypes.c_uint, ctypes.POINTER(_ArgCmp)]
    lib.seccomp_export_bpf.argtypes = [ctypes.c_void_p, ctypes.c_int]
    return lib


def _action(name: str, errno_ret: int) -> int:
    """crun's get_seccomp_action: an OCI action name -> libseccomp's value."""
    simple = {"SCMP_ACT_ALLOW": _ACT_ALLOW, "SCMP_ACT_KILL": _ACT_KILL_THREAD,
              "SCMP_ACT_KILL_THREAD": _ACT_KILL_THREAD, "SCMP_ACT_KILL_PROCESS": _ACT_KILL_PROCESS,
              "SCMP_ACT_TRAP": _ACT_TRAP, "SCMP_ACT_LOG": _ACT_LOG, "SCMP_ACT_NOTIFY": _ACT_NOTIFY}
    if name in simple:
        return simple[name]
    if name == "SCMP_ACT_ERRNO":
        return _ACT_ERRNO | (errno_ret & 0xFFFF)
    if name == "SCMP_ACT_TRACE":
        return _ACT_TRACE | (errno_ret & 0xFFFF)
    raise SeccompCompileError(f"unknown seccomp action {name!r}")


def compile_profile(profile: Mapping[str, Any]) -> bytes:
    """The BPF program (struct sock_filter[], 8 bytes each) crun would compile from the
    OCI ``linux.seccomp`` object ``profile``. SeccompCompileError when it cannot."""
    lib = _library()
    default_errno = int(profile.get("defaultErrnoRet", _EPERM))
    default = _action(str(profile.get("defaultAction", "")), default_errno)
    ctx = lib.seccomp_init(default)
    if not ctx:
        raise SeccompCompileError("seccomp_init failed")
    try:
        for arch in profile.get("architectures") or ():
            name = str(arch).removeprefix("SCMP_ARCH_").lower().encode()
            token = lib.seccomp_arch_resolve_name(name)
            if token == 0:
                raise SeccompCompileError(f"unknown seccomp architecture {arch!r}")
            ret = lib.seccomp_arch_add(ctx, token)
            if ret < 0 and ret != -_EEXIST:
                raise SeccompCompileError(f"seccomp_arch_add {arch}: {os.strerror(-ret)}")
        for rule in profile.get("syscalls") or ():
            action = _action(str(rule["action"]), int(rule.get("errnoRet", _EPERM)))
            if action == default:
                continue
            args = list(rule.get("args") or ())[:6]
            cmps = []
            for arg in args:
                if not 0 <= int(arg["index"]) < 6:
                    raise SeccompCompileError(f"invalid seccomp argument index {arg['index']}")
                if arg["op"] not in _OPS:
                    raise SeccompCompileError(f"unknown seccomp operator {arg['op']!r}")
                cmps.append(_ArgCmp(int(arg["index"]), _OPS[arg["op"]],
                                    int(arg.get("value", 0)), int(arg.get("valueTwo", 0))))
            indexes = [c.arg for c in cmps]
            # one rule comparing every argument; crun adds one rule per comparison when
            # an argument is compared twice (libseccomp refuses that in one rule)
            groups = [cmps] if len(set(indexes)) == len(indexes) else [[c] for c in cmps]
            arrays = [(_ArgCmp * len(g))(*g) for g in groups]
            for name in rule.get("names") or ():
                nr = lib.seccomp_syscall_resolve_name(str(name).encode())
                if nr == _NR_SCMP_ERROR:
                    continue  # crun warns and skips a name libseccomp does not know
                for array in arrays:
                    ret = lib.seccomp_rule_add_array(ctx, action, nr, len(array), array)
                    if ret < 0:
                        raise SeccompCompileError(f"seccomp_rule_add {name}: {os.strerror(-ret)}")
        fd = os.memfd_create("kata-seccomp", os.MFD_CLOEXEC)
        try:
            ret = lib.seccomp_export_bpf(ctx, fd)
            if ret < 0:
                raise SeccompCompileError(f"seccomp_export_bpf: {os.strerror(-ret)}")
            os.lseek(fd, 0, os.SEEK_SET)
            chunks = []
            while chunk := os.read(fd, 1 << 16):
                chunks.append(chunk)
            return b"".join(chunks)
        finally:
            os.close(fd)
    finally:
        lib.seccomp_release(ctx)


@functools.lru_cache(maxsize=16)
def _encoded(profile_json: str) -> str:
    """base64 of the compiled profile; "" when it cannot be compiled here."""
    try:
        return base64.b64encode(compile_profile(json.loads(profile_json))).decode()
    except SeccompCompileError as err:
        log.warning("seccomp profile not precompiled (crun compiles it per container): %s", err)
        return ""


@functools.cache
def takes_compiled_filter(crun: str) -> bool:
    """Whether the crun binary at ``crun`` loads ``ANNOTATION`` (version >= CRUN_SINCE,
    from ``crun --version``; built with seccomp). False when it cannot be told: a crun
    that ignored the annotation would run a step with no filter at all, since the spec
    then carries no rules."""
    import re
    import subprocess

    try:
        out = subprocess.run([crun, "--version"], capture_output=True, text=True,
                             timeout=10, check=False).stdout
    except (OSError, subprocess.SubprocessError):
        return False
    found = re.search(r"^crun version (\d+)\.(\d+)", out, re.M)
    return (found is not None and (int(found[1]), int(found[2])) >= CRUN_SINCE
            and "+SECCOMP" in out)


def bpf_annotations(seccomp: Mapping[str, Any] | None) -> dict[str, str]:
    """``{ANNOTATION: base64 BPF}`` for a spec whose ``linux.seccomp`` is ``seccomp``;
    {} when it has none (nothing to compile) or it cannot be compiled here."""
    if not seccomp:
        return {}
    encoded = _encoded(json.dumps(seccomp, separators=(",", ":")))
    return {ANNOTATION: encoded} if encoded else {}
