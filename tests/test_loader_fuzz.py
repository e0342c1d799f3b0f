"""No input a user can type produces anything but a model or a positioned KataError."""

from __future__ import annotations

import tempfile
from pathlib import Path

import yaml
from hypothesis import given, settings
from hypothesis import strategies as st

from kata.compile import compile_pipeline
from kata.errors import KataError
from kata.loader import STEP_KEYS, TOP_KEYS, load_text
from kata.model import Pipeline

FIXTURES = sorted((Path(__file__).parent / "fixtures").glob("*.yaml"))
TEXTS = [p.read_text() for p in FIXTURES]
KEYS = (*TOP_KEYS, *STEP_KEYS, "paths", "key_files", "branches", "event", "pattern",
        "max_parallel", "fail_fast", "timeout", "<<")


def check(text: str) -> None:
    try:
        p = load_text(text, file="fuzz.yaml")
    except KataError as err:
        assert err.reason.startswith("config."), err.reason
        assert err.position is not None and err.position.file == "fuzz.yaml"
        assert err.position.line >= 1 and err.position.column >= 1
        str(err)
        return
    assert isinstance(p, Pipeline) and p.steps
    g = compile_pipeline(p)  # the shape always compiles once loaded
    assert set(g.order) == {s.name for s in p.steps}


scalars = st.one_of(st.none(), st.booleans(), st.integers(-5, 10**6), st.floats(allow_nan=False),
                    st.text(max_size=15), st.sampled_from(["node:20", "15m", "x", "sha256:ab",
                                                           "branch == \"main\"", "//a", "build"]))
keys = st.one_of(st.sampled_from(KEYS), st.text(max_size=8))
documents = st.recursive(scalars, lambda inner: st.one_of(
    st.lists(inner, max_size=4), st.dictionaries(keys, inner, max_size=5)), max_leaves=25)


@settings(max_examples=300, deadline=None)
@given(doc=st.dictionaries(keys, documents, max_size=6))
def test_random_documents(doc) -> None:
    check(yaml.safe_dump(doc, allow_unicode=True))


@settings(max_examples=200, deadline=None)
@given(text=st.text(max_size=200))
def test_random_text(text) -> None:
    check(text)


@st.composite
def mutated(draw) -> str:
    text = draw(st.sampled_from(TEXTS))
    for _ in range(draw(st.integers(1, 4))):
        kind = draw(st.sampled_from(["delete", "insert", "dup_line", "swap_lines", "replace_word"]))
        lines = text.splitlines(keepends=True)
        if kind == "delete" and text:
            i = draw(st.integers(0, len(text) - 1))
            text = text[:i] + text[i + draw(st.integers(1, 8)):]
        elif kind == "insert":
            i = draw(st.integers(0, len(text)))
            text = text[:i] + draw(st.text(alphabet=" \t\n:-[]{},#&*!|>'\"%@`abc123", max_size=4)) + text[i:]
        elif kind == "dup_line" and lines:
            i = draw(st.integers(0, len(lines) - 1))
            lines.insert(i, lines[i])
            text = "".join(lines)
        elif kind == "swap_lines" and len(lines) > 1:
            i, j = draw(st.integers(0, len(lines) - 1)), draw(st.integers(0, len(lines) - 1))
            lines[i], lines[j] = lines[j], lines[i]
            text = "".join(lines)
        elif kind == "replace_word":
            word = draw(st.sampled_from(["build", "image", "depends_on", "true", "15m", "node:20-alpine",
                                         "commands", "steps", "name", "main"]))
            text = text.replace(word, draw(st.sampled_from(["", "x", "[]", "{}", "null", "1", "-", "*a",
                                                             "&a", "build", "b uild", "!!int"])), 1)
    return text


@settings(max_examples=400, deadline=None)
@given(text=mutated())
def test_mutated_valid_configs(text) -> None:
    check(text)


_EMPTY_REPO = tempfile.mkdtemp(prefix="kata-fuzz-repo-")  # no file: inputs hash to nothing


def check_bytes(data: bytes) -> None:
    """As ``check``, from the file's bytes (what ``kata validate`` reads): a BOM, NUL,
    bytes that are no UTF-8 and line ends of every kind included."""
    from kata.loader import load_bytes

    try:
        p = load_bytes(data, file="fuzz.yaml")
    except KataError as err:
        assert err.reason.startswith("config."), err.reason
        assert err.position is not None and err.position.file == "fuzz.yaml"
        assert err.position.line >= 1 and err.position.column >= 1
        str(err)
        return
    # every image resolved: each derivation is encoded and hashed (where a huge number
    # once overflowed msgpack)
    g = compile_pipeline(p, resolver=lambda ref: "sha256:" + "0" * 64, repo_root=_EMPTY_REPO)
    assert set(g.order) == {s.name for s in p.steps}
    assert all(n.drv_hash for n in g.nodes.values())


