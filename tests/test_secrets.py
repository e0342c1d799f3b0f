"""Secret sources and the streaming masker (kata/secrets.py)."""

from __future__ import annotations

import base64
import os
import re
from urllib.parse import quote, quote_plus

import pytest
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st

from kata.errors import KataError
from kata.secrets import MARKER, Masker, SecretSource, maskable, secret_forms, unmaskable

# ----------------------------------------------------------------------------- sources


def test_resolve_takes_flags_over_files_over_environment(tmp_path):
    f = tmp_path / "tok"
    f.write_text("from-the-file\n")
    src = SecretSource.from_args(
        ["A=from-the-flag"],
        [f"B={f}"],
        environ={"A": "env-a-value", "B": "env-b-value", "C": "env-c-value", "PATH": "/bin"},
    )
    assert src.resolve(["A", "B", "C"]) == {
        "A": "from-the-flag",
        "B": "from-the-file",  # one trailing newline is not part of the value
        "C": "env-c-value",
    }
    # only what is declared is resolved
    assert src.resolve(["C"]) == {"C": "env-c-value"}
    assert src.resolve([]) == {}


def test_flag_value_may_contain_equals_signs():
    src = SecretSource.from_args(["TOKEN=a=b=c=d"], environ={})
    assert src.resolve(["TOKEN"]) == {"TOKEN": "a=b=c=d"}


def test_secret_file_keeps_inner_newlines_and_strips_only_one(tmp_path):
    f = tmp_path / "key.pem"
    f.write_bytes(b"-----BEGIN-----\r\nabcd\r\n-----END-----\n\n")
    src = SecretSource.from_args(secret_files=[f"KEY={f}"], environ={})
    assert src.resolve(["KEY"]) == {"KEY": "-----BEGIN-----\r\nabcd\r\n-----END-----\n"}


def test_environment_defaults_to_os_environ(monkeypatch):
    monkeypatch.setenv("KATA_TEST_SECRET_XYZ", "s3cr3t-value")
    assert SecretSource.from_args().resolve(["KATA_TEST_SECRET_XYZ"]) == {"KATA_TEST_SECRET_XYZ": "s3cr3t-value"}


def test_missing_declared_secret_is_an_error_naming_it():
    src = SecretSource.from_args(["A=present-value"], environ={"B": "present-too"})
    with pytest.raises(KataError) as e:
        src.resolve(["A", "DEPLOY_TOKEN", "B"])
    assert e.value.reason == "secret.missing"
    assert e.value.obj == "DEPLOY_TOKEN"


@pytest.mark.parametrize("value", ["", "a", "abc", "ééé"])
def test_short_values_are_given_but_not_masked(value, tmp_path):
    """`DEPLOY_TOKEN=xxx kata run` runs: the value resolves, is named for a warning, and is
    kept out of the Masker (which still refuses it: it would hide ordinary output)."""
    f = tmp_path / "t"
    f.write_text(value + "\n")
    for src in (
        SecretSource.from_args([f"T={value}"], environ={}),
        SecretSource.from_args(environ={"T": value}),
        SecretSource.from_args(secret_files=[f"T={f}"], environ={}),
    ):
        resolved = src.resolve(["T"])
        assert resolved == {"T": value}
        assert unmaskable(resolved) == ["T"] and maskable(resolved.values()) == []
    assert unmaskable({"T": "abcd", "U": "xxx"}) == ["U"]
    with pytest.raises(KataError) as e:
        Masker([value])
    assert e.value.reason == "secret.too_short"


def test_environment_value_that_is_not_utf8_is_masked_as_its_bytes():
    value = b"tok\xff\xfeen".decode("utf-8", "surrogateescape")  # how os.environ holds such bytes
    src = SecretSource.from_args(environ={"T": value})
    masker = Masker(src.resolve(["T"]).values())
    assert masker.mask(b"[tok\xff\xfeen]") == b"[***]"


def test_four_characters_are_enough():
    assert SecretSource.from_args(["T=abcd"], environ={}).resolve(["T"]) == {"T": "abcd"}


