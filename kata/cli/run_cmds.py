"""`kata run`, `kata build //label`, `kata logs`: the realiser on the command line.

The command wires the pieces: load and compile the config (images resolved by
the runtime, input hashing with the store's stat cache), open the store,
pick a reporter, realise, and exit 0 (all passed), 1 (a step failed) or 2
(bad usage or config, raised as KataError). The runtime is connected lazily:
a fully cached run with digest-pinned images never imports gRPC.
"""

from __future__ import annotations

import contextlib
import dataclasses
import os
import shlex
import sys
import threading
from pathlib import Path
from typing import NoReturn

import click

from kata import gitctx
from kata.cli.config_cmds import config_file_option
from kata.conditions import EVENTS, PR_ACTIONS
from kata.errors import KataError
from kata.report.text import terminal_safe


def register(cli: click.Group) -> None:
    """Add this module's commands to the root group."""
    cli.add_command(run)
    cli.add_command(build)
    cli.add_command(logs)
    cli.add_command(export_cmd)


class LazyRuntime:
    """Connects to containerd on first use (resolve or run); sweeps orphans before a run.

    Tags resolve from ``tags`` (kata's record of what each tag it pulled, imported or
    resolved stands for) without connecting; what the runtime resolves is recorded there.
    ``pull=True`` (``kata run --pull``) asks the registry again and pulls every image.

    ``state_dir`` (the store's host-local state directory): on connecting, this process's
    owner marker is written there (``kata.runtimes.sweepmarks``) and removed by a clean
    :meth:`close`; a run that never swept (nothing ran) sweeps, on close, the containerd
    of each marker a dead kata left, so a fully cached pipeline does not keep a killed
    run's containers, shims and mounts.
    """

    def __init__(self, address: str | None, tags=None, *, pull: bool = False,  # noqa: ANN001
                 confined: bool = False, state_dir: str | None = None) -> None:
        self.address = address
        self.tags = tags  # kata.runtimes.tags.ImageTags or None
        self.pull = pull
        self.confined = confined  # an untrusted run: pulls reach public addresses only
        self._rt = None
        self._swept = False
        self._lock = threading.Lock()
        self.state_dir = state_dir
        self._marker: str | None = None  # this process's owner marker, once connected
        self._resolved: dict[str, str] = {}  # this run's tag -> digest
        self.progress = None  # kata.runtimes.base.PullCallback: told how far pulls are

    def _get(self, sweep: bool):  # noqa: ANN202
        with self._lock:
            if self._rt is None:
                from kata.runtimes.containerd import ContainerdRuntime

                self._rt = ContainerdRuntime.connect(address=self.address, sweep=False)
                self._rt.confined_pulls = self.confined
                self._rt.name_tags(self._resolved)
                self._mark()
            self._rt.progress = self.progress
            if sweep and not self._swept:
                self._swept = True
                try:
                    self._rt.sweep()
                    self._unmark_swept()
                except KataError as err:
                    # what dead processes left is theirs: failing to clear it (another kata
                    # sweeping the same netns, a CNI plugin error) must not fail this run;
                    # the next connect tries again
                    click.echo(f"kata: warning: could not clear what an earlier kata left: "
                               f"{err.message}", err=True)
            return self._rt

    def _mark(self) -> None:
        """Write this process's owner marker (before any object of it exists)."""
        if self.state_dir is None:
            return
        from procs import owner_id

        from kata.runtimes.sweepmarks import write_marker

        socket = self._rt.client.address.removeprefix("unix://")
        try:
            self._marker = write_marker(self.state_dir, owner_id(), socket, self.address)
        except OSError:  # a read-only store: the owner labels remain for a connected run
            self._marker = None

    def _unmark_swept(self) -> None:
        """After this run's sweep: the markers of dead owners on the same containerd are
        done (what they left is gone)."""
        if self.state_dir is None:
            return
        import os.path

        from kata.runtimes.sweepmarks import dead_markers, marker_dir, remove_marker

        socket = self._rt.client.address.removeprefix("unix://")
        for owner, theirs, _ in dead_markers(self.state_dir):
            if theirs == socket:
                remove_marker(os.path.join(marker_dir(self.state_dir), owner))

    def sweep_left(self) -> None:
        """Unless this run swept: sweep the containerd of each marker a dead kata left
        (``kata.runtimes.sweepmarks.sweep_dead``); a failure is a warning line, never the run's."""
        if self.state_dir is None or self._swept:
            return
        from kata.runtimes.sweepmarks import sweep_dead

        sweep_dead(self.state_dir,
                   warn=lambda message: click.echo(f"kata: warning: {message}", err=True))

    def known_images(self) -> list[str]:
        """The image names this host has: the tags it recorded and containerd's images."""
        names = list(self.tags.all()) if self.tags is not None else []
        return names + [r.name for r in self._get(False).list_images()]

    def resolve_image(self, ref: str) -> str:
        if ref in self._resolved:
            return self._resolved[ref]
        found = None if self.pull or self.tags is None else self.tags.get(ref)
        if found is None:
            rt = self._get(False)
            found = self._refresh(rt, ref) if self.pull else rt.resolve_image(ref)
            if self.tags is not None:
                self.tags.record({ref: found})
        self._resolved[ref] = found
        if self._rt is not None:
            self._rt.name_tags({ref: found})
        return found

    def _refresh(self, rt, ref: str) -> str:  # noqa: ANN001
        """``--pull``: the registry's digest for ``ref`` (pulled). KataError
        ``image.refresh_failed`` when the registry cannot say but kata has the tag recorded
        (in its tag record, or in containerd's names, as a store that recorded nothing yet)."""
        try:
            return rt.pull_image(ref).digest
        except KataError as err:
            known = self.tags.get(ref) if self.tags is not None else None
            if known is None and err.reason.startswith("image."):
                known = rt.stored_digest(ref)
            if known is None or not err.reason.startswith("image."):
                raise
            raise KataError("image.refresh_failed", f"{err.message}; kata has it as {known}, "
                            "which a run without --pull uses", obj=ref) from None

    def connect(self) -> None:
        """Connect now (KataError runtime.unreachable, exit 2, when containerd is not there)."""
        self._get(False)

    def check_pinned(self, ref: str) -> str:
        """``ContainerdRuntime.check_pinned`` (connects: only for steps that will run)."""
        return self._get(False).check_pinned(ref)

    def run(self, spec, sink, cancel, service_sink=None):  # noqa: ANN001, ANN201
        if service_sink is not None:
            return self._get(True).run(spec, sink, cancel, service_sink=service_sink)
        return self._get(True).run(spec, sink, cancel)

    def hurry(self) -> None:
        """``ContainerdRuntime.hurry`` (a second Ctrl-C), if connected."""
        if self._rt is not None:
            self._rt.hurry()

    def drain(self) -> None:
        if self._rt is not None:
            self._rt.drain()

    def went_away(self) -> None:
        """After a run with failures: KataError runtime.unreachable (exit 2) when containerd
        stopped answering during it (the steps failed with gRPC's words for it)."""
        if self._rt is not None:
            lost = self._rt.client.went_away()
            if lost is not None:
                raise lost

    def close(self, *, passed: bool = False) -> None:
        """Close the runtime; its first containerd error (e.g. deleting the shim group's
        anchor) becomes runtime.unreachable when containerd stopped answering. ``passed``
        (every step of the run passed): that is one warning line on stderr instead, and
        the run keeps its exit status."""
        if self._rt is not None:
            try:
                self._rt.close()
            except KataError:
                lost = self._rt.client.went_away(passed=passed)
                if lost is None:
                    raise
                self._rt.client.close()
                if not passed:
                    raise lost from None
                click.echo(f"warning: {lost.message}", err=True)
                return  # not released cleanly: the marker stays for a later run's sweep
        if self._marker is not None:
            from kata.runtimes.sweepmarks import remove_marker

            remove_marker(self._marker)
            self._marker = None


