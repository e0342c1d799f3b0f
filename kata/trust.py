"""Trust: which refs are protected, whether a run is trusted, and what an untrusted run may
not do. Decided by the server (the host config, the command line the installed hook
builds), never by anything in the pushed ``.kata-ci.yaml``.

Protected refs come from the host config (``kata.hostconfig``)::

    protected:
      branches: ["main", "release/*"]
      tags: ["v*"]

A pattern matches a branch's or a tag's short name (``release/1.2``, ``v1.0``: without
``refs/heads/`` or ``refs/tags/``), whole, with the glob rule of ``only: branches:``:
``*`` and ``?`` do not cross ``/``, ``**`` does (``release/*`` protects ``release/1.2``, not
``release/1.2/hotfix``; ``release/**`` protects both). Without a ``protected:`` key the
repository's default branch is protected, and nothing else. With it, exactly what it lists
(a missing ``branches`` or ``tags`` list protects none of that kind; name the default branch
if it should stay protected).

A run is trusted (``decide``) when, first rule that applies:
1. ``kata run --untrusted``: untrusted;
2. ``--event pull_request``: untrusted (a pull request runs its author's code, whatever
   branch it targets);
3. a run of the installed ``post-receive`` hook (``--hook post-receive``): trusted only
   when its ref is protected; the default branch is the one the hook read from the bare
   repository's HEAD (never guessed from refs a pusher can create);
4. otherwise (a local ``kata run`` in a working copy, a ``pre-push`` hook on a developer's
   own machine): trusted.

An untrusted run (``withheld``, ``refused``): a step that declares a secret (itself or in a
service) is skipped, with the secret and the ref named, and no value is ever read for the
run; ``network: host`` fails the step, naming it and the ref; its realisations and cache
directories go to its quarantine (the realiser and the store, given ``Scope``).
"""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from kata.conditions import glob_match
from kata.errors import KataError
from kata.hostconfig import HostConfig, load_host_config
from kata.keys import Scope

HOOKS = ("pre-push", "post-receive")
_KINDS = {"branches": "refs/heads/", "tags": "refs/tags/"}


@dataclass(frozen=True, slots=True, kw_only=True)
class Protection:
    """Which refs are protected.

    branches, tags: glob patterns over short names (module docstring).
    default_branch: the default branch is protected (no ``protected:`` in the host config).
    """

    branches: tuple[str, ...] = ()
    tags: tuple[str, ...] = ()
    default_branch: bool = True

    def covers(self, ref: str, default_ref: str = "") -> bool:
        """Whether the full ref ``ref`` is protected; ``default_ref`` is the repository's
        default branch ref ("" when unknown)."""
        if not ref:
            return False
        if self.default_branch and ref == default_ref:
            return True
        for kind, prefix in _KINDS.items():
            if ref.startswith(prefix):
                name = ref[len(prefix):]
                return any(glob_match(p, name) for p in getattr(self, kind))
        return False


def protection(host: HostConfig) -> Protection:
    """The ``protected:`` section of a host config.

    KataError config.bad_value / config.unknown_key (exit 2) at the file's line:column.
    """
    if not host.has("protected"):
        return Protection()
    section = host.section("protected")
    if section is None:
        section = {}
    if not isinstance(section, dict):
        raise host.error("config.bad_value", "protected must be a mapping with branches: "
                         "and tags: lists of glob patterns", "protected")
    for key in section:
        if key not in _KINDS:
            raise host.error("config.unknown_key", f"unknown key {key!r} in protected "
                             "(expected branches, tags)", "protected", key)
    found: dict[str, tuple[str, ...]] = {}
    for kind in _KINDS:
        patterns = section.get(kind)
        if patterns is None:
            patterns = []
        if not isinstance(patterns, list):
            raise host.error("config.bad_value", f"protected.{kind} must be a list of glob "
                             f"patterns, e.g. [\"main\", \"release/*\"]", "protected", kind)
        for i, pattern in enumerate(patterns):
            if not isinstance(pattern, str) or not pattern.strip():
                raise host.error("config.bad_value", f"protected.{kind}[{i}] must be a "
                                 "non-empty glob pattern", "protected", kind, i)
            if pattern.startswith("refs/"):
                raise host.error("config.bad_value", f"protected.{kind}[{i}] {pattern!r}: "
                                 f"patterns match short names (write "
                                 f"{pattern.removeprefix(_KINDS[kind])!r})",
                                 "protected", kind, i)
        found[kind] = tuple(patterns)
    return Protection(branches=found["branches"], tags=found["tags"], default_branch=False)


def load_protection(path: str | os.PathLike[str] | None = None) -> Protection:
    """``protection`` of the host config at ``path`` (default: $KATA_CONFIG or
    /etc/kata/config.yaml)."""
    return protection(load_host_config(path))