@pytest.mark.parametrize(
    ("secrets", "files", "reason"),
    [
        (["NOEQUALS"], [], "secret.bad_argument"),
        (["1BAD=value"], [], "secret.bad_name"),
        (["BAD-NAME=value"], [], "secret.bad_name"),
        (["A=value1", "A=value2"], [], "secret.duplicate"),
        (["A=value1"], ["A=/etc/hostname"], "secret.duplicate"),
        ([], ["A="], "secret.bad_argument"),
        ([], ["NOPATH"], "secret.bad_argument"),
    ],
)
def test_bad_arguments(secrets, files, reason):
    with pytest.raises(KataError) as e:
        SecretSource.from_args(secrets, files, environ={})
    assert e.value.reason == reason


def test_unreadable_secret_file(tmp_path):
    missing = tmp_path / "nope"
    with pytest.raises(KataError) as e:
        SecretSource.from_args(secret_files=[f"A={missing}"], environ={}).resolve(["A"])
    assert e.value.reason == "secret.unreadable"
    binary = tmp_path / "bin"
    binary.write_bytes(b"\xff\xfe\x00abc")
    with pytest.raises(KataError) as e:
        SecretSource.from_args(secret_files=[f"A={binary}"], environ={}).resolve(["A"])
    assert e.value.reason == "secret.unreadable"


def test_a_missing_secret_file_is_refused_even_if_no_step_reads_it(tmp_path):
    with pytest.raises(KataError) as e:
        SecretSource.from_args(secret_files=[f"A={tmp_path / 'nope'}"], environ={})
    assert e.value.reason == "secret.unreadable" and "nope" in e.value.message


def test_values_never_appear_in_repr():
    src = SecretSource.from_args(["A=very-secret-value"], environ={"B": "other-secret-value"})
    assert "very-secret-value" not in repr(src)
    assert "other-secret-value" not in repr(src)


# ----------------------------------------------------------------------------- forms


SECRET = "hunter2-Pa55/w+rd?&"


def _lower_escapes(text: str) -> str:
    return re.sub(r"%[0-9A-F]{2}", lambda m: m.group().lower(), text)


def test_forms_cover_raw_hex_url_and_base64():
    forms = secret_forms(SECRET)
    raw = SECRET.encode()
    assert raw in forms
    assert raw.hex().encode() in forms and raw.hex().upper().encode() in forms
    assert quote(raw, safe="").encode() in forms
    assert quote_plus(raw, safe="").encode() in forms
    assert _lower_escapes(quote(raw, safe="")).encode() in forms
    assert base64.b64encode(raw) in forms
    assert all(len(f) >= 4 for f in forms)


def _feed_chunked(masker: Masker, data: bytes, cuts: list[int]) -> bytes:
    stream = masker.stream()
    out = []
    prev = 0
    for cut in sorted(set(c for c in cuts if 0 < c < len(data))) + [len(data)]:
        out.append(stream.feed(data[prev:cut]))
        prev = cut
    out.append(stream.close())
    return b"".join(out)


def _bytewise(masker: Masker, data: bytes) -> bytes:
    stream = masker.stream()
    out = [stream.feed(data[i : i + 1]) for i in range(len(data))]
    out.append(stream.close())
    return b"".join(out)


def _assert_no_form(output: bytes, values) -> None:
    for value in values:
        for form in secret_forms(value):
            assert form not in output, (value, form)


