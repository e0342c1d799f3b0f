"""`kata` commands: config (validate, graph, why) and version."""

from __future__ import annotations

import json
import os

import click


def register(cli: click.Group) -> None:
    """Add this module's commands to the root group."""
    cli.add_command(version)
    cli.add_command(validate)
    cli.add_command(graph)
    cli.add_command(why_cmd)
    cli.add_command(schema)


@click.command()
def version() -> None:
    """Print version, Python version and platform."""
    import platform

    from kata import __version__

    machine = {"x86_64": "amd64", "aarch64": "arm64"}.get(platform.machine(), platform.machine())
    click.echo(f"kata-ci v{__version__} (python {platform.python_version()}, linux/{machine})")


def _set_config_file(ctx: click.Context, _param: click.Parameter, value: str | None) -> None:
    if value is not None:
        root = ctx.find_root()
        root.ensure_object(dict)
        root.obj["config_file"] = value


#: ``-f/--file`` after the subcommand (``kata run -f ci.yaml``), as before it; the later wins.
config_file_option = click.option(
    "-f", "--file", "config_file", type=click.Path(dir_okay=False), expose_value=False,
    callback=_set_config_file,
    help="Pipeline config (default: .kata-ci.yaml at the repository root).")


def load(ctx: click.Context, *, cached: bool = False):
    """(config path, Pipeline) for -f/--file or the .kata-ci.yaml found from the cwd up.

    ``cached``: a config loaded before (same bytes, same code) is not parsed again
    (``kata.loaded``; ``kata run`` and ``kata build``; ``kata validate`` always parses)."""
    from kata.configfile import find_config

    obj = ctx.find_root().obj or {}
    path = find_config(os.getcwd(), obj.get("config_file"))
    if cached:
        from kata.cli.store_cmds import loaded_dir
        from kata.loaded import load_cached

        return path, load_cached(path, loaded_dir(ctx))
    from kata.loader import load_pipeline

    return path, load_pipeline(path)


@click.command()
def schema() -> None:
    """Print the JSON Schema of .kata-ci.yaml (for editors: yaml-language-server)."""
    from kata.schema import shipped_text

    click.echo(shipped_text(), nl=False)


@click.command()
@config_file_option
@click.option("--json", "json_out", is_flag=True, help="One JSON document (docs/json.md).")
@click.option("--offline", is_flag=True,
              help="Do not check that every image is in kata's image store or fetchable.")
@click.pass_context
def validate(ctx: click.Context, json_out: bool, offline: bool) -> None:
    """Check the config (YAML, keys, types, images, dependencies, cycles) without running.

    Images are checked (local, else fetchable) when containerd is running; --offline skips it.
    """
    from kata.compile import plan, resolve_images
    from kata.errors import KataError

    try:
        path, pipeline = load(ctx)
        p = plan(pipeline)
        if not offline:
            from kata.runtimes.containerd import ContainerdRuntime

            runtime = ContainerdRuntime.connect_running((ctx.find_root().obj or {}).get(
                "containerd_address"))
            if runtime is None:
                click.echo("note: images not checked (containerd is not running)", err=True)
            else:
                try:
                    resolve_images(pipeline, lambda ref: runtime.resolve_image(str(ref)),
                                   pinned=lambda ref: runtime.check_pinned(str(ref)),
                                   known=lambda: [r.name for r in runtime.list_images()])
                finally:
                    runtime.close()
    except KataError as err:
        if json_out:
            from kata.cli.history_cmds import echo_json
            from kata.report.jsonl import error_event

            error = error_event(err)
            del error["event"]
            echo_json({"valid": False, "error": error})
        raise
    n = len(pipeline.steps)
    bases = {s.matrix_of for s in pipeline.steps if s.matrix_of}
    instances = sum(1 for s in pipeline.steps if s.matrix_of)
    from kata.compile import unmatched_patterns

    warnings = unmatched_patterns(pipeline, os.path.dirname(os.path.realpath(path)))  # as kata run
    if json_out:
        from kata.cli.history_cmds import echo_json

        echo_json({"valid": True, "file": str(path), "pipeline": pipeline.name, "steps": n,
                   "matrix_steps": len(bases), "matrix_instances": instances,
                   "cycles": 0, "groups": len(p.levels),
                   "levels": [list(level) for level in p.levels], "warnings": warnings})
        return
    for warning in warnings:
        click.echo(f"warning: {warning}", err=True)
    expanded = ""
    if bases:
        expanded = (f" ({len(bases)} matrix step{'s' if len(bases) != 1 else ''} "
                    f"expanded to {instances} instance{'s' if instances != 1 else ''})")
    click.echo(f"Config valid. {n} step{'s' if n != 1 else ''}{expanded}, 0 cycles, "
               f"{len(p.levels)} parallel group{'s' if len(p.levels) != 1 else ''}")


