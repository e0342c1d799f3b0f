"""Running git: the one way Kata calls the ``git`` command (no library).

``Git.at(path)`` runs git in one repository (``git -C path``); every failure becomes a
``KataError``: ``git.not_installed`` when there is no git, ``git.failed`` for a non-zero
exit that the caller did not allow. ``repo_environ()`` is the environment without the
variables that point git at a particular repository, for git itself and for anything
started from a git hook (``kata hooks``).

Used by ``kata.gitctx`` (the git context), ``kata.hooks`` (checkouts in hooks) and
``kata.inputs`` (``git ls-files``).
"""

from __future__ import annotations

import os
import re
import subprocess
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

from kata.errors import KataError

#: What ``git rev-parse --local-env-vars`` prints (git 2.39): the variables that tie git
#: to one repository, which git itself clears before it works in another one. A hook
#: runs with GIT_DIR (and more) set for the repository receiving the push;
#: GIT_QUARANTINE_PATH is set for pre-receive hooks.
LOCAL_ENV_VARS = (
    "GIT_ALTERNATE_OBJECT_DIRECTORIES", "GIT_CONFIG", "GIT_CONFIG_PARAMETERS", "GIT_CONFIG_COUNT",
    "GIT_OBJECT_DIRECTORY", "GIT_DIR", "GIT_WORK_TREE", "GIT_IMPLICIT_WORK_TREE", "GIT_GRAFT_FILE",
    "GIT_INDEX_FILE", "GIT_NO_REPLACE_OBJECTS", "GIT_REPLACE_REF_BASE", "GIT_PREFIX",
    "GIT_INTERNAL_SUPER_PREFIX", "GIT_SHALLOW_FILE", "GIT_COMMON_DIR", "GIT_QUARANTINE_PATH",
)


def repo_environ(base: Mapping[str, str] | None = None) -> dict[str, str]:
    """``base`` (default ``os.environ``) without ``LOCAL_ENV_VARS`` and ``GIT_CONFIG_KEY_*``
    / ``GIT_CONFIG_VALUE_*``: git then finds the repository from its working directory.
    User settings (``GIT_CONFIG_GLOBAL``, ``GIT_SSH_COMMAND``, identities) are kept."""
    env = dict(os.environ if base is None else base)
    for name in list(env):
        if name in LOCAL_ENV_VARS or name.startswith(("GIT_CONFIG_KEY_", "GIT_CONFIG_VALUE_")):
            del env[name]
    return env


def _unsafe_repository(cwd: str, stderr: bytes) -> KataError:
    """git's refusal of a repository that another user owns (git 2.35.2's ``safe.directory``
    check, CVE-2022-24765): a ``KataError`` that names the owner and the two fixes. Never read
    as "not a repository": kata would then walk the directory (its ``.gitignore``'d files
    becoming inputs) and run without the branch and commit. ``stderr``: git's, which names
    the repository's top (the directory ``safe.directory`` must name)."""
    found = re.search(rb"dubious ownership in repository at '([^\n]*)'", stderr)
    if found:
        cwd = found.group(1).decode("utf-8", "surrogateescape")
    try:
        owner = f"uid {os.stat(cwd).st_uid}"
    except OSError:
        owner = "another user"
    return KataError(
        "git.unsafe_repository",
        f"git refuses the repository at {cwd}: it belongs to {owner} and kata runs as uid "
        f"{os.geteuid()} (git's \"dubious ownership\" check); fix: run kata as the "
        f"repository's owner, or, if you trust it, `git config --global --add safe.directory "
        f"{cwd}`", obj=cwd)


@dataclass(frozen=True, slots=True)
class Git:
    """git in one directory. ``cwd``: a work tree, a bare repository or a git dir;
    ``env``: the environment git runs with (``repo_environ()`` plus ``LC_ALL=C`` so
    messages and sorting do not depend on the locale, no credential prompt, no
    optional index locks: a read never blocks a concurrent ``git`` of the user)."""

    cwd: str
    env: dict[str, str] = field(default_factory=dict, repr=False)

    @classmethod
    def at(cls, path: str | os.PathLike[str], base_env: Mapping[str, str] | None = None) -> "Git":
        env = repo_environ(base_env)
        env.update(LC_ALL="C", GIT_TERMINAL_PROMPT="0", GIT_OPTIONAL_LOCKS="0")
        return cls(os.fspath(path), env)

    def run(self, *args: str, ok: Sequence[int] = (0,)) -> subprocess.CompletedProcess[bytes]:
        """``git -C cwd ARGS``, output captured as bytes, stdin empty.

        KataError ``git.not_installed`` (no runnable ``git`` on PATH), ``git.unsafe_repository``
        (git refuses a repository another user owns, whatever ``ok`` allows) and
        ``git.failed`` (exit status not in ``ok``; the message quotes git's last stderr line).
        """
        try:
            proc = subprocess.run(["git", "-C", self.cwd, *args], capture_output=True,
                                  env=self.env, stdin=subprocess.DEVNULL)
        except OSError as exc:  # FileNotFoundError: not installed; PermissionError: not runnable
            raise KataError("git.not_installed", f"cannot run git ({exc.strerror}): is it "
                            "installed? (apt-get install git)", obj="git") from exc
        if proc.returncode != 0 and b"detected dubious ownership" in proc.stderr:
            raise _unsafe_repository(self.cwd, proc.stderr)
        if proc.returncode not in ok:
            err = proc.stderr.decode("utf-8", "replace").strip().splitlines()
            raise KataError(
                "git.failed",
                f"git {' '.join(args[:2])} failed in {self.cwd}: {err[-1] if err else proc.returncode}",
                obj=self.cwd,
            )
        return proc

    def out(self, *args: str) -> str:
        """Stdout of a command that must succeed, stripped (undecodable bytes kept as
        surrogate escapes, as ``os.fsdecode`` does for paths)."""
        return self.run(*args).stdout.decode("utf-8", "surrogateescape").strip()

    def maybe(self, *args: str) -> str | None:
        """Stdout of a query that may legitimately fail (an unknown ref): None then, and
        None for empty output. git missing still raises ``git.not_installed``."""
        proc = self.run(*args, ok=range(0, 256))
        if proc.returncode != 0:
            return None
        return proc.stdout.decode("utf-8", "surrogateescape").strip() or None

    def paths(self, *args: str) -> list[str]:
        """The NUL-separated paths a ``-z`` command prints, in git's order."""
        data = self.run(*args).stdout.decode("utf-8", "surrogateescape")
        return [p for p in data.split("\0") if p]