def git_context(repo_root: Path, *, event: str | None, branch: str | None, tag: str | None,
                action: str | None, base: str | None, hook: str = ""):  # noqa: ANN201
    """(conditions Context, commit, branch) of this run.

    With ``--event`` the context is the repository's at HEAD as that event (an error outside
    a git repository). Without it a local run is a push of the current branch, uncommitted
    and untracked files counted as changed; outside a repository the changed paths are
    unknown (``changed()`` is then true). A ``hook`` run's checkout is the pushed commit
    exactly: its work tree is not compared (git would run the clean filter its
    ``.gitattributes`` names on the pusher's files to do so).
    """
    from kata.conditions import Context
    from kata.gitctx import read_context
    from kata.triggers import context

    try:
        git = read_context(repo_root, event=event or "push", branch=branch, tag=tag,
                           action=action, base=base, worktree=False if hook else None)
    except KataError as err:
        if event is not None or base is not None or err.reason != "git.not_a_repository":
            raise
        return Context(event="push", branch=branch or "", tag=tag or "", action=action or ""), \
            "", branch or ""
    return context(git), git.commit or "", git.branch or ""


def _reporter(json_out: bool):  # noqa: ANN202
    if json_out:
        from kata.report.jsonl import JsonReporter

        return JsonReporter(sys.stdout)
    if sys.stdout.isatty() and os.environ.get("TERM") != "dumb":
        from kata.report.live import LiveReporter

        return LiveReporter(sys.stdout)
    from kata.report.plain import PlainReporter

    return PlainReporter(sys.stdout)


def _realise(ctx: click.Context, *, json_out: bool, **kw) -> None:  # noqa: ANN003
    """Realise; with ``--json`` an error that ends the command (bad config, an image or a
    secret missing, before or after the first step) is also an ``error`` event on stdout."""
    from store.errors import StoreError

    try:
        _realise_steps(ctx, json_out=json_out, **kw)
    except (KataError, StoreError) as err:
        if json_out:
            from kata.report.jsonl import error_event, event_line

            click.echo(event_line(error_event(err)))
        raise


