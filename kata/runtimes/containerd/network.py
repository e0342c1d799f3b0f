"""Network mode "default": a fresh network namespace on a CNI bridge with NAT.

Debian's containernetworking-plugins (/usr/lib/cni): ``bridge`` (kata0, gateway,
ipMasq) with ``host-local`` IPAM, run on a named netns (/run/netns/kata-…) that
the step's container joins. Each netns has an owner record so a sweep can tear
down (CNI DEL, netns delete) what a killed kata left.
"""

from __future__ import annotations

import fcntl
import json
import os
import secrets
import shutil
import subprocess
import threading
from dataclasses import dataclass
from pathlib import Path

from kata.errors import KataError
from procs import owner_alive

CNI_PATH = "/usr/lib/cni"
NETNS_DIR = Path("/run/netns")
BRIDGE = "kata0"
SUBNET = "10.89.0.0/16"
# one bridge and one address pool per host, whichever containerd runs the step
HOST_DIR = Path("/run/kata/cni")
_LOCK = threading.Lock()  # the bridge plugin races with itself creating kata0


@dataclass(frozen=True, slots=True, kw_only=True)
class CniNetwork:
    state_dir: Path  # owner records of this runtime's namespaces
    subnet: str = SUBNET
    bridge: str = BRIDGE

    @property
    def records(self) -> Path:
        return self.state_dir / "netns"

    def _config(self) -> bytes:
        return json.dumps({
            "cniVersion": "1.0.0", "name": "kata", "type": "bridge", "bridge": self.bridge,
            "isGateway": True, "ipMasq": True, "hairpinMode": True,
            "ipam": {"type": "host-local", "ranges": [[{"subnet": self.subnet}]],
                     "routes": [{"dst": "0.0.0.0/0"}], "dataDir": str(HOST_DIR / "ipam")},
        }).encode()

    def _plugin(self, command: str, name: str) -> dict:
        plugin = Path(CNI_PATH) / "bridge"
        if not plugin.exists():
            raise KataError("runtime.cni_missing", "network 'default' needs the CNI plugins: "
                            "apt install containernetworking-plugins", exit_code=1)
        env = {"CNI_COMMAND": command, "CNI_CONTAINERID": name, "CNI_NETNS": str(NETNS_DIR / name),
               "CNI_IFNAME": "eth0", "CNI_PATH": CNI_PATH, "PATH": os.environ.get("PATH", "")}
        HOST_DIR.mkdir(parents=True, exist_ok=True)
        with _LOCK, open(HOST_DIR / "cni.lock", "a+") as lock:
            fcntl.flock(lock, fcntl.LOCK_EX)
            proc = subprocess.run([str(plugin)], input=self._config(), env=env,
                                  capture_output=True, timeout=60)
        if proc.returncode != 0:
            raise KataError("runtime.network_failed",
                            f"CNI {command} for {name} failed: "
                            f"{(proc.stdout or proc.stderr).decode(errors='replace').strip()}",
                            obj=name, exit_code=1)
        return json.loads(proc.stdout or b"{}")

    def setup(self, name: str, owner: str) -> str:
        """Create netns ``name`` on the bridge; return its path. Call teardown after."""
        if shutil.which("ip") is None:
            raise KataError("runtime.network_failed", "network 'default' needs iproute2: "
                            "apt install iproute2", exit_code=1)
        self.records.mkdir(parents=True, exist_ok=True)
        (self.records / name).write_text(owner)
        _ip("netns", "add", name)
        _ip("-n", name, "link", "set", "lo", "up")  # `ip netns add` leaves it down
        self._plugin("ADD", name)
        return str(NETNS_DIR / name)

    def setup_loopback(self, name: str, owner: str) -> str:
        """Create netns ``name`` with loopback only (a pod of network "none"); its path."""
        if shutil.which("ip") is None:
            raise KataError("runtime.network_failed", "a pod needs iproute2: "
                            "apt install iproute2", exit_code=1)
        self.records.mkdir(parents=True, exist_ok=True)
        (self.records / name).write_text(f"{owner}\nloopback\n")
        _ip("netns", "add", name)
        _ip("-n", name, "link", "set", "lo", "up")
        return str(NETNS_DIR / name)

    def teardown(self, name: str) -> None:
        """Release the address and the veth, delete the netns and its record; idempotent."""
        first: KataError | None = None
        try:
            loopback = "loopback" in (self.records / name).read_text().split()[1:]
        except (OSError, IndexError):
            loopback = False
        if (NETNS_DIR / name).exists():
            if not loopback:
                try:
                    self._plugin("DEL", name)
                except KataError as err:
                    first = err
            try:
                _ip("netns", "delete", name)
            except KataError as err:
                if (NETNS_DIR / name).exists():  # else another sweeper deleted it first
                    first = first or err
        if first is not None:
            raise first
        try:
            (self.records / name).unlink()
        except FileNotFoundError:
            pass

    def sweep(self, everything: bool = False) -> int:
        if not self.records.is_dir():
            return 0
        n = 0
        for record in self.records.iterdir():
            try:
                owner = (record.read_text().split() or [""])[0]
            except OSError:
                continue
            if everything or not owner_alive(owner):
                self.teardown(record.name)
                n += 1
        return n

    def leftovers(self) -> list[str]:
        """Namespaces on record that no live pool of this process keeps for reuse (an
        idle pooled namespace is held on purpose until its runtime drains)."""
        if not self.records.is_dir():
            return []
        pooled = NetnsPool.pooled()
        return sorted(p.name for p in self.records.iterdir() if p.name not in pooled)