def overview_lines(order, deps) -> list[str]:
    """`build -> test, lint` / `test, lint -> deploy`: steps with the same dependencies
    share a line; a step nothing is connected to stands alone."""
    groups: dict[tuple[str, ...], list[str]] = {}
    used = {d for n in order for d in deps[n]}
    lines_at: list[tuple[str, ...] | str] = []
    for n in order:
        ds = deps[n]
        if ds:
            if ds not in groups:
                groups[ds] = []
                lines_at.append(ds)
            groups[ds].append(n)
        elif n not in used:
            lines_at.append(n)
    return [x if isinstance(x, str) else f"{', '.join(x)} -> {', '.join(groups[x])}"
            for x in lines_at]


def _dot_id(s: str) -> str:
    return '"' + s.replace("\\", "\\\\").replace('"', '\\"') + '"'


@click.command()
@click.option("--format", "fmt", type=click.Choice(["text", "dot", "json"]), default="text",
              show_default=True, help="text (the overview), dot (Graphviz) or json.")
@config_file_option
@click.pass_context
def graph(ctx: click.Context, fmt: str) -> None:
    """Print the step dependency graph."""
    from kata.compile import plan

    path, pipeline = load(ctx)
    if fmt == "text":
        p = plan(pipeline)
        for line in overview_lines(p.order, p.deps):
            click.echo(line)
        return
    if fmt == "dot":
        p = plan(pipeline)
        click.echo(f"digraph {_dot_id(pipeline.name)} {{")
        click.echo("  rankdir=LR;")
        for n in p.order:
            click.echo(f"  {_dot_id(n)};")
        for n in p.order:
            for d in p.deps[n]:
                click.echo(f"  {_dot_id(d)} -> {_dot_id(n)};")
        click.echo("}")
        return
    from kata.compile import compile_pipeline

    g = compile_pipeline(pipeline, resolver=recorded_tags(ctx), repo_root=path.resolve().parent)
    level_of = {n: i for i, lvl in enumerate(g.levels) for n in lvl}
    doc = {
        "pipeline": pipeline.name,
        "steps": [{"name": n, "image": str(g.nodes[n].step.image),
                   "depends_on": list(g.nodes[n].deps), "level": level_of[n],
                   "drv_hash": g.nodes[n].drv_hash,
                   **({"matrix_of": g.nodes[n].step.matrix_of,
                       "matrix": dict(g.nodes[n].step.matrix)}
                      if g.nodes[n].step.matrix_of else {})} for n in g.order],
        "edges": [list(e) for e in g.edges],
        "levels": [list(lvl) for lvl in g.levels],
    }
    click.echo(json.dumps(doc, indent=2))


def recorded_tags(ctx: click.Context):  # noqa: ANN201
    """An image resolver that asks nothing of containerd or a registry (``kata graph``
    stays a pure command): the digest this host's tag record holds for a tag (the one
    the next ``kata run`` without ``--pull`` uses), None for a tag it never resolved;
    a reference by digest needs no resolver."""
    from kata.cli.run_cmds import image_tags
    from kata.cli.store_cmds import existing_state_dir

    state = existing_state_dir(ctx)
    if state is None:
        return None
    tags = image_tags(state)
    return lambda ref: tags.get(str(ref))


def previous_lookup(ctx: click.Context, pipeline: str | None = None, graph=None):  # noqa: ANN001
    """Where `kata why` finds a step's last recorded derivation: the derivation record of
    the step's last realisation (the newest trusted run of this pipeline in which it
    passed). With ``graph`` (the derivations now): a step whose last realisation had the
    derivation hash it has now is unchanged even when this host holds no record of it (a
    remote-cache hit not fetched here)."""
    from kata.cli.run_cmds import last_realised_derivation

    def lookup(step: str):  # noqa: ANN202
        node = graph.nodes[step] if graph is not None else None
        return last_realised_derivation(ctx, pipeline, step, node)

    return lookup


@click.command("why")
@click.argument("label")
@click.option("--against", "against", type=click.Path(dir_okay=False, exists=True),
              help="Compare against this encoded derivation instead of the last recorded one.")
@config_file_option
@click.pass_context
def why_cmd(ctx: click.Context, label: str, against: str | None) -> None:
    """Explain what changed a step's cache key (e.g. `kata why //build`)."""
    from pathlib import Path

    from kata.compile import compile_pipeline
    from kata.why import why

    from kata.cli.run_cmds import git_context, quiet_resolver
    from kata.realise.plan import context_values

    path, pipeline = load(ctx)
    repo_root = path.resolve().parent
    context = None
    if any(s.context for s in pipeline.steps):
        # the values a plain `kata run` here gives (else every KATA_* a step asks for
        # would show as changed to "")
        cond_ctx, commit, _ = git_context(repo_root, event=None, branch=None, tag=None,
                                          action=None, base=None)
        context = context_values(pipeline, cond_ctx, commit)
    g = compile_pipeline(pipeline, resolver=quiet_resolver(ctx), repo_root=repo_root,
                         context=context)
    lookup = previous_lookup(ctx, pipeline.name, g)
    if against is not None:
        data = Path(against).read_bytes()
        lookup = lambda step: data  # noqa: E731
    for result in why(g, label, lookup):
        for line in result.lines():
            click.echo(line)
