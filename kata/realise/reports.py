"""Test reports: the JUnit XML files a step writes (``reports: {junit: [...]}``, issue 14).

:func:`collect` reads them from a finished step's working directory and sums them into one
:class:`TestReport` (totals, the failed tests' names and first lines, warnings);
:func:`parse_junit` parses one file with junitparser (a maintained parser; the XML is the
step's, i.e. hostile: Python's expat >= 2.4 refuses entity expansion bombs and resolves
no external entity). The report is stored as a blob with the step's realisation
(``Realisation.report``), so a cache hit shows the totals of the run that built it; the
events ``pass``/``fail`` carry it (docs/json.md).

Reading never follows a symbolic link out of the working directory: a matched path is
resolved and must stay inside it, the file is opened with ``O_NOFOLLOW`` and must be a
regular file of at most :data:`MAX_REPORT_BYTES`. A file that cannot be read or parsed is
a warning in the report, never an error of the step.
"""

from __future__ import annotations

import json
import os
import stat
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

from kata.inputs import read_at_most

#: A report file larger than this is not read (a warning).
MAX_REPORT_BYTES = 64 << 20
#: The XML elements (counted as ``<``, an upper bound) all of a step's report files may
#: hold together. Parsing costs kata (which runs in no step's memory cgroup) ~280 bytes
#: of memory and ~15 us of CPU per element: a 64 MiB file of 2.4 million empty
#: ``<testcase/>`` cost 1.1 GiB and 41 s. A file past what is left of it is not read (a
#: warning); a large real suite (tens of thousands of tests) is far below it.
MAX_REPORT_ELEMENTS = 1_000_000
#: At most this many failed tests are kept by name (the totals count all of them).
MAX_FAILURES = 50
#: A failed test's first line is cut to this many characters.
MAX_LINE = 300
FORMAT = "kata-test-report/1"


@dataclass(frozen=True, slots=True, kw_only=True)
class FailedTest:
    """One failed (or errored) test: ``name`` as ``classname::name`` (``name`` alone
    without a class) and the first line of its message (else of its text)."""

    name: str
    line: str = ""


@dataclass(frozen=True, slots=True, kw_only=True)
class TestReport:
    """The sum of a step's JUnit reports. ``failed`` counts failures and errors; ``passed``
    the rest that was neither skipped nor failed. ``failures`` keeps the first
    :data:`MAX_FAILURES` failed tests; ``files`` the report files read (workdir-relative);
    ``warnings`` what could not be read, in words."""

    __test__ = False  # not a pytest test class, whatever its name

    passed: int = 0
    skipped: int = 0
    failed: int = 0
    failures: tuple[FailedTest, ...] = ()
    files: tuple[str, ...] = ()
    warnings: tuple[str, ...] = ()

    def __post_init__(self) -> None:
        for name in ("passed", "skipped", "failed"):
            value = getattr(self, name)
            if not isinstance(value, int) or isinstance(value, bool) or value < 0:
                raise ValueError(f"{name} must be a count, got {value!r}")

    @property
    def tests(self) -> int:
        return self.passed + self.skipped + self.failed

    def summary(self) -> str:
        """``628 passed, 21 skipped, 1 failed`` (zero counts left out; ``no tests``)."""
        parts = [f"{n} {what}" for n, what in ((self.passed, "passed"),
                                               (self.skipped, "skipped"),
                                               (self.failed, "failed")) if n]
        return ", ".join(parts) or "no tests"

    def to_json(self) -> dict[str, object]:
        """The ``report`` object of ``--json`` and of the stored blob (docs/json.md)."""
        return {"passed": self.passed, "skipped": self.skipped, "failed": self.failed,
                "failures": [{"name": f.name, "line": f.line} for f in self.failures],
                "files": list(self.files), "warnings": list(self.warnings)}

    def encode(self) -> bytes:
        """Canonical JSON (sorted keys) with ``format``: what is stored as a blob."""
        return json.dumps({"format": FORMAT, **self.to_json()}, sort_keys=True,
                          separators=(",", ":")).encode()

    @classmethod
    def decode(cls, raw: bytes) -> "TestReport":
        """ValueError for bytes that are not a stored report."""
        try:
            data = json.loads(raw)
            if not isinstance(data, dict) or data.get("format") != FORMAT:
                raise ValueError("not a kata test report")
            return cls(passed=data["passed"], skipped=data["skipped"], failed=data["failed"],
                       failures=tuple(FailedTest(name=str(f["name"]), line=str(f["line"]))
                                      for f in data["failures"]),
                       files=tuple(map(str, data["files"])),
                       warnings=tuple(map(str, data["warnings"])))
        except (KeyError, TypeError, UnicodeDecodeError) as err:
            raise ValueError(f"not a kata test report ({err})") from None


def _first_line(*texts: str | None) -> str:
    for text in texts:
        for line in (text or "").splitlines():
            if line.strip():
                line = line.strip()
                return line if len(line) <= MAX_LINE else line[:MAX_LINE - 1] + "…"
    return ""


#: testcase attributes saying that a test never ran where no ``<skipped>`` element does:
#: ctest's ``--output-junit`` writes ``status="disabled"`` (and ``"notrun"``), googletest's
#: ``--gtest_output=xml`` ``status="notrun" result="suppressed"`` for a DISABLED_ test
NOT_RUN = (("status", frozenset({"disabled", "notrun"})),
           ("result", frozenset({"skipped", "suppressed"})))


def _did_not_run(case: object) -> bool:
    attrib = case._elem.attrib  # type: ignore[attr-defined]  # junitparser keeps other attributes only there
    return any(attrib.get(key) in values for key, values in NOT_RUN)


