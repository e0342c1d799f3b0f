"""The runtime's part of kata's host config (/etc/kata/config.yaml or $KATA_CONFIG, read by
``kata.hostconfig``, the one loader; ``protected:`` belongs to ``kata.trust``).

    containerd:
      address: /run/containerd/containerd.sock   # default: system socket if it answers, else kata's own
      state_dir: /var/lib/kata/containerd        # where kata's own containerd lives
      stop_grace: 5s                             # between SIGTERM and SIGKILL (a duration, or seconds)
      oci_runtime: auto                          # auto | crun | runc (kata/oci_runtime.py)
      shared_shim: true                          # a few containerd shims for all of a run's containers
      step_runner: direct                        # direct: kata runs crun for steps without services; task: containerd tasks
      disk_reserve: 5%                           # kill the step filling a disk below this (diskguard.py); 0: off
    offline: false                               # never ask a registry
    registries:
      docker.io:
        mirrors: ["http://127.0.0.1:5000"]       # tried in order before the registry itself
      registry.local:5000:
        plain_http: true                         # speak http, not https
        skip_verify: false                       # TLS without certificate check

A host declared under ``registries:`` (or as a mirror) is one an untrusted run's pulls may
reach even on a private address (``registry.ConfinedBackend``); an entry may be empty
(``registry.lan: {}``) just to declare it.

Unknown keys are errors (a typo must not silently do nothing).
"""

from __future__ import annotations

import math
import os
from dataclasses import dataclass, field
from typing import Any

from kata.errors import KataError
from kata.hostconfig import DEFAULT_CONFIG, HostConfig, load_host_config  # noqa: F401
from kata.hostconfig import check_keys as _check_keys
from kata.model import Duration

from kata.oci_runtime import CHOICES
from kata.runtimes.diskguard import Reserve, parse_reserve

STEP_RUNNERS = ("direct", "task")  # containerd.step_runner (direct.py)


@dataclass(frozen=True, slots=True, kw_only=True)
class RegistryConfig:
    mirrors: tuple[str, ...] = ()
    plain_http: bool = False
    skip_verify: bool = False


@dataclass(frozen=True, slots=True, kw_only=True)
class RuntimeConfig:
    address: str | None = None
    state_dir: str | None = None
    stop_grace: float = 5.0
    oci_runtime: str = "auto"  # one of kata.oci_runtime.CHOICES
    shared_shim: bool = True  # a few shims per runtime object (shimgroup.py), not one per container
    # "direct": steps without services run by kata's own `crun run` (direct.py) where the
    # host allows it; "task": every container is a containerd task
    step_runner: str = "direct"
    # what each filesystem a step writes to keeps free: the step holding most is killed
    # below it (kata.runtimes.diskguard)
    disk_reserve: Reserve = Reserve()
    offline: bool = False
    registries: dict[str, RegistryConfig] = field(default_factory=dict)

    def registry(self, host: str) -> RegistryConfig:
        return self.registries.get(host, RegistryConfig())


def _seconds(value: Any, where: str, path: str) -> float:
    """A duration in the config: a number of seconds (``5``, ``2.5``) or
    ``kata.model.Duration``'s grammar (``5s``, ``1m``, ``0``)."""
    try:
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            if not math.isfinite(value):
                raise ValueError(value)
            return Duration(millis=round(value * 1000)).seconds
        return Duration.parse(value).seconds
    except ValueError:
        raise KataError("config.bad_value", f"{path}: {where} must be a duration (5s, 1m) or a "
                        f"number of seconds, got {value!r}", obj=str(path)) from None


def load_runtime_config(path: str | os.PathLike[str] | None = None) -> RuntimeConfig:
    """Read the config; a missing default file means all defaults."""
    return runtime_config(load_host_config(path))


def runtime_config(host: HostConfig) -> RuntimeConfig:
    """The runtime's sections of a host config read by ``kata.hostconfig``.

    KataError config.unknown_key, config.bad_value (exit 2), naming the file.
    """
    p = host.path
    top = host.doc
    cd = _check_keys(top.get("containerd"), {"address", "state_dir", "stop_grace",
                                              "oci_runtime", "shared_shim", "step_runner",
                                              "disk_reserve"},
                     "containerd", p)
    regs = {}
    for name, value in (_check_keys(top.get("registries"), set(top.get("registries") or {}),
                                    "registries", p)).items():
        r = _check_keys(value, {"mirrors", "plain_http", "skip_verify"}, f"registries.{name}",
                        p)
        mirrors = r.get("mirrors") or []
        if not isinstance(mirrors, list) or not all(
                isinstance(m, str) and m.startswith(("http://", "https://")) for m in mirrors):
            raise KataError("config.bad_value", f"{p}: registries.{name}.mirrors must be a list "
                            "of URLs", obj=p)
        regs[str(name)] = RegistryConfig(mirrors=tuple(mirrors),
                                         plain_http=bool(r.get("plain_http", False)),
                                         skip_verify=bool(r.get("skip_verify", False)))
    grace = _seconds(cd.get("stop_grace", 5), "containerd.stop_grace", p)
    oci = cd.get("oci_runtime", "auto")
    if oci not in CHOICES:
        raise host.error("config.bad_value", f"containerd.oci_runtime must be one of "
                         f"{', '.join(CHOICES)}, got {oci!r}", "containerd", "oci_runtime")
    shared = cd.get("shared_shim", True)
    if not isinstance(shared, bool):
        raise host.error("config.bad_value", f"containerd.shared_shim must be true or false, "
                         f"got {shared!r}", "containerd", "shared_shim")
    runner = cd.get("step_runner", "direct")
    if runner not in STEP_RUNNERS:
        raise host.error("config.bad_value", f"containerd.step_runner must be one of "
                         f"{', '.join(STEP_RUNNERS)}, got {runner!r}", "containerd",
                         "step_runner")
    try:
        reserve = parse_reserve(cd.get("disk_reserve", "5%"))
    except ValueError as err:
        raise host.error("config.bad_value", f"containerd.disk_reserve must be {err}",
                         "containerd", "disk_reserve") from None
    return RuntimeConfig(address=cd.get("address"), state_dir=cd.get("state_dir"),
                         stop_grace=grace, oci_runtime=oci, shared_shim=shared,
                         step_runner=runner, disk_reserve=reserve,
                         offline=bool(top.get("offline", False)),
                         registries=regs)
