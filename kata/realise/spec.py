"""What the runtime is handed for one step: the container spec, built from the compiled
node (images pinned by the digests the compiler hashed), never from the raw config.

Secret values never enter a spec (containerd writes specs to disk): they reach the step
through files on a tmpfs bind-mounted at ``SECRETS_TARGET`` and exported by a prelude.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING

from kata.errors import KataError
from kata.model import is_env_name
from kata.realise.output import MERGE_STDERR
from kata.realise.workspace import SECRETS_PRELUDE, SECRETS_TARGET
from kata.runtimes.base import Mount, Readiness, ServiceSpec, StepSpec
from store.tree import STEP_MTIME_NS

#: ``SOURCE_DATE_EPOCH`` (reproducible-builds.org) of every step unless its env sets it:
#: the mtime of what it sees (1980-01-02T00:00:00Z, ``STEP_MTIME_NS``), so what tools
#: generate (a wheel's compiled module and dist-info, an sdist's PKG-INFO) carries that
#: time too and is the same bytes on every run and host, as Nix's builders do.
SOURCE_DATE_EPOCH = str(STEP_MTIME_NS // 10**9)

if TYPE_CHECKING:
    from kata.compile import Node
    from kata.model import Service


#: HOME when the runtime set none: runc (and Docker) give a user missing from the image's
#: /etc/passwd ``HOME=/``, crun leaves it unset; one spec must be one environment
HOME_FALLBACK = '[ -n "${HOME-}" ] || export HOME=/\n'


def shell_script(commands: Sequence[str]) -> str:
    """One shell, commands in order, stop at the first failure (a CI step's contract);
    stderr joins stdout first, so their order is the terminal's (kata.realise.output).
    ``HOME_FALLBACK`` first, so HOME is set whichever OCI runtime ran it."""
    return HOME_FALLBACK + MERGE_STDERR + "set -e\n" + "\n".join(commands) + "\n"


def image_of(node: "Node") -> str:
    """The step's image pinned by the digest the compiler hashed: ``name@sha256:…``."""
    digest = node.derivation.image
    if not digest:
        raise KataError("image.unresolved", f"step {node.step.name}: image {node.step.image} "
                        "has no resolved digest", obj=node.step.name)
    return str(node.step.image.pin(digest))


def secret_values(node: "Node", given: Mapping[str, str]) -> dict[str, str]:
    """The values of every secret the step and its services declare, from ``given``;
    ``secret.missing`` / ``secret.bad_name`` naming the step otherwise."""
    name = node.step.name
    values: dict[str, str] = {}
    step = node.step
    for secret in dict.fromkeys([*step.secrets, *(x for s in step.services for x in s.secrets)]):
        if secret not in given:
            raise KataError("secret.missing", f"step {name} needs the secret {secret}: "
                            f"set ${secret} or pass --secret {secret}=...", obj=name)
        if not is_env_name(secret):
            raise KataError("secret.bad_name", f"step {name}: {secret!r} is not a valid "
                            "environment variable name", obj=name)
        values[secret] = given[secret]
    return values


def service_spec(node: "Node", service: "Service", secrets_dir: Path | None) -> ServiceSpec:
    """A service as the runtime runs it: the image the compiler hashed, its command."""
    digest = next((s.image for s in node.derivation.services if s.name == service.name), None)
    if not digest:
        raise KataError("image.unresolved", f"step {node.step.name}: service "
                        f"{service.name}'s image {service.image} has no resolved digest",
                        obj=node.step.name)
    mounts: tuple[Mount, ...] = ()
    argv: tuple[str, ...] = service.entrypoint
    if service.commands:
        script = shell_script(service.commands)
        if secrets_dir is not None:
            script = SECRETS_PRELUDE + script
        argv = ("/bin/sh", "-c", script)
    if secrets_dir is not None:  # files only, for a service without commands
        mounts = (Mount(kind="bind", target=SECRETS_TARGET, source=str(secrets_dir),
                        readonly=True),)
    ready = None
    if service.ready is not None:
        ready = Readiness(kind=service.ready.kind, target=service.ready.target,
                          timeout=service.ready.timeout.seconds)
    return ServiceSpec(name=service.name, image=str(service.image.pin(digest)), argv=argv,
                       env=dict(sorted(dict(service.env).items())), mounts=mounts, ready=ready,
                       resources=service.resources, user=service.user or "",
                       owned=(str(secrets_dir),) if secrets_dir is not None else ())


def step_spec(node: "Node", *, workdir: Path, secrets_dir: Path | None, run_id: str,
              services: tuple[ServiceSpec, ...] = (),
              cache_paths: tuple[str, ...] = ()) -> StepSpec:
    """The step's container: its workspace bind-mounted at ``step.workdir``, the env its
    key holds (the pipeline's under the step's and the context it asked for, all over
    ``SOURCE_DATE_EPOCH``), labels naming the run and the step; ``cache_paths``: the
    restored ``cache.paths`` its user owns (``StepSpec.cache_paths``)."""
    step = node.step
    merged = {"SOURCE_DATE_EPOCH": SOURCE_DATE_EPOCH}
    # the derivation's env, merged and sorted as the key has it, not one given beside the
    # graph (the realiser's options carried the pipeline's, which a caller could leave out
    # while the key held it): two configs with one key run one environment
    merged.update(dict(node.derivation.env))
    merged = dict(sorted(merged.items()))
    mounts = [Mount(kind="bind", target=step.workdir, source=str(workdir))]
    script = shell_script(step.commands)
    if secrets_dir is not None:
        mounts.append(Mount(kind="bind", target=SECRETS_TARGET, source=str(secrets_dir),
                            readonly=True))
        script = SECRETS_PRELUDE + script
    return StepSpec(
        image=image_of(node),
        argv=("/bin/sh", "-c", script),
        env=merged,
        workdir=step.workdir,
        user=step.user or "0:0",  # the runtime takes uid[:gid]; no user: root
        mounts=tuple(mounts),
        network=step.network,  # type: ignore[arg-type]
        timeout=step.timeout.seconds if step.timeout is not None else None,
        labels={"kata.run": run_id, "kata.step": step.name},
        # in the key's order (by name), not the config's: the order reaches the step (its
        # /etc/hosts line names them so) and decides which service launches first
        services=tuple(sorted(services, key=lambda s: s.name)),
        resources=step.resources,  # unset fields: the runtime's host defaults
        cache_paths=cache_paths,
    )