def _realise_steps(ctx: click.Context, *, steps: tuple[str, ...] = (), labels: tuple[str, ...] = (),
             dry_run: bool, no_cache: bool, json_out: bool, secrets: tuple[str, ...],
             secret_files: tuple[str, ...] = (), event: str | None = None,
             branch: str | None = None, tag: str | None = None, action: str | None = None,
             base: str | None = None, untrusted: bool = False, hook: str = "",
             default_branch: str | None = None, pull: bool = False,
             out_dir: str | None = None, remote_cache: str | None = None,
             remote_instance: str | None = None) -> None:
    from kata.cli.config_cmds import load
    from kata.cli.store_cmds import open_store
    from kata.compile import compile_pipeline
    from kata.inputs import RehashStatCache
    from kata.realise.events import process_started
    from kata.realise.plan import (condition_skips, context_values, plan_entries, plan_run,
                                   select_targets, status_steps)
    from kata.realise.realiser import Realiser, RealiseOptions
    from kata.realise.scheduler import ForcedInterrupt
    from kata.secrets import MIN_SECRET_LENGTH, SecretSource, unmaskable

    path, pipeline = load(ctx, cached=True)
    repo_root = path.resolve().parent
    if event is None and base is None and not any(
            s.only is not None or s.when is not None for s in pipeline.steps):
        # nothing asks about the git context: two file reads, not a handful of git processes
        from kata.conditions import Context

        commit, git_branch = gitctx.head(repo_root)
        git_branch = branch or git_branch
        cond_ctx = Context(event="push", branch=git_branch, tag=tag or "", action=action or "")
    else:
        cond_ctx, commit, git_branch = git_context(repo_root, event=event, branch=branch,
                                                   tag=tag, action=action, base=base,
                                                   hook=hook)
    if event is not None and not _triggered(pipeline, cond_ctx, json_out):
        return
    from kata.trust import scope_for

    scope = scope_for(repo_root, branch=git_branch, tag=cond_ctx.tag if event else "",
                      event=event or "", hook=hook, default_branch=default_branch,
                      untrusted=untrusted, commit=commit or "")
    obj = ctx.find_root().obj or {}
    remote_config = _remote_cache_config(remote_cache, remote_instance)
    executor = _remote_executor((ctx.obj or {}).get("remote_executor"), remote_instance)
    if remote_instance is not None and remote_config is None and executor is None:
        raise KataError("remote.no_remote", f"--remote-instance {remote_instance} names an "
                        "instance of no remote: add --remote-cache grpc://HOST:PORT or "
                        "--remote-executor grpc://HOST:PORT (or remote.cache / "
                        "remote.executor in the host config)", obj=remote_instance)
    store = open_store(ctx, read_only=dry_run)  # a plan writes nothing
    remote = _remote_cache(remote_config, store.state_dir)
    runtime = LazyRuntime(obj.get("containerd_address"), image_tags(store.state_dir), pull=pull,
                          confined=not scope.trusted, state_dir=store.state_dir)
    pulls = contextlib.ExitStack()  # images pulled before the steps start: a bar on a terminal
    result = None
    try:
        if not json_out:
            from kata.report.live import pull_view

            view = pulls.enter_context(pull_view(sys.stdout))
            if view is not None:
                runtime.progress = pull_events(view)
        # --no-cache trusts no stored digest: every input file is read again
        stat_cache = RehashStatCache(store.stat_cache) if no_cache else store.stat_cache
        unavailable: set[str] = set()  # images no step of this run may need (yet)

        def resolve(ref):  # noqa: ANN001, ANN202
            try:
                return runtime.resolve_image(str(ref))
            except KataError as err:
                if not err.reason.startswith("image.") or err.reason == "image.resolve":
                    raise
                unavailable.add(str(ref))
                return None  # its steps' derivations stay unresolved

        graph = compile_pipeline(pipeline, resolver=resolve, repo_root=repo_root,
                                 stat_cache=stat_cache,
                                 context=context_values(pipeline, cond_ctx, commit))
        targets = select_targets(graph, steps=steps, labels=labels)
        from kata.compile import unmatched_patterns

        # as kata validate: a typo in inputs leaves a step blind, and most never validate
        for warning in unmatched_patterns(pipeline, repo_root, graph.repo_paths):
            click.echo(f"warning: {warning}", err=True)
        if unavailable:  # exit 2 with every user, unless only unselected steps use them
            from kata.compile import resolve_images
            from kata.realise.plan import reach_all

            resolve_images(pipeline, lambda ref: runtime.resolve_image(str(ref)),
                           steps=None if targets is None else reach_all(targets, graph),
                           known=runtime.known_images)
        settings = pipeline.settings
        options = RealiseOptions(
            targets=targets,
            # --out copies the targets: their remote hits are fetched in the run, and
            # rebuilt in it when the remote cannot hand them over
            fetch=(tuple(targets) if targets is not None else graph.order) if out_dir else (),
            use_cache=settings.cache_enabled and not no_cache,
            record=settings.cache_enabled,
            max_parallel=settings.max_parallel or os.cpu_count() or 1,
            fail_fast=settings.fail_fast,
            timeout=settings.timeout.seconds if settings.timeout else None,
            repo_root=repo_root,
            work_root=Path(store.state_dir) / "work",
            git_commit=commit,
            git_branch=git_branch,
            git_event=event or "",
            git_tag=cond_ctx.tag if event else "",
            skip=condition_skips(pipeline, cond_ctx),
            statuses=status_steps(pipeline, cond_ctx),
            scope=scope,
            started=process_started(),  # [DONE]'s wall time is what the user waited
        )
        if dry_run:  # a plan runs nothing: it needs no secret and changes nothing
            plan = plan_run(graph, store, options, heal=False, remote=remote)
            _print_plan(plan_entries(graph, plan), plan.skipped, json_out)
            return
        plan = plan_run(graph, store, options, remote=remote)
        if plan.to_run:  # a pinned image of a step that runs: there, or exit 2 before any step
            from kata.compile import resolve_images

            if executor is None:  # a dead containerd: exit 2 here, not a failed first step
                runtime.connect()

            resolve_images(pipeline, lambda ref: runtime.resolve_image(str(ref)),
                           steps=plan.to_run, pinned=lambda ref: runtime.check_pinned(str(ref)),
                           known=runtime.known_images)
        # an untrusted run reads no value at all (its plan skips every step declaring one)
        needed_by: dict[str, str] = {}
        for name in plan.to_run:  # which step needs each secret, for a missing one's message
            step = graph.nodes[name].step
            for secret in (*step.secrets, *(x for s in step.services for x in s.secrets)):
                needed_by.setdefault(secret, name)
        options = dataclasses.replace(options, secrets=SecretSource.from_args(
            list(secrets), list(secret_files)).resolve(plan.secrets if scope.trusted else (),
                                                       needed_by))
        for name in unmaskable(options.secrets):
            click.echo(f"warning: secret {name} is {len(options.secrets[name])} character(s) "
                       f"long, too short to be masked safely (at least {MIN_SECRET_LENGTH}); "
                       "it will appear unmasked in output and logs", err=True)
        pulls.close()  # its bar erased: the run's reporter draws the pulls from here on
        from kata.report.journal import Journal, Tee

        # the terminal's reporter, and the live journal `kata web` follows
        journal = Journal(Path(store.state_dir) / "live")
        # a plain `kata run` that turns out a no-op leaves a record the next one replays
        simple = not (steps or labels or no_cache or secrets or secret_files or event or branch
                      or tag or action or base or untrusted or hook or default_branch or pull
                      or out_dir or remote or executor or remote_cache or remote_instance)
        captured: list = []
        reporter = Tee(_reporter(json_out), journal, *([_Capture(captured)] if simple else []))
        runtime.progress = pull_events(reporter)
        runner = runtime
        if executor is not None:  # steps run on REAPI workers
            from kata.executor.client import RemoteRuntime

            runner = RemoteRuntime(executor, runtime)
        if remote is not None:  # what earlier runs could not send, beside this run's work
            remote.resume(store)
        try:
            realiser = Realiser(graph, store=store, runtime=runner, emit=reporter,
                                options=options, remote=remote)
            journal.start(run_id=realiser.run_id, pipeline=realiser.pipeline, commit=commit,
                          branch=git_branch, git_event=event or "")
            result = realiser.run(plan)
        except ForcedInterrupt:
            reporter.close()
            click.echo("interrupted twice: killing the running steps without their grace "
                       "(Ctrl-C again to leave them behind)", err=True)
            sys.stdout.flush()
            _leave_after_kill(runtime)
        finally:
            reporter.close()
            if runner is not runtime:
                runner.close()
        if not result.ok and not result.interrupted:
            runtime.went_away()  # the run ends saying so, not with a step's gRPC error
        if simple and not result.exit_code and not result.interrupted:
            _record_noop(store, path, graph, plan, result, options, realiser.records.recorded,
                         captured)
        if out_dir is not None and not result.interrupted:
            realiser.localise_all(targets)  # remote hits among them: fetched for the copy
            _export(store, graph, targets, result, Path(out_dir), json_out)
    finally:
        pulls.close()
        runtime.close(passed=result is not None and result.ok and not result.interrupted)
        if result is not None and not result.interrupted:
            runtime.sweep_left()  # nothing ran, so nothing swept what a killed kata left
        if remote is not None:  # its uploads read the store: closed first
            remote.close()
        store.close()
    if result.interrupted:
        raise SystemExit(130)
    if result.exit_code:
        raise SystemExit(result.exit_code)


