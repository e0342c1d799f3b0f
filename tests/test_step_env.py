"""What a step's container looks like from inside, against what Docker, GitHub Actions,
GitLab and Woodpecker users expect (docs/architecture.md, "The step's container").

Each test runs a real step, directly (crun) and as a containerd task, and reads the
environment the way a user's script would (`ulimit -n`, `df`, `cat /etc/hosts`)."""

from __future__ import annotations

import resource
import threading

import pytest

from kata.runtimes.base import StepSpec
from kata.runtimes.containerd.spec import NOFILE_HARD, NOFILE_SOFT


def run(rt, digest, script, **kw):
    lines: list[str] = []
    lock = threading.Lock()

    def sink(stream, line):
        with lock:
            lines.append(line.decode())

    status = rt.run(StepSpec(image=digest, argv=("sh", "-c", script), timeout=60, **kw),
                    sink, threading.Event())
    return status, lines


@pytest.mark.integration
@pytest.mark.parametrize("user", ["", "1000:1000"])
def test_open_files_limit_is_not_containerds_1024(each_step_runner, busybox_digest, user):
    # redis-server cut maxclients to 992 under 1024; test runners, JVMs and webpack need more.
    # 65536:524288, or less where this host's own hard limit is lower (this CI's is 20000:
    # a container without CAP_SYS_RESOURCE)
    ceiling = resource.getrlimit(resource.RLIMIT_NOFILE)[1]
    soft, hard = min(NOFILE_SOFT, ceiling), min(NOFILE_HARD, ceiling)
    assert soft > 1024
    status, lines = run(each_step_runner, busybox_digest,
                        f"echo nofile=$(ulimit -n):$(ulimit -Hn); ulimit -n {hard} && "
                        "echo raised=$(ulimit -n)", user=user)
    assert status == 0, lines
    assert lines == [f"nofile={soft}:{hard}", f"raised={hard}"]


@pytest.mark.integration
@pytest.mark.parametrize("network", ["none", "default"])
def test_localhost_and_the_hostname_resolve_without_services(each_step_runner, debian_digest,
                                                             network):
    # Docker writes /etc/hosts for every container; an image ships none, and glibc then
    # asks DNS for "localhost" (none: no answer): `curl localhost:8080` and Java's
    # InetAddress.getLocalHost() failed in a step without services
    status, lines = run(each_step_runner, debian_digest,
                        "getent hosts localhost kata | sort; hostname; cat /etc/hosts; "
                        "{ echo x >> /etc/hosts; } 2>/dev/null || echo read-only",
                        network=network)  # root: only the read-only bind stops it
    assert status == 0, lines
    # getent asks for IPv6 first: localhost is ::1, kata 127.0.0.1
    assert lines[:2] == ["127.0.0.1       localhost kata",
                         "::1             localhost ip6-localhost ip6-loopback"]
    assert lines[2:5] == ["kata", "127.0.0.1\tlocalhost kata",
                          "::1\tlocalhost ip6-localhost ip6-loopback"]
    assert lines[-1] == "read-only"


@pytest.mark.integration
def test_dev_shm_holds_what_the_memory_limit_allows(each_step_runner, busybox_digest):
    # Docker's 64 MiB /dev/shm is a known pain (Chromium, PyTorch's DataLoader workers,
    # PostgreSQL's parallel queries); tmpfs pages count against the step's memory cgroup,
    # so sizing it to the memory limit gives a step nothing beyond that limit
    from kata.resources import Resources

    status, lines = run(each_step_runner, busybox_digest,
                        "df -k /dev/shm | tail -1 | awk '{print $2}'; "
                        "dd if=/dev/zero of=/dev/shm/x bs=1M count=100 2>/dev/null && "
                        "echo wrote-100MiB", resources=Resources(memory=256 << 20))
    assert status == 0, lines
    assert lines == [str(256 << 10), "wrote-100MiB"]


