"""Hostile steps, through what they hand back: their exit status and the cache directories
a later run restores. Each test is an attack that worked before its fix (real containerd)."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import yaml

from procs.leftovers import remove_tree
from support.cli import KataProcess
from support.git import git

pytestmark = pytest.mark.integration

IMAGE = "kata.local/busybox:latest"


def _nest(root: Path, levels: int) -> Path:
    """``root/d/d/…/d``, ``levels`` deep, made one level at a time (``os.makedirs``
    recurses per level, deeper than Python allows)."""
    root.mkdir()
    fd = os.open(root, os.O_RDONLY | os.O_DIRECTORY)
    try:
        for _ in range(levels):
            os.mkdir("d", dir_fd=fd)
            nxt = os.open("d", os.O_RDONLY | os.O_DIRECTORY, dir_fd=fd)
            os.close(fd)
            fd = nxt
    finally:
        os.close(fd)
    return Path(str(root) + "/d" * levels)


def _repo(tmp_path: Path, steps: list[dict], settings: dict | None = None) -> Path:
    repo = tmp_path / "repo"
    repo.mkdir()
    (repo / "x").write_text("x\n")
    (repo / ".kata-ci.yaml").write_text(yaml.safe_dump(
        {"pipeline": "hostile", **({"settings": settings} if settings else {}), "steps": steps}))
    git(repo, "init", "-q", "-b", "main")
    git(repo, "add", "-A")
    git(repo, "commit", "-q", "-m", "hostile")
    return repo


def test_a_step_exiting_124_is_not_reported_as_timed_out(tmp_path, containerd_daemon, runtime):
    """124 is GNU ``timeout``'s status, and was the runtime's for a step it killed on its
    ``timeout:``: a step that exits 124 itself (or runs ``timeout 1 cmd``) was reported
    ``timed out after 10m`` after a second, and retried under ``retry: {on: [timeout]}``."""
    repo = _repo(tmp_path, [
        {"name": "liar", "image": IMAGE, "inputs": ["x"], "timeout": "10m",
         "retry": {"max": 2, "on": ["timeout"]}, "commands": ["exit 124"]},
        {"name": "quitter", "image": IMAGE, "inputs": ["x"], "commands": ["exit 130"]}],
        settings={"fail_fast": False})
    kata = KataProcess(repo, store=tmp_path / "store", address=containerd_daemon.address)
    run = kata("run")
    assert run.returncode == 1, run.stdout + run.stderr
    lines = run.stdout.splitlines()
    assert [line for line in lines if line.startswith("[FAIL] liar")][0].startswith(
        "[FAIL] liar (exit 124, "), run.stdout
    assert [line for line in lines if line.startswith("[FAIL] quitter")][0].startswith(
        "[FAIL] quitter (exit 130, "), run.stdout  # not [CANCEL]: kata cancelled nothing
    assert not [line for line in lines if line.startswith(("[RETRY]", "[CANCEL]"))], run.stdout
    assert lines[-1].startswith("[DONE] 2 steps: 2 failed"), lines[-1]


def test_a_real_timeout_is_still_one(tmp_path, containerd_daemon, runtime):
    repo = _repo(tmp_path, [{"name": "slow", "image": IMAGE, "inputs": ["x"], "timeout": "1s",
                             "commands": ["sleep 30"]}])
    kata = KataProcess(repo, store=tmp_path / "store", address=containerd_daemon.address)
    run = kata("run")
    assert run.returncode == 1, run.stdout + run.stderr
    assert "[FAIL] slow (timed out after 1s, " in run.stdout, run.stdout


@pytest.fixture
def deep_tmp(tmp_path):
    yield tmp_path
    for child in tmp_path.iterdir():
        remove_tree(str(child))


def test_a_cache_directory_deeper_than_python_recurses_is_restored_to_a_user(
        deep_tmp, containerd_daemon, runtime):
    """A step running as a user saves a cache directory nested 1500 levels deep; the next
    run restores it and gives it to that user before the step starts. That walk was
    ``os.walk``, which recurses on Python 3.11: a RecursionError, a traceback, the whole
    run lost (an untrusted branch could do it to its own quarantine's runs, a careless
    tool to main's)."""
    tmp_path = deep_tmp
    deep = "p=$(printf 'd/%.0s' $(seq 1500)); mkdir -p c/$p && echo bottom > c/${p}f"
    repo = _repo(tmp_path, [{"name": "cached", "image": IMAGE, "inputs": ["x"], "user": "1000",
                             "cache": {"paths": ["c/"]},
                             "commands": ["cat x", deep]}])
    kata = KataProcess(repo, store=tmp_path / "store", address=containerd_daemon.address,
                       timeout=300)
    first = kata("run")
    assert first.returncode == 0, first.stdout + first.stderr
    (repo / "x").write_text("y\n")  # a miss: the step runs again, its cache restored
    git(repo, "commit", "-qam", "y")
    second = kata("run")  # KataProcess asserts no traceback
    assert second.returncode == 0, second.stdout + second.stderr
    assert "cached | y" in second.stdout.splitlines(), second.stdout
    assert list((tmp_path / "store" / "local" / "work").iterdir()) == []


def test_settling_and_stamping_a_deep_merged_tree_takes_any_depth(deep_tmp):
    """The same kind of walk over trees extracted from artifacts (a merged stack, an
    unpacked copy an older kata made): iterative now."""
    from store.tree import STEP_MTIME_NS, made_copy, settle_dir_mtimes

    root = deep_tmp / "merged"
    p = _nest(root, 1500)
    (p / "f").write_text("x")
    settle_dir_mtimes(str(root))
    assert os.stat(p).st_mtime_ns == STEP_MTIME_NS == os.stat(root).st_mtime_ns
    os.utime(root, ns=(0, 0))
    os.utime(p / "f", ns=(0, 0))
    assert made_copy(str(root))
    assert os.stat(p / "f").st_mtime_ns == STEP_MTIME_NS == os.stat(root).st_mtime_ns


ESCAPES = ("printf 'a\\033]0;PWNED\\007b\\033]52;c;ZWNobyBwd25lZA==\\007c\\033[2J"
           "\\033[31mred\\033[0m\\n'")


def test_a_steps_escape_sequences_never_reach_the_readers_terminal(tmp_path, containerd_daemon,
                                                                   runtime):
    """A step's output went to ``kata run``'s and ``kata logs``' stdout as it was written:
    an untrusted branch could retitle the terminal of whoever read its log on the server,
    clear it, or write their clipboard (OSC 52), and fake kata's own lines with cursor
    moves. Colours still pass; everything else is shown in caret notation."""
    repo = _repo(tmp_path, [{"name": "esc", "image": IMAGE, "inputs": ["x"],
                             "commands": [ESCAPES]}])
    kata = KataProcess(repo, store=tmp_path / "store", address=containerd_daemon.address)
    shown = "esc | a^[]0;PWNED^Gb^[]52;c;ZWNobyBwd25lZA==^Gc^[[2J\x1b[31mred\x1b[0m"
    run = kata("run")
    assert run.returncode == 0, run.stdout + run.stderr
    assert shown in run.stdout.splitlines(), run.stdout
    logs = kata("logs")  # click drops colours on a pipe (not on a terminal)
    assert shown.removeprefix("esc | ").replace("\x1b[31m", "").replace("\x1b[0m", "") \
        in logs.stdout.splitlines(), logs.stdout
    for out in (run.stdout, logs.stdout):
        assert "\x1b]" not in out and "\x1b[2J" not in out and "\x07" not in out


def test_terminal_safe_keeps_colours_and_shows_every_other_control():
    from kata.report.text import terminal_safe

    assert terminal_safe("plain \t text") == "plain \t text"
    assert terminal_safe("\x1b[1;31mred\x1b[0m") == "\x1b[1;31mred\x1b[0m"
    assert terminal_safe("\x1b]8;;http://evil\x1b\\link") == "^[]8;;http://evil^[\\link"
    assert terminal_safe("\x9b2J\x7f\x00\r") == "^[[2J^?^@^M"
    assert terminal_safe("\x1b[1A\x1b[2K[PASS] fake") == "^[[1A^[[2K[PASS] fake"


def test_the_configs_own_text_reaches_no_terminal_raw_either():
    """The pipeline's name and a step's commands are the config's, a pushed branch's: a
    YAML ``"\\e]0;x\\a"`` in them retitled the terminal of whoever read ``kata run``
    (``[PARSE]``, ``[RUN]``) or ``kata runs`` (its PIPELINE column) on the server."""
    from kata.cli.history_cmds import table
    from kata.realise import events as ev
    from kata.report.plain import line

    evil = "p\x1b]0;PWNED\x07\x9b2J"
    shown = [line(ev.Parsed(pipeline=evil, steps=1, groups=1, planned=("s",))),
             line(ev.StepStarted(step="s", command=f"true {evil}\necho two")),
             *table(("RUN", "PIPELINE"), [("r1", evil)])]
    for text in shown:
        assert "\x1b]" not in text and "\x07" not in text and "\x9b" not in text, text
    assert shown[0] == '[PARSE] Pipeline "p^[]0;PWNED^G^[[2J": 1 step, 1 parallel group'
    assert shown[1] == "[RUN] s: true p^[]0;PWNED^G^[[2J\necho two"  # its lines kept
    assert shown[3] == "r1   p^[]0;PWNED^G^[[2J"


def test_terminal_safe_of_a_whole_log_is_its_lines_one_by_one():
    """`kata logs` and the dashboard escape a stored log in one call, not line by line;
    a colour sequence left unfinished or an ESC before one is still shown."""
    from kata.report.text import terminal_safe

    assert terminal_safe("\x1b[31\x1b[0m") == "^[[31\x1b[0m"
    assert terminal_safe("\x1b\x1b[0m") == "^[\x1b[0m"
    assert terminal_safe("\x1b[32mok\x1b[0m\t\u2028") == "\x1b[32mok\x1b[0m\t\u2028"
    lines = ["\x1b[32mok\x1b[0m\tdone", "\x1b[31\x1b[0m", "\x1b]0;title\x07", "", "é\r"]
    assert terminal_safe("\n".join(lines)) == "\n".join(map(terminal_safe, lines))


def test_the_dashboard_shows_a_steps_hyperlink_escape_as_text():
    """ansi2html turns OSC 8 into ``<a href>``: a step could show ``https://good`` linking
    to another address in ``kata web``."""
    from kata.web.data import ansi_html

    html = ansi_html("\x1b]8;;https://evil.example\x07https://good.example\x1b]8;;\x07 "
                     "\x1b[31mred\x1b[0m <b>")
    assert "<a " not in html and "^[]8;;https://evil.example^G" in html, html
    assert '<span style="color: #aa0000">red</span> &lt;b&gt;' in html, html


def test_a_fifo_left_in_a_cache_directory_is_named_as_such(tmp_path, containerd_daemon,
                                                           runtime):
    """A FIFO (a socket, a device node) in a ``cache.paths`` directory cannot be saved: the
    step failed saying ``artifacts: …`` of a step that declares no artifacts."""
    repo = _repo(tmp_path, [{"name": "fifo", "image": IMAGE, "inputs": ["x"],
                             "cache": {"paths": ["c/"]}, "commands": ["mkdir c && mkfifo c/p"]}])
    kata = KataProcess(repo, store=tmp_path / "store", address=containerd_daemon.address)
    run = kata("run")
    assert run.returncode == 1, run.stdout + run.stderr
    assert "[FAIL] fifo (cache.paths: c/p is a device, FIFO or socket; trees hold only " \
        "files, directories and symlinks, " in run.stdout, run.stdout


def test_a_junit_report_of_millions_of_elements_costs_kata_a_bounded_memory(
        tmp_path, containerd_daemon, runtime):
    """A 63 MiB report (under the 64 MiB a report file may have) of 2.4 million empty
    ``<testcase/>``: kata, which runs in no step's memory cgroup, parsed it whole and
    peaked at 1.1 GiB (41 s of CPU). Now a step's reports hold at most a million XML
    elements; the file past that is a warning and the step passes."""
    import subprocess
    import time

    awk = ("awk 'BEGIN{print \"<testsuite>\"; for(i=0;i<2400000;i++) "
           "print \"<testcase name=\\\"t\" i \"\\\"/>\"; print \"</testsuite>\"}' > r.xml")
    repo = _repo(tmp_path, [{"name": "bomb", "image": IMAGE, "inputs": ["x"],
                             "reports": {"junit": ["r.xml"]}, "commands": [awk]}])
    kata = KataProcess(repo, store=tmp_path / "store", address=containerd_daemon.address)
    run = subprocess.Popen([*kata.base, "run"], cwd=repo, env=kata.env,
                           stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    peak = 0
    while run.poll() is None:  # kata's own VmHWM, read while it runs
        try:
            status = Path(f"/proc/{run.pid}/status").read_text()
        except OSError:
            break
        for field in status.splitlines():
            if field.startswith("VmHWM:"):
                peak = max(peak, int(field.split()[1]) * 1024)
        time.sleep(0.1)
    out, err = run.communicate()
    assert run.returncode == 0, out + err
    assert b"warning: report r.xml: not read (2,400,002 XML elements, more than the " \
        b"1,000,000 left of the 1,000,000 a step's reports may hold)" in out, out
    assert peak < 400 << 20, f"kata peaked at {peak >> 20} MiB"