class _Capture:
    """A reporter keeping the run's events for its no-op record, only while the run can
    still be a no-op: the first event of a kind no no-op emits (``noop.NOOP_EVENTS``: a
    MISS, a step's output) is kept alone, which makes the run ineligible, and nothing
    after it. It kept every event, each output line of every step among them: a step
    printing 300 MB in short lines cost kata 780 MB (kata is in no step's cgroup)."""

    def __init__(self, events: list) -> None:
        from kata.realise.events import kind
        from kata.realise.noop import NOOP_EVENTS

        self.events = events
        self._kind, self._noop = kind, NOOP_EVENTS
        self._spoiled = False

    def __call__(self, event) -> None:  # noqa: ANN001
        if self._spoiled:
            return
        if self._kind(event) not in self._noop:
            self._spoiled = True
            self.events[:] = [event]  # what eligible() reads: no no-op record
            return
        self.events.append(event)

    def close(self) -> None:
        pass


def _record_noop(store, path: Path, graph, plan, result, options, recorded,  # noqa: ANN001
                 events: list) -> None:
    """Leave the no-op record of a run every step of which hit (``kata.realise.noop``); a
    record that cannot be written only means the next run takes the full path."""
    import time

    from kata.realise import events as ev
    from kata.realise import noop
    from store.errors import StoreError

    if not noop.eligible(graph, plan, result, options, (ev.kind(e) for e in events)):
        return
    started_ns = time.time_ns() - int((time.monotonic() - options.started) * 1e9) \
        if options.started else time.time_ns()
    try:
        noop.write_record(store, config=path, repo_root=options.repo_root, graph=graph,
                          plan=plan, record=recorded, commit=options.git_commit,
                          branch=options.git_branch, events=events, started_ns=started_ns)
    except (OSError, KataError, StoreError):
        pass


def _remote_executor(url: str | None, instance: str | None):  # noqa: ANN202
    """The remote executor ``--remote-executor`` or the host config's ``remote.executor``
    names, with the ``remote:`` section's instance, TLS files, token (None: steps run here).
    Bad settings are errors (exit 2)."""
    from kata.remote.config import load_remote_config

    return load_remote_config(url, instance, key="executor")


def _remote_cache_config(url: str | None, instance: str | None):  # noqa: ANN202
    """The remote cache the flags or the host config name (None: none). Bad settings are
    errors (exit 2); an unreachable remote is not (it warns once and the run goes on)."""
    from kata.remote.config import load_remote_config

    return load_remote_config(url, instance)


def _remote_cache(config, state_dir: str):  # noqa: ANN001, ANN202
    """The run's RemoteCache for ``config`` (None: none), its pending queue and back-off
    memo in the store's ``state_dir``."""
    if config is None:
        return None
    from kata.remote.cache import RemoteCache

    return RemoteCache(config, state_dir=state_dir,
                       warn=lambda line: click.echo(f"kata: warning: {line}", err=True))


def pull_events(reporter):  # noqa: ANN001, ANN202
    """The runtime's pull progress as ImagePull events for ``reporter``."""
    from kata.realise.events import ImagePull

    def forward(p) -> None:  # noqa: ANN001 - kata.runtimes.base.PullProgress
        reporter(ImagePull(image=p.image, layers_done=p.layers_done,
                           layers_total=p.layers_total, bytes_done=p.bytes_done,
                           bytes_total=p.bytes_total, done=p.done, stopped=p.stopped))

    return forward


def image_tags(state_dir: str):  # noqa: ANN201
    """The host's image tag record beside the store's local state (kata.runtimes.tags)."""
    from kata.runtimes.tags import FILE_NAME, ImageTags

    return ImageTags(Path(state_dir) / FILE_NAME)


def _export(store, graph, targets, result, out_dir: Path, json_out: bool) -> None:  # noqa: ANN001
    """--out: the artifacts of the targets (every step without targets) that passed."""
    from kata.realise.export import export, exported

    names = targets if targets is not None else graph.order
    rows = [(n, result.steps[n].status, result.steps[n].outputs, bool(graph.nodes[n].step.artifacts))
            for n in names if n in result.steps]
    from kata.server import out_owner

    _print_exports(export(store, exported(rows), out_dir, owner=out_owner(),
                          flat=targets is not None and len(targets) == 1), json_out)


def _print_exports(done, json_out: bool) -> None:  # noqa: ANN001
    import json

    from kata.realise.events import stamped

    for e in done:
        if json_out:
            click.echo(json.dumps(stamped({"event": "export", "step": e.step, "tree": e.tree,
                                           "path": str(e.path)})))
        else:
            click.echo(f"[OUT] {e.step} -> {e.path}")