@pytest.mark.parametrize("offset", [0, 1, 2])
def test_base64_at_every_alignment_inside_longer_base64(offset):
    raw = SECRET.encode()
    masker = Masker([SECRET])
    # the characters that encode the value's bits alone, at this alignment
    start, end = -(-8 * offset // 6), (8 * offset + 8 * len(raw)) // 6
    fixed = base64.b64encode(b"\0" * offset + raw)[start:end]
    for tail in (b"", b"X", b"YZ", b"tail bytes after"):
        blob = os.urandom(offset) + raw + tail
        for encode in (base64.b64encode, base64.urlsafe_b64encode):
            encoded = encode(blob)
            out = _bytewise(masker, b"data: " + encoded + b"\n")
            assert MARKER in out
            _assert_no_form(out, [SECRET])
            value_part = fixed if encode is base64.b64encode else fixed.translate(bytes.maketrans(b"+/", b"-_"))
            # not even a 5-character piece of it survives
            for i in range(len(value_part) - 4):
                assert value_part[i : i + 5] not in out


def test_wrapped_base64_of_a_long_value_is_masked_line_by_line():
    value = os.urandom(300).hex()
    masker = Masker([value])
    encoded = base64.b64encode(value.encode())
    for width in (64, 76):
        wrapped = b"\n".join(encoded[i : i + width] for i in range(0, len(encoded), width)) + b"\n"
        out = masker.mask(wrapped)
        assert out == b"\n".join([MARKER] * len(range(0, len(encoded), width))) + b"\n"


def test_hex_and_url_forms():
    masker = Masker([SECRET])
    raw = SECRET.encode()
    for form in (
        raw.hex().encode(),
        raw.hex().upper().encode(),
        quote(raw, safe="").encode(),
        _lower_escapes(quote(raw, safe="")).encode(),
        quote_plus(raw).encode(),
        quote(raw).encode(),
    ):
        assert masker.mask(b"<" + form + b">") == b"<***>"


def test_multi_line_value_line_by_line_and_across_crlf():
    value = "first-line-secret\nab\nthird line secret\n"
    masker = Masker([value])
    # whole value, LF and CRLF
    assert masker.mask(b"[" + value.encode() + b"]") == b"[***]"
    assert masker.mask(b"[" + value.replace("\n", "\r\n").encode() + b"]") == b"[***]"
    # each line printed on its own (a short line such as "ab" is not masked on its own)
    out = masker.mask(b"x third line secret y\nab\nfirst-line-secret\r\n")
    assert out == b"x *** y\nab\n***\r\n"


def test_crlf_value_printed_with_lf():
    value = "alpha-line\r\nbeta-line"
    masker = Masker([value])
    assert masker.mask(b"alpha-line\nbeta-line") == b"***"
    assert masker.mask(b"alpha-line\r\nbeta-line") == b"***"


def test_overlapping_and_adjacent_occurrences_become_one_marker():
    masker = Masker(["abcdef", "defghi"])
    assert masker.mask(b"<abcdefghi>") == b"<***>"
    assert masker.mask(b"<abcdefabcdef>") == b"<***>"
    assert masker.mask(b"<abcdef abcdef>") == b"<*** ***>"


def test_no_secrets_is_a_passthrough():
    masker = Masker([])
    s = masker.stream()
    assert s.feed(b"abc") == b"abc" and s.held == 0 and s.close() == b""


def test_holds_back_only_a_possible_prefix():
    masker = Masker(["s3cr3t-token"])
    s = masker.stream()
    assert s.feed(b"hello world\n") == b"hello world\n"
    assert s.held == 0
    assert s.feed(b"value: s3cr") == b"value: "
    assert s.held == len(b"s3cr")
    assert s.feed(b"3") == b""
    assert s.held == len(b"s3cr3")
    # the prefix did not continue: released at once
    assert s.feed(b"x!") == b"s3cr3x!"
    assert s.held == 0
    assert s.feed(b"s") == b""
    assert s.held == 1
    assert s.close() == b"s"


def test_close_flushes_and_stream_is_reusable():
    masker = Masker(["s3cr3t-token"])
    s = masker.stream()
    assert s.feed(b"s3cr3t-tok") == b""
    assert s.close() == b"s3cr3t-tok"
    assert s.feed(b"s3cr3t-token") == b"***"
    assert s.close() == b""


def test_streams_are_independent():
    masker = Masker(["s3cr3t-token"])
    out, err = masker.stream(), masker.stream()
    a = out.feed(b"s3cr3t")
    b = err.feed(b"-token")
    assert (a, b) == (b"", b"-token")
    assert out.feed(b"-token") == b"***"


def test_big_multi_line_secret_in_one_byte_writes():
    # the scenario in miniature: a 64 KiB multi-line secret and nine others,
    # printed raw and encoded, one byte per write
    big = "\n".join(os.urandom(24).hex() for _ in range(64 * 1024 // 49)) + "\n"
    assert len(big) >= 60 * 1024
    others = [os.urandom(8).hex() for _ in range(9)]
    masker = Masker([big, *others])
    parts = []
    for v in [big, *others]:
        raw = v.encode()
        parts += [raw, base64.b64encode(raw), raw.hex().encode(), quote(raw, safe="").encode()]
    data = b"\n--\n".join(parts)
    out = _bytewise(masker, data)
    assert out == masker.mask(data)
    _assert_no_form(out, [big, *others])
    for line in big.splitlines():
        assert line.encode() not in out


# ----------------------------------------------------------------------------- properties

_alphabet = st.characters(codec="utf-8", exclude_characters="*", exclude_categories=("Cs",))
_secret = st.text(_alphabet, min_size=4, max_size=24)
_filler = st.binary(max_size=40)


def _encode(value: str, how: int, pad: bytes) -> bytes:
    raw = value.encode()
    if how == 0:
        return raw
    if how == 1:
        return base64.b64encode(pad + raw + pad)
    if how == 2:
        return base64.urlsafe_b64encode(pad + raw)
    if how == 3:
        return raw.hex().encode()
    if how == 4:
        return raw.hex().upper().encode()
    if how == 5:
        return quote(raw, safe="").encode()
    if how == 6:
        return quote_plus(raw).encode()
    return raw.replace(b"\n", b"\r\n")


@st.composite
def _output(draw):
    secrets = draw(st.lists(_secret, min_size=1, max_size=4, unique=True))
    pieces = []
    for _ in range(draw(st.integers(1, 6))):
        pieces.append(draw(_filler))
        value = draw(st.sampled_from(secrets))
        pieces.append(_encode(value, draw(st.integers(0, 7)), draw(st.binary(max_size=2))))
    pieces.append(draw(_filler))
    data = b"".join(pieces)
    cuts = draw(st.lists(st.integers(0, max(len(data), 1)), max_size=12))
    return secrets, data, cuts


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(_output())
def test_no_form_of_any_secret_survives_any_chunking(case):
    secrets, data, cuts = case
    masker = Masker(secrets)
    whole = masker.mask(data)
    _assert_no_form(whole, secrets)
    # the chunking does not change the result, 1-byte writes included
    assert _feed_chunked(masker, data, cuts) == whole
    assert _bytewise(masker, data) == whole


@settings(max_examples=200, deadline=None)
@given(st.lists(_secret, min_size=1, max_size=4), st.binary(max_size=300), st.lists(st.integers(0, 300), max_size=10))
def test_text_without_secrets_passes_through_unchanged(secrets, data, cuts):
    masker = Masker(secrets)
    assume(not any(form in data for form in masker.forms))
    assert _feed_chunked(masker, data, cuts) == data
    assert _bytewise(masker, data) == data


@settings(max_examples=150, deadline=None)
@given(_secret, st.binary(max_size=30), st.integers(0, 2), st.binary(max_size=30))
def test_base64_inside_random_base64_any_alignment(secret, before, align, after):
    raw = secret.encode()
    blob = before[: len(before) - len(before) % 3] + os.urandom(align) + raw + after
    masker = Masker([secret])
    encoded = base64.b64encode(blob)
    out = _bytewise(masker, encoded)
    _assert_no_form(out, [secret])
    assert MARKER in out


def _longest_open_suffix(data: bytes, forms) -> int:
    """Length of the longest suffix of data that is a proper prefix of some form."""
    best = 0
    for form in forms:
        for k in range(min(len(form) - 1, len(data)), best, -1):
            if data.endswith(form[:k]):
                best = k
                break
    return best


@settings(max_examples=150, deadline=None)
@given(_output())
def test_holds_back_exactly_the_longest_possible_prefix(case):
    secrets, data, cuts = case
    masker = Masker(secrets)
    stream = masker.stream()
    prev = 0
    for cut in sorted(set(c for c in cuts if 0 < c < len(data))) + [len(data)]:
        stream.feed(data[prev:cut])
        prev = cut
        assert stream.held == _longest_open_suffix(data[:cut], masker.forms)


def test_repetitive_secret_in_repetitive_output():
    # every position is a candidate: still masked, still chunking-independent
    masker = Masker(["aaaaaaab", "abababab"])
    data = b"a" * 5000 + b"b" + b"ab" * 3000 + b"a" * 7
    whole = masker.mask(data)
    assert whole == b"a" * (5000 - 7) + b"***" + b"a" * 7
    assert _bytewise(masker, data) == whole


@settings(max_examples=300, deadline=None)
@given(
    st.lists(st.text("ab\n", min_size=4, max_size=10), min_size=1, max_size=3),
    st.binary(max_size=0) | st.text("ab\n\r*", max_size=120).map(str.encode),
    st.lists(st.integers(0, 120), max_size=15),
)
def test_self_similar_secrets_in_self_similar_output(secrets, data, cuts):
    # overlapping, periodic forms: the hardest case for candidates and merging
    assume(all(len(s.strip()) >= 1 for s in secrets))
    masker = Masker(secrets)
    whole = masker.mask(data)
    _assert_no_form(whole, secrets)
    assert _feed_chunked(masker, data, cuts) == whole
    assert _bytewise(masker, data) == whole


def test_secret_file_dev_zero_is_refused_without_reading():
    with pytest.raises(KataError) as err:
        SecretSource.from_args(secret_files=["A=/dev/zero"], environ={}).resolve(["A"])
    assert err.value.reason == "secret.unreadable"
    assert err.value.message == ("--secret-file A: /dev/zero is a device; give a regular file "
                                 "(or a pipe) holding the value")


def test_secret_file_directory_is_refused(tmp_path):
    with pytest.raises(KataError) as err:
        SecretSource.from_args(secret_files=[f"A={tmp_path}"], environ={}).resolve(["A"])
    assert err.value.reason == "secret.unreadable" and "is a directory" in err.value.message


def test_secret_file_is_bounded(tmp_path):
    from kata.secrets import MAX_SECRET_FILE

    assert MAX_SECRET_FILE == 64 * 1024
    ok = tmp_path / "ok"
    ok.write_text("k" * MAX_SECRET_FILE + "\n")
    got = SecretSource.from_args(secret_files=[f"A={ok}"], environ={}).resolve(["A"])
    assert got == {"A": "k" * MAX_SECRET_FILE}
    big = tmp_path / "big"
    big.write_bytes(b"k" * (MAX_SECRET_FILE + 1))
    with pytest.raises(KataError) as err:
        SecretSource.from_args(secret_files=[f"A={big}"], environ={}).resolve(["A"])
    assert err.value.reason == "secret.too_large"
    assert err.value.message == f"--secret-file A: {big} holds more than 64 KiB; secrets are limited to that size"


def test_secret_file_from_a_pipe(tmp_path):
    r, w = os.pipe()
    os.write(w, b"from-a-pipe\n")
    os.close(w)
    try:
        got = SecretSource.from_args(secret_files=[f"A=/dev/fd/{r}"], environ={}).resolve(["A"])
    finally:
        os.close(r)
    assert got == {"A": "from-a-pipe"}


def test_a_missing_secret_names_its_step_and_a_typo_given_instead():
    """A newcomer's `kata run --event tag --tag v1 --secret PYPI_TOKN=...` said only
    "missing secret(s): PYPI_TOKEN": not which step wants it, nor that the name typed was
    one letter off (a name no step declares is otherwise accepted silently)."""
    src = SecretSource.from_args(["PYPI_TOKN=abcdefgh"], environ={})
    with pytest.raises(KataError) as e:
        src.resolve(["PYPI_TOKEN"], {"PYPI_TOKEN": "release"})
    assert e.value.reason == "secret.missing"
    assert "missing secret(s): PYPI_TOKEN (step release)" in str(e.value)
    assert str(e.value).endswith("; PYPI_TOKN was given, which no step of this run declares: "
                                 "did you mean PYPI_TOKEN?")
    with pytest.raises(KataError) as plain:  # nothing close given: no guess
        SecretSource.from_args(["OTHER=abcdefgh"], environ={}).resolve(["PYPI_TOKEN"])
    assert "did you mean" not in str(plain.value)
