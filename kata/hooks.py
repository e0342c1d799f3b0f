"""Git hooks that run the pipeline: ``pre-push`` (working repository) and ``post-receive``
(bare repository: a git-native CI server).

``install(repo, kata_args, force=)`` writes the hook for the repository's kind; the hook
script execs ``<this python> -m kata [baked options] hooks run <hook>`` with this kata's
package directory first on PYTHONPATH, so it runs the same kata that installed it.

``run_hook(hook, lines, kata_args)`` is what the hook runs: for every pushed ref (deletions
aside) it checks the pushed commit out into a clean temporary worktree (``git worktree add
--detach``), runs ``kata run --event push|tag --branch B|--tag T --base OLD`` there (the
changed paths are old..new; a new branch compares against the default branch), and
removes the worktree. ``pre-push`` returns 1 when a pipeline failed (git then refuses the
push); ``post-receive`` cannot refuse anything and reports. Each run is recorded in the
store by ``kata run`` itself.

An untrusted post-receive push is checked out with every filter driver of git's config
turned off (``_no_filter_drivers``): its ``.gitattributes`` would choose which of the
server's drivers (git-lfs's) run on which of its files, before any sandbox.

Leftovers: each ref's checkout lives in ``<temp dir>/kata-hook-<pid tag>-*/checkout``
(``procs.pid_tag``). SIGTERM or Ctrl-C stops the ``kata run`` child as Ctrl-C does (it
cleans up, exit 130) and removes the checkout; a hook killed outright takes its child
with it (``PR_SET_PDEATHSIG``), and the next hook run removes the checkouts of hooks that
are gone and their worktree entries in the repositories they came from
(``sweep_dead_checkouts``), even one git left locked mid-checkout.

Trust (``kata.trust``): every run gets ``--hook <hook>``; a ``post-receive`` run also gets
``--default-branch`` from the bare repository's HEAD (server state no push can change), so
a pushed ref that is not protected runs untrusted. ``pre-push`` runs on the developer's own
machine, on code they are pushing themselves: trusted, like a local ``kata run``.
"""

from __future__ import annotations

import os
import shlex
import signal
import subprocess
import sys
import tempfile
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path

from kata.atomicfile import write_atomic
from kata.errors import KataError
from kata.git import Git, repo_environ
from procs import pid_tag, pid_tag_alive
from procs.leftovers import force_rmtree, sweep_dead_dirs

MARK = "# installed by kata hooks install"
ZERO = "0" * 40
HOOKS = ("pre-push", "post-receive")
CHECKOUT_PREFIX = "kata-hook-"  # + pid tag + "-": a hook run's checkouts, in the temp dir


@dataclass(frozen=True, slots=True, kw_only=True)
class PushedRef:
    ref: str  # refs/heads/main, refs/tags/v1
    old: str  # what the remote had (all zeros: nothing)
    new: str  # what is pushed (all zeros: a deletion)

    @property
    def event(self) -> str:
        return "tag" if self.ref.startswith("refs/tags/") else "push"

    @property
    def name(self) -> str:
        for prefix in ("refs/heads/", "refs/tags/"):
            if self.ref.startswith(prefix):
                return self.ref[len(prefix):]
        return self.ref


def _repo_paths(repo: str | Path) -> tuple[Path, bool]:
    """(absolute git dir, bare?) of the repository at ``repo``."""
    repo = Path(repo).absolute()
    if not repo.is_dir():
        raise KataError("git.not_a_repository", f"{repo} is not a directory", obj=str(repo))
    out = Git.at(repo).maybe("rev-parse", "--absolute-git-dir", "--is-bare-repository")
    if out is None:
        raise KataError("git.not_a_repository", f"{repo} is not a git repository: run "
                        "`kata hooks install` inside a clone, or name one with --repo DIR",
                        obj=str(repo))
    gitdir, _, bare = out.rpartition("\n")
    return Path(gitdir), bare == "true"


def hook_script(hook: str, kata_args: Sequence[str]) -> str:
    package_root = str(Path(__file__).resolve().parent.parent)
    argv = [sys.executable, "-m", "kata", *kata_args, "hooks", "run", hook]
    return (
        "#!/bin/sh\n"
        f"{MARK} (runs the pipeline on {'every push received' if hook == 'post-receive' else 'git push; a failure blocks it'})\n"
        f"PYTHONPATH={shlex.quote(package_root)}${{PYTHONPATH:+:$PYTHONPATH}}\n"
        "export PYTHONPATH\n"
        f'exec {" ".join(shlex.quote(a) for a in argv)} "$@"\n'
    )