class NetnsPool:
    """Ready "default" network namespaces, handed from a finished step to the next one.

    Setting a namespace up (``ip netns add``, loopback up, CNI ADD) and tearing it down
    (CNI DEL, ``ip netns delete``) costs ~50 ms of CPU in five processes per step, twice
    what kata spends on the step itself. A namespace whose step's task is deleted holds
    no process any more, and a step cannot change its configuration (no CAP_NET_ADMIN,
    /proc/sys read-only: see spec.py), so the next step of the same runtime gets it as
    it was made: loopback up, one veth on the bridge, one address, the default route.
    What is left is kernel state that dies with sockets (TIME_WAIT, conntrack entries).

    Namespaces are only reused inside one runtime (one kata process, one run's trust);
    ``drain`` tears the idle ones down (the runtime drains before it reports leftovers,
    sweeps or closes). Each has an owner record like any other, so a killed kata's
    pool is swept by the next connect.
    """

    _all_idle: set[str] = set()  # idle in any pool of this process (see leftovers())
    _all_lock = threading.Lock()

    def __init__(self, network: CniNetwork) -> None:
        self.network = network
        self._idle: list[str] = []
        self._lock = threading.Lock()

    @classmethod
    def pooled(cls) -> frozenset[str]:
        """The namespaces idle in every live pool of this process."""
        with cls._all_lock:
            return frozenset(cls._all_idle)

    @classmethod
    def _note(cls, add: tuple[str, ...] = (), drop: tuple[str, ...] = ()) -> None:
        with cls._all_lock:
            cls._all_idle.update(add)
            cls._all_idle.difference_update(drop)

    @property
    def idle(self) -> int:
        """How many namespaces wait for their next step."""
        with self._lock:
            return len(self._idle)

    def acquire(self, owner: str) -> tuple[str, str]:
        """(name, path) of a ready namespace: an idle one, else a new one. (Waiting for
        a finished step's namespace to come back instead was tried: it saved a few
        namespaces per run and put a task deletion, ~20 ms, before every step.)"""
        with self._lock:
            if self._idle:
                name = self._idle.pop()
                self._note(drop=(name,))
                return name, str(NETNS_DIR / name)
        name = f"kata-n-{secrets.token_hex(8)}"
        try:
            return name, self.network.setup(name, owner)
        except BaseException:
            self.network.teardown(name)
            raise

    def release(self, name: str, *, reusable: bool) -> None:
        """Give a namespace back: to the pool when nothing can still run in it
        (``reusable``: the step's task was deleted), else tear it down."""
        if reusable and (NETNS_DIR / name).exists():
            with self._lock:
                self._idle.append(name)
                self._note(add=(name,))
            return
        self.network.teardown(name)

    def drain(self) -> None:
        """Tear down every idle namespace; the first failure is raised after all ran."""
        with self._lock:
            idle, self._idle = self._idle, []
            self._note(drop=tuple(idle))
        first: BaseException | None = None
        for name in idle:
            try:
                self.network.teardown(name)
            except KataError as err:
                first = first or err
        if first is not None:
            raise first


def _ip(*args: str) -> None:
    proc = subprocess.run(["ip", *args], capture_output=True, text=True, timeout=30)
    if proc.returncode != 0:
        raise KataError("runtime.network_failed", f"ip {' '.join(args)}: {proc.stderr.strip()}",
                        exit_code=1)