def _triggered(pipeline, cond_ctx, json_out: bool) -> bool:  # noqa: ANN001
    """Whether the pipeline's triggers: let this event run it; if not, say so and why."""
    from kata.triggers import describe, match

    found = match(pipeline, cond_ctx)
    if found.runs:
        return True
    if json_out:
        from kata.report.jsonl import event_line

        click.echo(event_line({"event": "skip", "pipeline": pipeline.name,
                               "context": describe(cond_ctx), "closest": found.why}))
    else:
        click.echo(f'[SKIP] pipeline "{pipeline.name}": no trigger matches '
                   f"({describe(cond_ctx)}); closest: {found.why}")
    return False


def _print_plan(entries, skipped: dict[str, str], json_out: bool) -> None:  # noqa: ANN001
    from kata.report.jsonl import event_line
    from kata.report.plain import short_key

    for entry in entries:
        if json_out:
            data = {"event": "plan", "step": entry.step, "hit": entry.hit, "key": entry.key,
                    "why": entry.why}
            if entry.remote:
                data["remote"] = True
            click.echo(event_line(data))
        elif entry.hit:
            where = ", remote" if entry.remote else ""
            click.echo(f"[PLAN] {entry.step}: HIT (key: {short_key(entry.key)}{where})")
        else:
            click.echo(f"[PLAN] {entry.step}: MISS ({entry.why})")
    for name, why in skipped.items():
        if json_out:
            click.echo(event_line({"event": "plan", "step": name, "skip": True, "why": why}))
        else:
            click.echo(f"[PLAN] {name}: SKIP ({why})")


_common = [
    click.option("--dry-run", is_flag=True, help="Print each step's HIT or MISS (and why) "
                 "without running anything."),
    click.option("--no-cache", is_flag=True, help="Run every step, ignoring cached results."),
    click.option("--json", "json_out", is_flag=True, help="One JSON event per line."),
    click.option("--secret", "secrets", multiple=True, metavar="NAME=VALUE",
                 help="A secret for steps that declare it (default: from the environment)."),
    click.option("--secret-file", "secret_files", multiple=True, metavar="NAME=PATH",
                 help="A secret read from a file."),
    click.option("--untrusted", is_flag=True, help="Run as untrusted code: no secrets (steps "
                 "declaring one are skipped), no network: host, results kept in quarantine."),
    click.option("--out", "out_dir", type=click.Path(file_okay=False), metavar="DIR",
                 help="Copy the artifacts of the steps that passed to DIR/<step>/ "
                 "(directly into DIR for a single target)."),
    click.option("--remote-executor", metavar="URL", expose_value=False,
                 callback=lambda ctx, _p, v: _remember(ctx, "remote_executor", v),
                 help="Run the steps that must run on REAPI workers (`kata worker`) through "
                 "this Execution service: grpc://HOST:PORT (docs/remote.md); its instance "
                 "is --remote-instance's."),
    click.option("--remote-cache", "remote_cache", metavar="grpc[s]://HOST:PORT",
                 help="A Remote Execution API cache (BuildGrid, bazel-remote, ...) behind the "
                 "local store (default: remote.cache in /etc/kata/config.yaml). See "
                 "docs/remote.md."),
    click.option("--remote-instance", "remote_instance", metavar="NAME",
                 help="The remote's instance name (default: remote.instance, else \"\")."),
]


def _remember(ctx: click.Context, key: str, value):  # noqa: ANN001, ANN202
    """Keep an option that only the realiser's wiring reads in ``ctx.obj``."""
    if value is not None:
        ctx.ensure_object(dict)[key] = value
    return value


def _with_common(fn):  # noqa: ANN001, ANN202
    for option in reversed(_common):
        fn = option(fn)
    return config_file_option(fn)


@click.command()
@click.option("--step", "steps", multiple=True, metavar="NAME",
              help="Run this step (and what it needs) only; repeatable. A matrix step's "
              "name runs every instance of it.")
@_with_common
@click.option("--event", type=click.Choice(EVENTS),
              help="Run as this event: the pipeline runs only if a trigger matches. "
              "Without it a local run ignores triggers (only:/when: see a push). "
              "pull_request runs untrusted.")
@click.option("--branch", metavar="B", help="The branch (default: the current one).")
@click.option("--tag", metavar="T", help="The tag of a tag event (default: the newest at HEAD); "
              "implies --event tag.")
@click.option("--action", type=click.Choice(PR_ACTIONS),
              help="The pull request action.")
@click.option("--base", metavar="REF", help="Changed paths against REF (its merge-base).")
@click.option("--hook", type=click.Choice(["pre-push", "post-receive"]),
              help="Set by kata's installed git hooks: a post-receive run of a ref that is "
              "not protected is untrusted (see SECURITY.md).")
@click.option("--default-branch", metavar="B", help="The repository's default branch "
              "(protected when the host config names none; default: read from git).")
@click.option("--pull", is_flag=True, help="Ask the registry what each image tag stands for "
              "now and pull it (default: the digest kata recorded when it last pulled, "
              "imported or resolved the tag).")
@click.pass_context
def run(ctx: click.Context, steps: tuple[str, ...], dry_run: bool, no_cache: bool,
        json_out: bool, secrets: tuple[str, ...], secret_files: tuple[str, ...],
        out_dir: str | None, untrusted: bool, event: str | None, branch: str | None,
        tag: str | None, action: str | None, base: str | None, hook: str | None,
        default_branch: str | None, pull: bool, remote_cache: str | None = None,
        remote_instance: str | None = None) -> None:
    """Run the pipeline in .kata-ci.yaml."""
    if tag is not None and event is None:
        event = "tag"  # --tag T alone: run as that tag's event (a push has no tag)
    if tag is not None and event != "tag":
        raise click.UsageError(f"--tag is for --event tag; a {event} has no tag")
    if branch is not None and event == "tag":
        raise click.UsageError("--branch is not for --event tag; a tag event has no branch")
    _realise(ctx, steps=steps, dry_run=dry_run, no_cache=no_cache, json_out=json_out,
             secrets=secrets, secret_files=secret_files, event=event, branch=branch, tag=tag,
             action=action, base=base, untrusted=untrusted, hook=hook or "",
             default_branch=default_branch, pull=pull, out_dir=out_dir,
             remote_cache=remote_cache, remote_instance=remote_instance)


