"""Kata as a Remote Execution API (REAPI v2) client.

The generated stubs live in ``_api/`` (gitignored; written by setup.py's build_py or
``python3 -m kata.remote.protogen``). This package may import ``store`` (to turn
Kata trees into REAPI ``Directory`` messages) but no runtime, realiser or CLI.
"""
