"""Kata as a Remote Execution API (REAPI v2) client.

The generated stubs live in ``_api/`` (gitignored; written by setup.py's build_py or
``python3 -m kata.remote.protogen``). This package may import ``store`` (to turn
Kata trees into REAPI ``Directory`` messages) but no runtime, realiser or CLI.
"""

import os as _os

# gRPC core logs at INFO on its own (e.g. "Got goaway" when a remote goes away); a remote that
# fails must cost the user ONE warning line (kata.remote.cache), so only errors get through,
# unless the user asks for more with GRPC_VERBOSITY.
_os.environ.setdefault("GRPC_VERBOSITY", "ERROR")
