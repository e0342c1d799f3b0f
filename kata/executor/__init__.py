"""Remote execution over the Remote Execution API (REAPI v2) and the Remote Workers API.

Both ends of running a step on another machine (issue 13, item 2):

- ``client.RemoteRuntime`` is a ``kata.runtimes.base.Runtime`` for ``kata run
  --remote-executor``: it turns a step's container spec and workspace into an REAPI
  ``Action`` (``action.py``), uploads its input root to the CAS (``files.py``), calls
  ``Execution.Execute`` and lays the result back into the workspace, so the realiser
  records it like a local run.
- ``worker.Worker`` is ``kata worker``: a bot that leases those actions from the
  scheduler (``Bots.CreateBotSession`` / ``UpdateBotSession``) and runs them with
  kata's own containerd runtime.

Layering: this package may import ``kata.runtimes`` (the worker runs steps with it, the
client falls back to it) and ``kata.remote`` (the generated stubs); never the realiser
or the CLI.
"""

# kata.remote sets gRPC's log level (GRPC_VERBOSITY) before grpc is first imported: the
# worker and client modules import grpc themselves, and gRPC reads it once, at load
import importlib as _importlib  # noqa: E402

_importlib.import_module("kata.remote")