@click.command()
@click.argument("labels", nargs=-1, required=True)
@_with_common
@click.pass_context
def build(ctx: click.Context, labels: tuple[str, ...], dry_run: bool, no_cache: bool,
          json_out: bool, secrets: tuple[str, ...], secret_files: tuple[str, ...],
          out_dir: str | None, untrusted: bool, remote_cache: str | None = None,
          remote_instance: str | None = None) -> None:
    """Realise targets and what they need: //step, //prefix*, //... ."""
    _realise(ctx, labels=labels, dry_run=dry_run, no_cache=no_cache, json_out=json_out,
             secrets=secrets, secret_files=secret_files, untrusted=untrusted, out_dir=out_dir,
             remote_cache=remote_cache, remote_instance=remote_instance)


@click.command()
@click.option("--step", "steps", multiple=True, metavar="NAME",
              help="Only this step's log (a matrix step's name: every instance's); repeatable.")
@click.option("--run", "run_id", metavar="ID",
              help="That run (default: the last trusted one, with --step the last that has "
                   "those steps; an untrusted run's only by its ID).")
@click.option("--service", "service", metavar="NAME",
              help="The log of the step's service NAME instead (with --step).")
@click.option("--remote-cache", "remote_cache", metavar="grpc[s]://HOST:PORT",
              help="Fetch the log of a remote cache hit this host never fetched from there "
                   "(default: remote.cache in /etc/kata/config.yaml).")
@click.option("--remote-instance", "remote_instance", metavar="NAME",
              help="The remote's instance name (default: remote.instance, else \"\").")
@config_file_option
@click.pass_context
def logs(ctx: click.Context, steps: tuple[str, ...], run_id: str | None,
         service: str | None = None, remote_cache: str | None = None,
         remote_instance: str | None = None) -> None:
    """Show the output of the last trusted run (or of --run ID, which an untrusted run
    needs: stderr names the run shown).

    A cached step shows the output of the run that produced its result, marked so; a
    remote cache hit whose log this host never fetched is fetched from the remote cache.
    """
    from kata.cli.store_cmds import open_store
    from kata.remote.config import load_remote_config

    remote = load_remote_config(remote_cache, remote_instance)  # bad flags: exit 2 first
    store = open_store(ctx, read_only=True)
    try:
        asked = steps
        record, steps = _run_record(store, ctx, run_id, steps, verb="showing")
        if service is not None:
            if len(asked) == 1 and len(steps) > 1:  # a matrix step's name: its instances
                raise KataError("logs.usage", f"--service needs one step, and {asked[0]!r} is "
                                f"a matrix step of {len(steps)} instances; name one: "
                                f"--step {shlex.quote(steps[0])}", exit_code=2)
            if len(steps) != 1:
                raise KataError("logs.usage", "--service needs exactly one --step NAME",
                                exit_code=2)
            entry = record.step(steps[0])
            assert entry is not None
            _print_service_log(store, record, entry, service)
            return
        chosen = [e for e in record.steps if not steps or e.name in steps]
        _fetch_remote_logs(store, chosen, remote)
        for entry in chosen:
            _print_log(store, record, entry)
    finally:
        store.close()


def _fetch_remote_logs(store, entries, remote_config) -> None:  # noqa: ANN001
    """Bring the logs of remote hits this host never fetched into ``store``, from
    ``remote_config`` by the key that hit (nothing when no remote is named: the log line
    then says how to name one)."""
    wanted = [e for e in entries if e.cache == "HIT" and e.log and e.key
              and not store.has_blob(e.log)]
    if not wanted or remote_config is None:
        return
    from kata.remote.cache import RemoteCache

    cache = RemoteCache(remote_config, warn=lambda line: None, backoff=False)
    try:
        for entry in wanted:
            rec = cache.lookup(entry.key)
            if rec is not None and rec.realisation.log == entry.log:
                cache.fetch_log(store, rec)
    finally:
        cache.close()


@click.command("export")
@click.option("--run", "run_id", metavar="ID",
              help="That run (default: the last trusted one, with --step the last that has "
                   "those steps; an untrusted run's only by its ID).")
@click.option("--step", "steps", multiple=True, metavar="NAME",
              help="This step's artifacts only (one: directly into DIR; a matrix step's "
                   "name: every instance's); repeatable.")
@click.option("--out", "out_dir", required=True, type=click.Path(file_okay=False),
              metavar="DIR", help="Where the artifacts go: DIR/<step>/, or DIR for one --step.")
@click.option("--json", "json_out", is_flag=True, help="One JSON event per exported step.")
@click.option("--remote-cache", "remote_cache", metavar="grpc[s]://HOST:PORT",
              help="Fetch remote cache hits this host never fetched from there (default: "
                   "remote.cache in /etc/kata/config.yaml).")
@click.option("--remote-instance", "remote_instance", metavar="NAME",
              help="The remote's instance name (default: remote.instance, else \"\").")
@config_file_option
@click.pass_context
def export_cmd(ctx: click.Context, run_id: str | None, steps: tuple[str, ...], out_dir: str,
               json_out: bool, remote_cache: str | None = None,
               remote_instance: str | None = None) -> None:
    """Copy the artifacts of an earlier run's steps out of the store (modes and symlinks
    kept); a remote cache hit the run did not need to fetch is fetched first."""
    import hashlib

    from kata.cli.store_cmds import open_store
    from store.tree import EMPTY_TREE
    from kata.realise.export import export, exported, fetch_missing
    from kata.remote.config import load_remote_config

    remote = load_remote_config(remote_cache, remote_instance)  # bad flags: exit 2 first
    store = open_store(ctx, read_only=True)
    try:
        record, steps = _run_record(store, ctx, run_id, steps, verb="exporting")
        # what a step that declares no artifacts stores (computed: the store may be read-only)
        empty_tree = "sha256:" + hashlib.sha256(EMPTY_TREE).hexdigest()
        def rows_of(record):  # noqa: ANN001, ANN202
            return [(e.name, e.status, e.outputs, bool(e.outputs) and e.outputs != empty_tree)
                    for e in record.steps if not steps or e.name in steps]

        chosen = exported(rows_of(record), named=steps)
        if not chosen:  # a deploy script's empty DIR must not pass for an export
            raise _nothing_to_export(store, ctx, record, run_id, rows_of)
        keys = {e.name: e.key if e.cache == "HIT" else "" for e in record.steps}
        fetch_missing(store, [(n, tree, keys[n]) for n, tree in chosen], record.id, remote)
        from kata.server import out_owner

        _print_exports(export(store, chosen, Path(out_dir),
                              flat=len(steps) == 1, owner=out_owner()), json_out)
    finally:
        store.close()