def install(repo: str | Path, kata_args: Sequence[str] = (), *, force: bool = False) -> Path:
    """Install ``pre-push`` (working repository) or ``post-receive`` (bare); returns its path.

    KataError hooks.exists: a hook not written by kata is there (``force`` replaces it).
    """
    gitdir, bare = _repo_paths(repo)
    hook = "post-receive" if bare else "pre-push"
    hooks_dir = Path(Git.at(repo).out("rev-parse", "--git-path", "hooks"))
    if not hooks_dir.is_absolute():
        hooks_dir = (Path(repo) / hooks_dir).resolve()
    hooks_dir.mkdir(parents=True, exist_ok=True)
    path = hooks_dir / hook
    if path.exists() and not force:
        try:
            ours = MARK in path.read_text(errors="replace")
        except OSError:
            ours = False
        if not ours:
            raise KataError("hooks.exists", f"{path} exists and was not installed by kata "
                            "(--force replaces it)", obj=str(path))
    write_atomic(path, hook_script(hook, kata_args).encode(), mode=0o755)
    return path


def parse_refs(hook: str, lines: Iterable[str]) -> list[PushedRef]:
    """The refs a hook's stdin names: pre-push ``<local ref> <local sha> <remote ref>
    <remote sha>``, post-receive ``<old> <new> <ref>``."""
    out = []
    for line in lines:
        parts = line.split()
        if not parts:
            continue
        if hook == "pre-push" and len(parts) == 4:
            out.append(PushedRef(ref=parts[2], old=parts[3], new=parts[1]))
        elif hook == "post-receive" and len(parts) == 3:
            out.append(PushedRef(ref=parts[2], old=parts[0], new=parts[1]))
        else:
            raise KataError("hooks.bad_input", f"{hook}: unexpected line {line.strip()!r}",
                            obj=line.strip())
    return out


def run_hook(hook: str, lines: Iterable[str], kata_args: Sequence[str] = (), *,
             repo: str | Path = ".", out=None) -> int:  # noqa: ANN001
    """Run the pipeline for every pushed ref; the hook's exit status (pre-push: 1 blocks)."""
    if hook not in HOOKS:
        raise KataError("hooks.unknown", f"unknown hook {hook!r} (expected one of "
                        f"{', '.join(HOOKS)})", obj=hook)
    out = out or sys.stderr
    gitdir, _ = _repo_paths(repo)
    sweep_dead_checkouts()
    failed: list[str] = []
    for pushed in parse_refs(hook, lines):
        if pushed.new == ZERO:
            continue  # a deletion: nothing to build
        if not pushed.ref.startswith(("refs/heads/", "refs/tags/")):
            continue
        status = _run_ref(gitdir, pushed, kata_args, out, hook=hook)
        if status != 0:
            failed.append(f"{pushed.name} (exit {status})")
    if failed:
        verb = "push refused" if hook == "pre-push" else "failed"
        print(f"kata: {verb}: the pipeline failed for {', '.join(failed)}", file=out, flush=True)
        return 1 if hook == "pre-push" else 0
    return 0


def _run_ref(gitdir: Path, pushed: PushedRef, kata_args: Sequence[str], out,  # noqa: ANN001
             *, hook: str) -> int:
    env = repo_environ()  # the hook's GIT_DIR & co. belong to the repository receiving the push
    git = Git.at(gitdir)
    trust = ["--hook", hook]
    default = ""
    if hook == "post-receive":
        # the repository's HEAD, not a guess from branch names a pusher can create
        head = git.maybe("symbolic-ref", "--quiet", "HEAD") or ""
        default = head.removeprefix("refs/heads/") if head.startswith("refs/heads/") else ""
        trust += ["--default-branch", default]
    commit = git.maybe("rev-parse", "--verify", "--quiet", f"{pushed.new}^{{commit}}")
    if not commit:
        print(f"kata: {pushed.name}: {pushed.new[:12]} is not a commit, nothing to run",
              file=out, flush=True)
        return 0
    # a pushed .gitattributes picks which of the server's filter drivers run on which files
    filters = [] if hook != "post-receive" or _protected(pushed, default) else \
        _no_filter_drivers(git)
    work = Path(tempfile.mkdtemp(prefix=f"{CHECKOUT_PREFIX}{pid_tag()}-"))
    tree = work / "checkout"
    try:
        git.run(*filters, "worktree", "add", "--detach", "--quiet", str(tree), commit)
        if not (tree / ".kata-ci.yaml").exists():
            print(f"kata: {pushed.name}: no .kata-ci.yaml at {commit[:12]}, nothing to run",
                  file=out, flush=True)
            return 0
        args = [sys.executable, "-m", "kata", *kata_args, "run", *trust, "--event", pushed.event]
        args += ["--tag", pushed.name] if pushed.event == "tag" else ["--branch", pushed.name]
        if pushed.old != ZERO and pushed.event == "push" and git.maybe(
                "rev-parse", "--verify", "--quiet", f"{pushed.old}^{{commit}}"):
            args += ["--base", pushed.old]  # changed paths old..new
        print(f"kata: {pushed.event} {pushed.name} at {commit[:12]}", file=out, flush=True)
        out.flush()
        return _run_kata(args, tree, env, out)
    finally:
        git.maybe("worktree", "remove", "--force", str(tree))
        git.maybe("worktree", "prune")
        subprocess.run(["rm", "-rf", str(work)], check=False)