def parse_junit(data: bytes, name: str) -> TestReport:
    """One JUnit XML document (root ``testsuites`` or ``testsuite``) as a report; a
    document that is no JUnit XML is a report with one warning naming ``name``. A test
    with a ``<failure>`` or ``<error>`` failed; one with ``<skipped>``, or whose
    attributes say it did not run (:data:`NOT_RUN`), is skipped; any other passed."""
    import xml.etree.ElementTree as etree

    from junitparser import Error, Failure, JUnitXml, JUnitXmlError, Skipped

    try:
        xml = JUnitXml.fromstring(data)
        passed = skipped = failed = 0
        failures: list[FailedTest] = []
        for suite in xml:
            for case in suite:
                results = list(case.result)
                bad = [r for r in results if isinstance(r, (Failure, Error))]
                if bad:
                    failed += 1
                    test = f"{case.classname}::{case.name}" if case.classname else str(case.name)
                    failures.append(FailedTest(name=test,
                                               line=_first_line(bad[0].message, bad[0].text)))
                elif any(isinstance(r, Skipped) for r in results) or _did_not_run(case):
                    skipped += 1
                else:
                    passed += 1
    except (etree.ParseError, JUnitXmlError, ValueError, TypeError, AttributeError) as err:
        return TestReport(files=(name,), warnings=(f"{name}: not JUnit XML ({err})",))
    return TestReport(passed=passed, skipped=skipped, failed=failed,
                      failures=tuple(failures[:MAX_FAILURES]), files=(name,))


def combine(reports: Sequence[TestReport]) -> TestReport:
    """The sum of several reports (totals added, lists joined in order)."""
    return TestReport(passed=sum(r.passed for r in reports),
                      skipped=sum(r.skipped for r in reports),
                      failed=sum(r.failed for r in reports),
                      failures=tuple(f for r in reports for f in r.failures)[:MAX_FAILURES],
                      files=tuple(f for r in reports for f in r.files),
                      warnings=tuple(w for r in reports for w in r.warnings))


def read_inside(workdir: Path, rel: str) -> bytes:
    """The bytes of ``workdir/rel``, a regular file that resolves inside ``workdir``
    (symbolic links inside it are followed; one leading out is refused). OSError or
    ValueError (with the reason in words) otherwise."""
    root = os.path.realpath(workdir)
    real = os.path.realpath(os.path.join(root, rel))
    if os.path.commonpath([root, real]) != root:
        raise ValueError("a symbolic link leads out of the workspace")
    fd = os.open(real, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC)
    try:
        if not stat.S_ISREG(os.fstat(fd).st_mode):
            raise ValueError("not a regular file")
        data = read_at_most(fd, MAX_REPORT_BYTES)
    finally:
        os.close(fd)
    if len(data) > MAX_REPORT_BYTES:
        raise ValueError(f"larger than {MAX_REPORT_BYTES >> 20} MiB")
    return data


def _xml_below(workdir: Path, rel: str) -> list[str]:
    """The ``.xml`` files below the directory ``rel`` (workdir-relative, sorted by
    directory then name, no link followed). Iterative: a step can nest its directories
    deeper than Python recurses (``os.walk`` recurses on Python 3.11)."""
    found: list[str] = []
    todo = [rel]
    while todo:
        top = todo.pop()
        with os.scandir(workdir / top) as it:
            entries = sorted(it, key=lambda e: e.name)
        found += [f"{top}/{e.name}" for e in entries
                  if e.name.endswith(".xml") and not e.is_dir(follow_symlinks=False)]
        todo += reversed([f"{top}/{e.name}" for e in entries if e.is_dir(follow_symlinks=False)])
    return found


def collect(workdir: Path, patterns: Sequence[str]) -> TestReport:
    """Every file ``patterns`` (``reports.junit``; literal paths or path globs, as
    ``artifacts:``) select in a finished step's ``workdir``, parsed and summed. A pattern
    matching nothing, an unreadable file and malformed XML are warnings."""
    from kata.realise.artifacts import select

    chosen, missing = select(workdir, patterns)
    paths: list[str] = []
    for rel in chosen:  # a directory: the .xml files below it (no link followed)
        if stat.S_ISDIR(os.lstat(workdir / rel).st_mode):
            paths += _xml_below(workdir, rel)
        else:
            paths.append(rel)
    reports = [TestReport(warnings=tuple(f"no report file matches {m}" for m in missing))]
    budget = MAX_REPORT_ELEMENTS
    for i, rel in enumerate(paths):
        if budget <= 0:
            reports.append(TestReport(warnings=(
                f"{len(paths) - i} more files not read (the step's reports hold more than "
                f"{MAX_REPORT_ELEMENTS:,} XML elements)",)))
            break
        try:
            data = read_inside(workdir, rel)
        except (OSError, ValueError) as err:
            why = err.strerror if isinstance(err, OSError) and err.strerror else str(err)
            reports.append(TestReport(warnings=(f"{rel}: not read ({why})",)))
            continue
        elements = max(1, data.count(b"<"))
        if elements > budget:
            reports.append(TestReport(warnings=(
                f"{rel}: not read ({elements:,} XML elements, more than the "
                f"{budget:,} left of the {MAX_REPORT_ELEMENTS:,} a step's reports may hold)",)))
            budget = 0
            continue
        budget -= elements
        reports.append(parse_junit(data, rel))
    return combine(reports)


def from_json(data: Mapping[str, object]) -> TestReport:
    """A report from its ``to_json`` form (``kata logs``/tests reading --json back)."""
    return TestReport.decode(json.dumps({"format": FORMAT, **data}).encode())
