"""Finding and reading `.kata-ci.yaml`: where it is, and its bytes (compiler layer).

Kept apart from the loader (`kata.loader`, which parses) so that a run whose config is
already loaded (`kata.loaded`) reads the file without importing the YAML parser; and
`kata.errors` (with `dataclasses`, ~28 M instructions) is imported only to raise, so the
cached path (`kata.realise.noop`) finds the config without it.
"""

from __future__ import annotations

import os
import stat

TYPE_CHECKING = False  # typing.TYPE_CHECKING without importing typing
if TYPE_CHECKING:
    from pathlib import Path

CONFIG_NAME = ".kata-ci.yaml"


def _error(reason: str, message: str, *, obj: str) -> Exception:
    """A ``KataError`` (exit 2), its module imported when there is one to raise."""
    from kata.errors import KataError

    return KataError(reason, message, obj=obj)


def find_config(start_dir: str | os.PathLike | None = None,
                explicit: str | os.PathLike | None = None) -> Path:
    """The config to use: `explicit` if given, else `.kata-ci.yaml` in `start_dir` or the
    nearest parent, stopping at the repository root (the directory holding `.git`)."""
    from pathlib import Path

    return Path(locate_config(start_dir, explicit))


def locate_config(start_dir: str | os.PathLike | None = None,
                  explicit: str | os.PathLike | None = None) -> str:
    """:func:`find_config` as a string (`explicit` as given, else a resolved path), without
    `pathlib` (the cached path, `kata.realise.noop`)."""
    if explicit is not None:
        p = os.fspath(explicit)
        if not os.path.isfile(p):
            if os.path.lexists(p):
                raise _not_a_file(p)
            raise _error("config.not_found", f"config file {p!r} not found", obj=p)
        return p
    d = os.path.realpath(start_dir if start_dir is not None else os.getcwd())
    cand = d
    while True:
        config = os.path.join(cand, CONFIG_NAME)
        if os.path.isfile(config):
            _check_inside(config, cand)
            return config
        if os.path.lexists(config):
            raise _not_a_file(config)
        parent = os.path.dirname(cand)
        if os.path.exists(os.path.join(cand, ".git")) or parent == cand:
            break
        cand = parent
    raise _error("config.not_found",
                 f"no {CONFIG_NAME} in {d} or its parents up to the repository root",
                 obj=d)


def _not_a_file(p: str) -> Exception:
    """``config.not_a_file``: ``p`` is there but is no regular file (a directory, a FIFO,
    a device, a symbolic link to nothing): said so, rather than "not found"."""
    if os.path.islink(p) and not os.path.exists(p):
        what = f"is a symbolic link to {os.readlink(p)!r}, which does not exist"
    elif os.path.isdir(p):
        what = "is a directory"
    else:
        what = "is not a regular file"
    return _error("config.not_a_file", f"config file {p!r} {what}; the pipeline config "
                  "must be a regular YAML file", obj=p)


# A config of 1,000 steps is ~200 KiB; anything past this is not a pipeline.
MAX_CONFIG = 8 << 20


def _check_inside(config: str, start: str) -> None:
    """A config found in the repository may be a symlink only to a file inside the
    repository (the directory holding ``.git`` above it, else its own directory):
    ``.kata-ci.yaml -> /etc/shadow`` pushed to a hook server would otherwise be read as
    root and quoted back in the error message."""
    if not os.path.islink(config):
        return
    root, cand = start, start
    while True:
        if os.path.exists(os.path.join(cand, ".git")):
            root = cand
            break
        parent = os.path.dirname(cand)
        if parent == cand:
            break
        cand = parent
    real, real_root = os.path.realpath(config), os.path.realpath(root)
    if not real.startswith(real_root.rstrip("/") + "/"):
        raise _error("config.outside", f"{config} is a symlink to a file outside the "
                     f"repository ({real_root}); kata reads nothing outside it",
                     obj=config)


def _read_config(p: Path) -> bytes:
    """The config's bytes: a regular file (never a device or FIFO, opened without
    blocking), at most MAX_CONFIG bytes (``config.too_large``)."""
    fd = os.open(p, os.O_RDONLY | os.O_NONBLOCK | os.O_CLOEXEC)
    try:
        if not stat.S_ISREG(os.fstat(fd).st_mode):
            raise _not_a_file(str(p))
        os.set_blocking(fd, True)
        from kata.inputs import read_at_most

        data = read_at_most(fd, MAX_CONFIG)
    finally:
        os.close(fd)
    if len(data) > MAX_CONFIG:
        raise _error("config.too_large", f"config file {str(p)!r} is larger than "
                        f"{MAX_CONFIG >> 20} MiB", obj=str(p))
    return data


def read_config(p: Path) -> bytes:
    """The config file's bytes; KataError config.not_found / config.not_a_file /
    config.too_large."""
    try:
        return _read_config(p)
    except IsADirectoryError:
        raise _not_a_file(str(p)) from None
    except (FileNotFoundError, NotADirectoryError):
        raise _error("config.not_found", f"config file {str(p)!r} not found",
                        obj=str(p)) from None
    except OSError as err:
        raise _error("config.not_found", f"cannot read {str(p)!r}: {err.strerror}",
                        obj=str(p)) from None