def _run_kata(args: list[str], cwd: Path, env: dict[str, str], out) -> int:  # noqa: ANN001
    """``kata run`` in the checkout; its exit status. SIGTERM or Ctrl-C on the hook (a
    KeyboardInterrupt: ``kata.__main__``) stops it as Ctrl-C stops kata, and waits for its
    cleanup (``subprocess.run`` SIGKILLs the child then, leaving its containers to the next
    run's sweep); the hook killed outright sends it SIGTERM (``PR_SET_PDEATHSIG``)."""
    proc = subprocess.Popen(args, cwd=cwd, env=env, stdout=out, stderr=out,
                            preexec_fn=_die_with_parent)
    try:
        return proc.wait()
    except BaseException:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout=600)  # its cleanup: containers, mounts, the run's record
        except BaseException:
            proc.kill()
            proc.wait()
        raise


def _die_with_parent() -> None:
    """In the child, before exec: SIGTERM when the hook process dies (Linux prctl)."""
    import ctypes

    PR_SET_PDEATHSIG = 1
    ctypes.CDLL(None, use_errno=True).prctl(PR_SET_PDEATHSIG, signal.SIGTERM, 0, 0, 0)


def sweep_dead_checkouts() -> list[str]:
    """Remove the checkouts of hook runs whose process is gone (killed before their
    ``finally``), with their worktree entries (``<git dir>/worktrees/<name>``, locked or
    not) in whichever repository they were taken from; the directories removed."""
    parent = tempfile.gettempdir()
    entries: list[Path] = []  # worktree entries the dead checkouts point at
    try:
        names = [n for n in os.listdir(parent) if n.startswith(CHECKOUT_PREFIX)]
    except OSError:
        names = []
    for name in names:
        if pid_tag_alive(name[len(CHECKOUT_PREFIX):].split("-", 1)[0]) is not False:
            continue
        dotgit = Path(parent, name, "checkout", ".git")
        try:
            text = dotgit.read_text(errors="replace").strip()
        except OSError:
            continue
        if text.startswith("gitdir: "):
            entry = Path(text.removeprefix("gitdir: "))
            try:  # the entry names its checkout back: never remove another's
                if Path(entry, "gitdir").read_text().strip() == str(dotgit):
                    entries.append(entry)
            except OSError:
                continue
    removed = sweep_dead_dirs(parent, CHECKOUT_PREFIX)
    for entry in entries:
        try:
            gone = not Path(Path(entry, "gitdir").read_text().strip()).exists()
        except OSError:
            continue
        if gone:
            force_rmtree(str(entry))  # `git worktree prune` keeps a locked one
    return removed


def _protected(pushed: PushedRef, default_branch: str) -> bool:
    """Whether ``kata run`` will trust this post-receive run (``kata.trust``); False when
    the host config does not load (the run then says why)."""
    from kata.trust import decide, load_protection

    try:
        protection = load_protection()
    except KataError:
        return False
    return decide(ref=pushed.ref, default_ref=f"refs/heads/{default_branch}"
                  if default_branch else "", protection=protection,
                  event=pushed.event, hook="post-receive").trusted


def _no_filter_drivers(git: Git) -> list[str]:
    """``-c`` options turning off every filter driver git's config defines (system, global,
    the repository's: git-lfs's after ``git lfs install --system``), for the checkout of an
    untrusted push: its ``.gitattributes`` would choose which driver runs on which of its
    files, as this user, and git-lfs would fetch from the URL its ``.lfsconfig`` names. The
    files are checked out as committed (an LFS file as its pointer)."""
    listed = git.maybe("config", "-z", "--get-regexp", r"^filter\.") or ""
    names = sorted({entry.partition("\n")[0].removeprefix("filter.").rpartition(".")[0]
                    for entry in listed.split("\0") if entry} - {""})
    out: list[str] = []
    for name in names:
        out += ["-c", f"filter.{name}.smudge=", "-c", f"filter.{name}.clean=",
                "-c", f"filter.{name}.process=",
                "-c", f"filter.{name}.required=false"]
    return out