@pytest.mark.integration
def test_no_core_files_unless_a_step_asks(each_step_runner, busybox_digest):
    # the core limit was whatever kata's own process had: a host with `ulimit -c
    # unlimited` left core files in workspaces (and artifacts) that another host's run of
    # the same key did not. Now 0, as on GitHub-hosted runners; the hard limit is the
    # host's, so `ulimit -c unlimited` still works where the host allows it
    soft, ceiling = resource.getrlimit(resource.RLIMIT_CORE)
    want = "unlimited" if ceiling == resource.RLIM_INFINITY else str(ceiling // 1024)
    resource.setrlimit(resource.RLIMIT_CORE, (ceiling, ceiling))  # a host that dumps cores
    try:
        status, lines = run(each_step_runner, busybox_digest,
                            "echo core=$(ulimit -c):$(ulimit -Hc)")
    finally:
        resource.setrlimit(resource.RLIMIT_CORE, (soft, ceiling))
    assert status == 0, lines
    assert lines == [f"core=0:{want}"]


@pytest.mark.integration
@pytest.mark.parametrize(("user", "home"), [("", "/root"), ("1000:1000", "/"),
                                            ("65534:65534", "/")])
def test_home_is_the_same_on_crun_and_runc(each_oci_runtime, busybox_digest, user, home):
    # both look the user up in the image's /etc/passwd; for a uid it lacks, runc (and
    # Docker) say HOME=/ while crun left HOME unset: one spec, two environments, and pip,
    # npm and `git config --global` complain without HOME
    from kata.realise.spec import shell_script

    lines: list[str] = []
    status = each_oci_runtime.run(
        StepSpec(image=busybox_digest, argv=("/bin/sh", "-c", shell_script(
            ['echo "HOME=${HOME-unset}"'])), timeout=60, user=user),
        lambda _s, line: lines.append(line.decode()), threading.Event())
    assert status == 0, lines
    assert lines == [f"HOME={home}"]


@pytest.mark.integration
def test_dev_holds_dockers_devices_and_no_more(each_step_runner, busybox_digest):
    # what `docker run` shows: null, zero, full, random, urandom, tty, ptmx and the
    # fd links; no /dev/fuse (FUSE mounts need CAP_SYS_ADMIN and a device the sandbox
    # denies), no /dev/kmsg, no disks. umask 022 as under Docker.
    status, lines = run(each_step_runner, busybox_digest, """
        ls /dev | tr '\\n' ' '; echo
        for d in null zero full random urandom tty; do stat -c "%n %t:%T %a" /dev/$d; done
        head -c 4 /dev/urandom | wc -c; echo x > /dev/full 2>/dev/null || echo full-ENOSPC
        echo x > /dev/null && echo null-ok
        exec 3<> /dev/ptmx && echo ptmx-ok
        echo umask=$(umask)""")
    assert status == 0, lines
    assert lines[0].split() == ["core", "fd", "full", "mqueue", "null", "ptmx", "pts", "random",
                                "shm", "stderr", "stdin", "stdout", "tty", "urandom", "zero"]
    assert lines[1:] == ["/dev/null 1:3 666", "/dev/zero 1:5 666", "/dev/full 1:7 666",
                         "/dev/random 1:8 666", "/dev/urandom 1:9 666", "/dev/tty 5:0 666",
                         "4", "full-ENOSPC", "null-ok", "ptmx-ok", "umask=0022"]


def test_a_bridge_step_gets_resolvers_it_can_reach(tmp_path):
    # a host on systemd-resolved lists only 127.0.0.53 in /etc/resolv.conf: from a step's
    # own network namespace that is the step's loopback, where nothing answers. Docker
    # binds systemd-resolved's upstream list (/run/systemd/resolve/resolv.conf) instead.
    from kata.runtimes.containerd.spec import bridge_resolv_conf

    etc, upstream = tmp_path / "etc.conf", tmp_path / "upstream.conf"
    etc.write_text("# stub\nnameserver 127.0.0.53\noptions edns0 trust-ad\nsearch lan\n")
    upstream.write_text("nameserver 10.0.0.1\nnameserver ::1\nsearch lan\n")
    assert bridge_resolv_conf(str(etc), str(upstream)) == str(upstream)
    etc.write_text("nameserver 10.255.255.53\n")  # reachable through NAT: kept
    assert bridge_resolv_conf(str(etc), str(upstream)) == str(etc)
    etc.write_text("nameserver 127.0.0.1\nnameserver ::1\n")
    upstream.write_text("nameserver 127.0.0.1\n")  # nothing better: the host's, as before
    assert bridge_resolv_conf(str(etc), str(upstream)) == str(etc)
    upstream.unlink()
    assert bridge_resolv_conf(str(etc), str(upstream)) == str(etc)
    etc.unlink()
    assert bridge_resolv_conf(str(etc), str(upstream)) is None


@pytest.mark.integration
def test_run_holds_the_images_directories_as_under_docker(each_oci_runtime, debian_digest):
    # Docker mounts no tmpfs on /run: the image's /run is what a container sees. containerd's
    # default spec mounts an empty one, which hid what images put there for non-root
    # servers (postgres:16's /var/run/postgresql, 3777 postgres: with `user: "999:999"` the
    # server could not create its socket's lock file). Found by the psycopg2 trial. A tmpfs
    # filled by tmpcopyup still made /run itself 755 root (a 1777 /run refused user 1000)
    # and, under runc, cut its copies' modes by the umask: now no tmpfs, on both runtimes.
    # Debian's minimal image ships /run 755 and /run/lock 1777
    status, lines = run(each_oci_runtime, debian_digest,
                        "stat -c '%a %U' /run /run/lock; touch /run/lock/x && echo wrote; "
                        "grep -c ' /run ' /proc/mounts || true",
                        user="1000:1000")
    assert status == 0, lines
    assert lines == ["755 root", "1777 root", "wrote", "0"], lines