def full_ref(*, branch: str = "", tag: str = "", event: str = "") -> str:
    """The full ref a run builds: ``refs/tags/T`` for a tag event, else ``refs/heads/B``; ""
    when neither is known (outside git, a detached HEAD).

    ``branch`` "HEAD" means a detached HEAD only in a plain local run (``event`` "": the
    cheap path reads it from ``.git/HEAD``), which a tag at the commit then names. With an
    event the branch is the one given (``--branch``, the hook's pushed ref) or git's, and
    only a tag event is named by its tag: a pushed branch called ``HEAD`` is
    ``refs/heads/HEAD``, never the protected tag that happens to point at its commit, and a
    tag at a pull request's commit does not choose its quarantine.
    """
    if tag and (event == "tag" or (not event and branch in ("", "HEAD"))):
        return f"refs/tags/{tag}"
    if branch and (branch != "HEAD" or event):
        return f"refs/heads/{branch}"
    return ""


def decide(*, ref: str, default_ref: str, protection: Protection, event: str = "",
           hook: str = "", untrusted: bool = False) -> Scope:
    """The run's scope: its ref, whether that ref is protected, whether the run is trusted
    (rules in the module docstring). Pure.

    event: the ``--event`` (push, pull_request, tag, schedule) or "" (a plain local run).
    hook: "post-receive" or "pre-push" when an installed hook runs it, else "".
    KataError trust.bad_hook for any other hook.
    """
    if hook and hook not in HOOKS:
        raise KataError("trust.bad_hook", f"unknown hook {hook!r} (expected one of "
                        f"{', '.join(HOOKS)})", obj=hook)
    protected = protection.covers(ref, default_ref)
    if untrusted or event == "pull_request":
        trusted = False
    elif hook == "post-receive":
        trusted = protected
    else:
        trusted = True
    return Scope(ref=ref, default_ref=default_ref, protected=protected, trusted=trusted)


def scope_for(repo_root: Path, *, branch: str = "", tag: str = "", event: str = "",
              hook: str = "", default_branch: str | None = None, untrusted: bool = False,
              config: str | os.PathLike[str] | None = None, commit: str = "") -> Scope:
    """``decide`` with its inputs gathered: the host config's protection, the ref of
    ``branch``/``tag``, and the default branch (``default_branch`` as the hook passed it;
    for a hook run nothing else; for a local run, read from the repository's files).

    An untrusted run with no ref (a pull-request bot's detached checkout) is scoped to its
    ``commit`` (``quarantine:commit:<sha>``): under the empty ref every such run, one per
    fork, would share one quarantine and restore each other's cache directories.

    KataError from the host config (exit 2), trust.bad_hook.
    """
    if default_branch is not None:
        default_ref = f"refs/heads/{default_branch}" if default_branch else ""
    elif hook == "post-receive":
        default_ref = ""  # the server did not say: a pushed ref must not decide it
    else:
        from kata.gitctx import default_ref as read_default

        default_ref = read_default(repo_root)
    scope = decide(ref=full_ref(branch=branch, tag=tag, event=event), default_ref=default_ref,
                   protection=load_protection(config), event=event, hook=hook,
                   untrusted=untrusted)
    if not scope.trusted and not scope.ref and commit:
        scope = dataclasses.replace(scope, ref=f"commit:{commit}")
    return scope


def describe(scope: Scope) -> str:
    """How messages name an untrusted run: ``untrusted run of refs/heads/x``."""
    return f"untrusted run of {scope.ref or 'this working copy'}"


def secrets_of(step: Any) -> tuple[tuple[str, str], ...]:
    """(secret name, "" or the service declaring it) for every secret a step declares."""
    out = [(name, "") for name in step.secrets]
    out += [(name, service.name) for service in step.services for name in service.secrets]
    return tuple(out)


def withheld(step: Any, scope: Scope) -> str | None:
    """Why ``step`` does not run in ``scope`` (it declares a secret an untrusted run is not
    given), or None. The step is skipped, not failed: a secret withheld is the server's
    policy, not a fault of the code under test, and a skip keeps a pipeline whose deploy
    step is unguarded green on a contributor's branch (its dependents are skipped too)."""
    if scope.trusted:
        return None
    declared = secrets_of(step)
    if not declared:
        return None
    name, service = declared[0]
    more = len({n for n, _ in declared}) - 1
    what = f"secret {name}" + (f" (service {service})" if service else "") + (
        f" and {more} more" if more else "")
    return f"{what} withheld: {describe(scope)}"


def refused(step: Any, scope: Scope) -> str | None:
    """Why ``step`` may not run as declared in ``scope`` (``network: host`` in an untrusted
    run: the host's network namespace reaches every service bound to the host's loopback),
    or None. The step fails with this message."""
    if scope.trusted or step.network != "host":
        return None
    return f"step {step.name}: network: host refused: {describe(scope)}"


def skips(steps: Iterable[Any], scope: Scope) -> Mapping[str, str]:
    """Every step ``withheld`` in ``scope``, with why (what the planner skips)."""
    return {s.name: why for s in steps if (why := withheld(s, scope)) is not None}