PIECES = [b"\xef\xbb\xbf", b"\t", b"\x00", b"\xff", b"\xc3", b"\r", b"\r\n", b"\xc2\x85",
          "\u2028".encode(), b"&a ", b"*a", b"<<: *a\n", b"<<: [*a, *a]\n", b"!!binary ",
          b"!!python/object:os.system ", b"!!set ", b"!!timestamp ", b"? ", b"9" * 400,
          b"1e999", b"-.inf", b".nan", b"0o17", b"0x1F", b"~", b"%YAML 1.1\n---\n", b"--- ",
          b"...\n", b"|-\n", b">\n", b"'", b'"', b"{", b"}", b"[", b"]", b"${", b"$$",
          b"matrix: {A: [1, 2]}\n    ", b"when: 'x'\n    ", b"retry: {max: 2}\n    ",
          b"allow_failure: [1]\n    ", b"services: [{name: s, image: x}]\n    ",
          b"resources: {memory: 1e99}\n    ", b"user: 99999999999999999999\n    ",
          b"context: [CI]\n    ", b"x-a: &a {image: y}\n", "Ünï: ç\n".encode(),
          b"resources: {memory: 99999999999999999999GiB, pids: 99999999999999999999}\n    ",
          b"resources: {memory: " + b"9" * 400 + b"}\n    ", b"timeout: 1:30\n    ",
          b"user: '4294967294:4294967294'\n    "]


@st.composite
def mutated_bytes(draw) -> bytes:
    data = bytearray(draw(st.sampled_from(TEXTS)).encode())
    for _ in range(draw(st.integers(1, 4))):
        at = draw(st.integers(0, len(data)))
        if draw(st.booleans()):
            data[at:at] = draw(st.sampled_from(PIECES))
        else:
            del data[at:at + draw(st.integers(1, 10))]
    return bytes(data)


@settings(max_examples=400, deadline=None)
@given(data=mutated_bytes())
def test_mutated_bytes_never_give_a_traceback(data) -> None:
    check_bytes(data)


@settings(max_examples=200, deadline=None)
@given(anchor=st.sampled_from(["x-m: &a {image: busybox, commands: [\"true\"]}",
                               "x-l: &a [a, b]", "x-s: &a busybox", "x-n: &a"]),
       use=st.sampled_from(["*a", "[*a]", "{<<: *a}", "*b"]),
       where=st.sampled_from(["image", "env", "commands", "depends_on", "matrix", "cache",
                              "services", "when", "retry", "<<"]))
def test_anchors_and_merge_keys_anywhere(anchor, use, where) -> None:
    """An alias of any shape (mapping, list, scalar, null, undefined) in any step key,
    merge keys included."""
    check_bytes(f"{anchor}\nsteps:\n  - name: a\n    image: busybox\n    {where}: {use}\n"
                .encode())


NUMBERS = st.one_of(
    st.integers(-(10 ** 30), 10 ** 30), st.floats(allow_nan=True, allow_infinity=True),
    st.builds(lambda n, u: f"{n}{u}", st.integers(0, 10 ** 30),
              st.sampled_from(["", "B", "KiB", "MiB", "GiB", "TiB", "PiB", "G", "s", "m", "h", "d"])),
    st.builds(lambda d: "9" * d, st.integers(19, 400)), st.sampled_from(["1:30", "0x10", "1_0", "-0"]))
NUMERIC_PLACES = [
    "settings: {{max_parallel: {v}}}\n", "settings: {{timeout: {v}}}\n",
    "settings: {{resources: {{memory: {v}}}}}\n", "settings: {{resources: {{cpus: {v}}}}}\n",
    "settings: {{resources: {{pids: {v}}}}}\n", "S    timeout: {v}\n", "S    retry: {v}\n",
    "S    retry: {{max: {v}}}\n", "S    allow_failure: [{v}]\n", "S    user: '{v}'\n",
    "S    resources: {{memory: '{v}'}}\n",
    "S    services: [{{name: s, image: x, ready: {{tcp: {v}, timeout: {v}}}}}]\n",
    "S    matrix: {{X: [{v}]}}\n",
]


@settings(max_examples=300, deadline=None)
@given(place=st.sampled_from(NUMERIC_PLACES), value=NUMBERS)
def test_any_number_in_any_numeric_key(place, value) -> None:
    """Found by a review: a huge size loaded and then overflowed msgpack when the
    derivation was packed; every number, in every key that takes one, loads and hashes
    or is a positioned error."""
    line = place.format(v=value)
    step = "steps:\n  - name: a\n    image: busybox\n    commands: [make]\n"
    text = step + line[1:] if line.startswith("S") else line + step
    check_bytes(text.encode())