def _nothing_to_export(store, ctx: click.Context, record, run_id: str | None,  # noqa: ANN001
                       rows_of) -> KataError:  # noqa: ANN001
    """KataError export.nothing (exit 1) for a run none of whose steps passed with
    artifacts (a `kata build //lint` after the full run, a run whose build failed): it
    names the run's steps and, without --run, the last trusted run that has artifacts."""
    from kata.keys import trusted_scope
    from kata.realise.export import exported

    states = ", ".join(f"{e.name} {e.status}" for e in record.steps) or "no steps"
    hint = "; `kata runs` lists the recorded runs"
    if not run_id:
        pipeline = _pipeline_name(ctx)
        for older in store.iter_runs():  # newest first
            if older.id == record.id or (pipeline and older.pipeline != pipeline) or \
                    not trusted_scope(older.scope):
                continue
            if exported(rows_of(older)):
                hint = (f"; the last trusted run that has some is {older.id}: `kata export "
                        f"--run {older.id} --out DIR`")
                break
    return KataError("export.nothing", f"run {record.id} has no artifacts to export (no "
                     f"step of it passed with artifacts: {states}){hint}", obj=record.id,
                     exit_code=1)


def _run_record(store, ctx: click.Context, run_id: str | None,  # noqa: ANN001, ANN202
                steps: tuple[str, ...] = (), *, verb: str):
    """(run record, step names): the run ``--run ID`` names, else the last run of this
    pipeline that has every step of ``steps`` (a `kata run --step` or `kata build` after
    it may have left them out) and did not skip them all (a step run only on tags: the
    last tag run's; the last run that skipped it when none ran it; KataError logs.no_run: exit 2 for an ID that names no run,
    1 when nothing is recorded yet), and ``steps`` with a matrix step's name replaced by
    its instances' names, as ``kata run --step`` takes it (KataError logs.no_step, exit
    2, for a name that is neither, in the last run's terms when no run has it).
    Without ``--run`` only runs of a trusted scope are taken (an untrusted run only when
    its ID is named, so a branch pushed after main can make neither a deploy script ship
    what it built, ``kata export``, nor its output pass for main's, ``kata logs``);
    stderr names the run taken, "kata: <verb> run ID (<ref>), ..."."""
    from kata.keys import trusted_scope

    if run_id:
        record = store.get_run(run_id)
        if record is None:
            raise KataError("logs.no_run", f"no run {run_id!r} in the store "
                            "(`kata runs` lists the recorded ones)", obj=run_id)
        return record, _step_names(record, steps)
    pipeline, unloaded = _pipeline_here(ctx)
    last = chosen = skipped = None
    for record in store.iter_runs():  # newest first
        if (pipeline and record.pipeline != pipeline) or not trusted_scope(record.scope):
            continue
        last = last or record
        try:
            names = _step_names(record, steps)
        except KataError:
            continue  # not in this run: an older one may have them
        if steps and all(e.status == "skipped" for e in record.steps if e.name in names):
            # skipped here (a `when: tag...` release on a branch run): an older run in
            # which it ran or hit has its output
            skipped = skipped or (record, names)
            continue
        chosen = record
        break
    if chosen is None and skipped is not None:  # skipped in every run: the last says why
        chosen, names = skipped
    if last is None:
        raise KataError("logs.no_run", "no trusted run recorded yet" +
                        (f" for pipeline {pipeline!r}" if pipeline else "") +
                        " (an untrusted run only by --run ID: `kata runs` lists them)",
                        exit_code=1)
    if chosen is None:  # no run has them: say what the last one has
        return last, _step_names(last, steps)
    where = chosen.scope.removeprefix("ref:") or "no git ref"
    # which pipeline's: without a config that loads, the last of any (another project's)
    of = "the pipeline" if pipeline else f"pipeline {chosen.pipeline!r}"
    if unloaded:
        of += f" (the config here does not load: {unloaded}; so the last of any pipeline)"
    click.echo(f"kata: {verb} run {chosen.id} ({where}), the last trusted run of {of} (an "
               "untrusted one only with --run ID)", err=True)
    return chosen, names



def _step_names(record, steps: tuple[str, ...]) -> tuple[str, ...]:  # noqa: ANN001
    """``steps`` as ``record``'s step names (a matrix step's name: its instances', as
    ``//name`` matches them); KataError logs.no_step (exit 2) for a name it lacks."""
    from kata.labels import Label

    known = [e.name for e in record.steps]
    names: list[str] = []
    for name in steps:
        found = [k for k in known if Label(kind="exact", name=name).matches(k)]  # as //name
        if not found:
            raise KataError("logs.no_step", f"run {record.id} has no step {name!r}"
                            f"{_did_you_mean(name, known)} (it has: "
                            f"{', '.join(known) or 'none'})", obj=name)
        names.extend(n for n in found if n not in names)
    return tuple(names)


def _did_you_mean(name: str, known: list[str]) -> str:
    """`` (did you mean build?)``: the step name ``name`` was meant as (a label's
    ``//build`` where a name goes, a typo), else ""."""
    import difflib

    bare = name.lstrip("/")
    if bare != name and any(k == bare or k.startswith(bare + " (") for k in known):
        return f" (did you mean {bare}? --step takes a step's name, not a //label)"
    near = difflib.get_close_matches(bare, known, n=1)
    return f" (did you mean {near[0]}?)" if near else ""


def _print_service_log(store, record, entry, service: str) -> None:  # noqa: ANN001
    name = entry.name
    by = ""
    logs = dict(entry.service_logs)
    if entry.cache == "HIT" and entry.produced_by:
        by = entry.produced_by  # the run that ran the step (and its services)
        produced = store.get_run(by)
        ran = produced.step(name) if produced is not None else None
        logs = dict(ran.service_logs) if ran is not None else {}
    digest = logs.get(service)
    if not digest:
        raise KataError("logs.no_service", f"step {name} of run {record.id} has no "
                        f"service log {service!r} (it has: {', '.join(sorted(logs)) or 'none'})"
                        + (f" (run {by} ran it)" if by else ""), obj=service, exit_code=1)
    click.echo(f"== {name} / service {service}" + (f": cached — run {by}" if by else "") + " ==")
    with store.open_blob(digest) as f:
        text = f.read().decode("utf-8", errors="replace")
    if text:  # the service's bytes as stored; its escape sequences shown, not obeyed
        text = terminal_safe(text)
        click.echo(text, nl=not text.endswith("\n"))


def _pipeline_name(ctx: click.Context) -> str | None:
    return _pipeline_here(ctx)[0]


def _pipeline_here(ctx: click.Context) -> tuple[str | None, str]:
    """(this directory's pipeline name, "") or (None, why not: "" without a config, else
    the load error's message, for a config that does not load)."""
    from kata.cli.config_cmds import load

    try:
        _, pipeline = load(ctx)
    except KataError as err:  # no config here: the last run of any pipeline
        return None, "" if err.reason == "config.not_found" else err.message
    return pipeline.name, ""


def _tests(store, entry) -> str:  # noqa: ANN001
    """`` — 2 passed, 1 failed`` when the step recorded a test report."""
    from kata.realise.records import read_report

    report = read_report(store, getattr(entry, "report", ""))
    return f" — {report.summary()}" if report is not None else ""


def _print_log(store, record, entry) -> None:  # noqa: ANN001
    name, status = entry.name, entry.status
    if entry.cache == "HIT":
        by = entry.produced_by or "an earlier run"
        head = f"== {name}: cached — output of run {by}{_tests(store, entry)} =="
    elif status == "skipped":
        head = f"== {name}: skipped ({entry.message}) =="
    else:
        exit_status = entry.exit_status
        extra = f", exit {exit_status}" if exit_status not in (None, 0) else ""
        if getattr(entry, "attempts", 1) > 1:
            extra += f", attempt {entry.attempts}"
        head = f"== {name}: {status}{extra}, {float(entry.duration or 0):.1f}s{_tests(store, entry)} =="
    click.echo(head)
    digest = entry.log
    if not digest:
        return
    if entry.cache == "HIT" and not store.has_blob(digest):
        # a remote cache hit that no step of this host needed: its log stayed remote
        click.echo(f"(the log {digest} is in the remote cache; this host never fetched it: "
                   "`kata logs --remote-cache grpc://HOST:PORT` fetches it, as does "
                   "remote.cache in the host config)")
        return
    with store.open_blob(digest) as f:
        data = f.read()
    text = data.decode("utf-8", errors="replace")
    if text:  # the step's bytes as stored; its escape sequences shown, not obeyed
        text = terminal_safe(text)
        click.echo(text, nl=not text.endswith("\n"))


def last_realised_derivation(ctx: click.Context, pipeline: str | None, step: str,
                              node=None) -> bytes | None:  # noqa: ANN001
    """The encoded derivation record of ``step``'s last realisation in a trusted run, for
    ``kata why`` (an untrusted branch's run is not what main's step changed from);
    ``node`` (its derivation now): when that realisation had the same derivation hash, the
    node's own record (nothing changed), whether or not this host stored one."""
    from kata.cli.store_cmds import open_store

    from kata.realise.history import previous_derivations

    drv_hash = node.drv_hash if node is not None and node.drv_hash else ""
    store = open_store(ctx, read_only=True)
    try:
        data, same = previous_derivations(store, pipeline, {step: drv_hash},
                                          trusted=True)[step]
    finally:
        store.close()
    return node.record().encode() if same else data


def quiet_resolver(ctx: click.Context):  # noqa: ANN201
    """An image resolver for commands that only compare keys (``kata why``): the runtime's
    answer when it can give one, else None (the image stays unresolved)."""
    from kata.cli.store_cmds import open_store

    with open_store(ctx, read_only=True) as store:
        # a read-only store's state dir is private and gone once closed: nothing recorded
        tags = None if store.read_only else image_tags(store.state_dir)
    runtime = LazyRuntime((ctx.find_root().obj or {}).get("containerd_address"), tags)

    def resolve(ref) -> str | None:  # noqa: ANN001
        try:
            return runtime.resolve_image(str(ref))
        except KataError:
            return None

    return resolve


FORCED_CLEANUP_SECONDS = 20.0  # a second Ctrl-C waits at most this long for the deletes


def _leave_after_kill(runtime: LazyRuntime) -> NoReturn:
    """Exit 130 after a second Ctrl-C: the running steps' containers get SIGKILL at once
    (``runtime.hurry()``) and are deleted by their own threads, waited for up to
    FORCED_CLEANUP_SECONDS, so that nothing is left for the next run to sweep. A third
    Ctrl-C (or SIGTERM, SIGHUP) exits at once."""
    import signal
    import time

    for signo in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP):
        signal.signal(signo, lambda *_: os._exit(130))
    runtime.hurry()
    deadline = time.monotonic() + FORCED_CLEANUP_SECONDS

    def finish() -> None:
        for thread in threading.enumerate():
            if thread.name.startswith("kata-step"):
                thread.join(max(0.0, deadline - time.monotonic()))
        runtime.drain()  # the deferred task and snapshot deletes, the shim group

    waiter = threading.Thread(target=finish, name="kata-forced-cleanup", daemon=True)
    waiter.start()
    waiter.join(max(0.0, deadline - time.monotonic()))
    sys.stdout.flush()
    os._exit(130)
