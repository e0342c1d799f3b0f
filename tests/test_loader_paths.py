"""Paths stay inside: ``artifacts``, ``cache.paths``, ``inputs``, ``cache.key_files`` are
relative to the repository and never escape it; ``workdir`` is a container path that is
absolute, unnormalised-clean and not a kernel or kata mount. Each refusal names the file,
line, column and key (issue 10, item 4)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from kata.errors import KataError
from kata.loader import load_text, repository_path_problem, workdir_problem

REPO = Path(__file__).resolve().parent.parent

STEP = "steps:\n  - name: a\n    image: x\n"

BAD = {
    # name: (yaml lines under the step, line, column, words in the message)
    "key_files_absolute": ("    cache:\n      paths: [c]\n      key_files: [//etc/shadow]\n",
                           6, 19, "cache.key_files: '//etc/shadow' is absolute"),
    "key_files_dotdot": ("    cache:\n      paths: [c]\n      key_files: [src, ../../x]\n",
                         6, 24, "cache.key_files: '../../x' contains '..'"),
    "key_files_negated": ("    cache:\n      paths: [c]\n      key_files: ['!../x']\n",
                          6, 19, "cache.key_files: '!../x' contains '..'"),
    "key_files_inner": ("    cache:\n      paths: [c]\n      key_files: ['a/**/../../../x']\n",
                        6, 19, "contains '..'"),
    "cache_paths_absolute": ("    cache:\n      paths: [/root/.cache]\n", 5, 15,
                             "cache.paths: '/root/.cache' is absolute"),
    # a team caching npm's ~/.npm as GitHub Actions does: '~' is not expanded, so this was
    # a workspace directory named '~' that npm never writes, an empty cache on every run
    "cache_paths_home": ("    cache:\n      paths: ['~/.npm']\n", 5, 15,
                         "cache.paths: '~/.npm' starts with '~', which is not expanded: "
                         "cache paths are relative to the workspace"),
    "cache_paths_variable": ("    cache:\n      paths: [$HOME/.cache/pip]\n", 5, 15,
                             "cache.paths: '$HOME/.cache/pip' starts with '$', which is "
                             "not expanded"),
    # the same for the other workspace paths: a newcomer's `artifacts: [~/dist]` loaded and
    # then failed every run with a missing artifact
    "artifacts_home": ("    artifacts: ['~/dist/*.whl']\n", 4, 17,
                       "artifacts: '~/dist/*.whl' starts with '~', which is not expanded: "
                       "artifacts are paths relative to the workspace"),
    "artifacts_variable": ("    artifacts: [dist, $HOME/out]\n", 4, 23,
                           "artifacts: '$HOME/out' starts with '$', which is not expanded"),
    "junit_home": ("    reports: {junit: ['~/reports/*.xml']}\n", 4, 23,
                   "reports.junit: '~/reports/*.xml' starts with '~', which is not expanded: "
                   "report paths are relative to the workspace"),
    "cache_paths_dotdot": ("    cache:\n      paths: [node_modules/../../..]\n", 5, 15,
                           "cache.paths: 'node_modules/../../..' contains '..'"),
    "artifacts_absolute": ("    artifacts: [dist, /etc/passwd]\n", 4, 23,
                           "artifacts: '/etc/passwd' is absolute"),
    "artifacts_dotdot": ("    artifacts: [../out]\n", 4, 17, "artifacts: '../out' contains '..'"),
    "inputs_absolute": ("    inputs: [//proc/self/environ]\n", 4, 14,
                        "inputs: '//proc/self/environ' is absolute"),
    "inputs_anchored_dotdot": ("    inputs: [/../x]\n", 4, 14, "inputs: '/../x' contains '..'"),
    "inputs_dotdot": ("    inputs: ['src/**', '../sibling/**']\n", 4, 24,
                      "inputs: '../sibling/**' contains '..'"),
    "workdir_escape": ("    workdir: /workspace/../../proc\n", 4, 14,
                       "workdir must not contain '.' or '..'"),
    "workdir_proc": ("    workdir: /proc/self\n", 4, 14, "workdir must not be /proc or under it"),
    "workdir_sys": ("    workdir: /sys\n", 4, 14, "workdir must not be /sys"),
    "workdir_dev": ("    workdir: //dev/shm\n", 4, 14, "workdir must not be /dev"),
    "workdir_root": ("    workdir: /\n", 4, 14, "workdir must not be '/'"),
    "workdir_secrets": ("    workdir: /run/kata/secrets\n", 4, 14, "must not be /run/kata"),
    "workdir_relative": ("    workdir: src\n", 4, 14, "workdir must be an absolute path"),
    "workdir_double_slash": ("    workdir: /workspace//x\n", 4, 14,
                             "workdir must be a clean path (no '//', no trailing '/'): "
                             "write '/workspace/x', not '/workspace//x'"),
    "workdir_trailing_slash": ("    workdir: '/src/app/'\n", 4, 14,
                               "write '/src/app', not '/src/app/'"),
    "inputs_unclosed_bracket": ("    inputs: [src/**, 'req/[.txt']\n", 4, 22,
                                "bad pattern 'req/[.txt' in step 'a': inputs: "
                                "'[' opens a character class that is never closed"),
    "key_files_unclosed_bracket": ("    cache:\n      paths: [c]\n      key_files: ['req/[.txt']\n",
                                   6, 19, "'[' opens a character class that is never closed"),
    "artifacts_unclosed_bracket": ("    artifacts: ['dist/[.whl']\n", 4, 17,
                                   "'[' opens a character class that is never closed"),
    "only_paths_unclosed_bracket": ("    only: {paths: ['docs/[']}\n", 4, 20,
                                    "'[' opens a character class that is never closed"),
    "changed_unclosed_bracket": ("    when: changed(\"a/[\")\n", 4, 11,
                                 "'[' opens a character class that is never closed"),
    "inputs_comment": ("    inputs: ['#notes']\n", 4, 14,
                       "gitignore reads a pattern starting with '#' as a comment"),
    "inputs_bad_range": ("    inputs: ['[z-a].txt']\n", 4, 14, "bad pattern '[z-a].txt'"),
}


@pytest.mark.parametrize("case", sorted(BAD))
def test_escaping_paths_are_refused_with_position(case: str) -> None:
    body, line, column, words = BAD[case]
    with pytest.raises(KataError) as err:
        load_text(STEP + body, file="k.yaml")
    e = err.value
    assert (e.reason, e.position.file, e.position.line, e.position.column) == \
        ("config.value", "k.yaml", line, column)
    assert words in e.message and "step 'a'" in e.message


def test_paths_inside_are_accepted() -> None:
    p = load_text(STEP + "    workdir: /src/app\n    artifacts: [dist/, ./bin/app, 'a..b']\n"
                  "    inputs: ['src/**', '!src/gen/**', '/go.mod']\n".replace("'/go.mod'", "go.mod")
                  + "    cache:\n      paths: [node_modules/, .cache]\n"
                  "      key_files: [package-lock.json, '**/go.sum', '!vendor/**']\n")
    step = p.steps[0]
    assert step.workdir == "/src/app"
    assert step.artifacts == ("dist/", "./bin/app", "a..b")
    assert step.cache.key_files == ("package-lock.json", "**/go.sum", "!vendor/**")


def test_rules_as_values() -> None:
    assert repository_path_problem("a/b", glob=False) == ""
    assert repository_path_problem("..", glob=False).startswith("contains '..'")
    assert repository_path_problem("a\0b", glob=False) == "contains a NUL byte"
    assert workdir_problem("/workspace") == ""
    assert workdir_problem("/devices") == ""  # only /dev itself and below
    assert workdir_problem("/workspace/./x").startswith("must not contain")


def test_validate_names_file_line_column(tmp_path: Path) -> None:
    cfg = tmp_path / ".kata-ci.yaml"
    cfg.write_text("pipeline: p\n" + STEP + "    commands: ['true']\n    cache:\n"
                   "      paths: [c]\n      key_files: ['/etc/shadow', '../../x']\n"
                   "    artifacts: [/etc/shadow]\n")
    res = subprocess.run([sys.executable, "-m", "kata", "-f", str(cfg), "validate"],
                         capture_output=True, text=True, cwd=tmp_path,
                         env={"PYTHONPATH": str(REPO), "PATH": "/usr/bin:/bin"}, timeout=60)
    assert res.returncode == 2
    # '/etc/shadow' in key_files is a pattern anchored at the repository root; '../../x' leaves
    assert res.stderr.strip() == (f"error: {cfg}:8:34: step 'a': cache.key_files: '../../x' "
                                  "contains '..': paths must stay inside the repository")


def test_config_symlinked_out_of_the_repository_is_not_read(tmp_path: Path) -> None:
    """``.kata-ci.yaml -> /etc/shadow`` pushed to a hook server: nothing of the file
    reaches the message (it used to quote its first line as an unknown key)."""
    from kata.loader import find_config, load_pipeline

    repo = tmp_path / "repo"
    (repo / ".git").mkdir(parents=True)
    (repo / "sub").mkdir()
    (repo / ".kata-ci.yaml").symlink_to("/etc/shadow")
    with pytest.raises(KataError) as err:
        find_config(repo / "sub")
    assert err.value.reason == "config.outside" and err.value.exit_code == 2
    assert err.value.message == (f"{repo}/.kata-ci.yaml is a symlink to a file outside the "
                                 f"repository ({repo}); kata reads nothing outside it")
    (repo / ".kata-ci.yaml").unlink()
    (repo / "ci.yaml").write_text(STEP)
    (repo / ".kata-ci.yaml").symlink_to("ci.yaml")  # inside: fine
    assert load_pipeline(find_config(repo / "sub")).steps[0].name == "a"


def test_config_that_is_not_a_regular_file_is_refused(tmp_path: Path) -> None:
    from kata.loader import load_pipeline

    fifo = tmp_path / "fifo.yaml"
    os.mkfifo(fifo)
    with pytest.raises(KataError) as err:
        load_pipeline(fifo)  # would block forever on a plain open
    assert err.value.reason == "config.not_a_file" and "not a regular file" in err.value.message


def test_kataignore_must_be_a_regular_file(tmp_path: Path) -> None:
    from kata.inputs import Snapshot

    (tmp_path / "a").write_text("x")
    (tmp_path / ".kataignore").symlink_to("/etc/shadow")
    with pytest.raises(KataError) as err:
        Snapshot(tmp_path)
    assert err.value.reason == "inputs.kataignore"
    assert err.value.message == ".kataignore is a symlink; it must be a regular file"


def test_changed_path_filters_may_anchor_at_the_root():
    """``only: paths`` and triggers' ``paths`` read no file (they filter changed paths): a
    leading ``/`` anchors them at the root as in .gitignore, and is kept as written."""
    p = load_text(STEP + "    only: {paths: ['/*.md']}\n"
                  "triggers:\n  - {event: push, paths: ['/docs/**']}\n", file="k.yaml")
    assert p.steps[0].only is not None


def test_inputs_and_key_files_may_anchor_at_the_root():
    """gitignore's one way to name a top-level file whose pattern has no other '/'
    (``/configure``, ``/*.h``: a C project's root, not its contrib/ copies): a leading
    ``/`` anchors, it does not leave the repository. It was refused as "absolute", with a
    hint ("a pattern containing '/' is already anchored") that does not hold for
    ``configure`` or ``*.h``, which match at any depth; found by the zlib trial."""
    p = load_text(STEP + "    inputs: ['/configure', '/*.h', '!/zconf.h']\n"
                  "    cache:\n      paths: [c]\n      key_files: ['/Makefile.in']\n",
                  file="k.yaml")
    assert p.steps[0].inputs == ("/configure", "/*.h", "!/zconf.h")
    assert p.steps[0].cache.key_files == ("/Makefile.in",)
    assert repository_path_problem("/*.h", glob=True, anchor=True) == ""
    assert repository_path_problem("!/x", glob=True, anchor=True) == ""
    for bad in ("//etc/shadow", "/../x", "!//x"):  # not an anchor: refused as before
        assert repository_path_problem(bad, glob=True, anchor=True) != "", bad
    # artifacts and cache.paths are paths in the workspace: a leading '/' stays refused
    assert repository_path_problem("/etc/passwd", glob=True).startswith("is absolute")
    assert repository_path_problem("/etc/passwd", glob=False).startswith("is absolute")


@pytest.mark.parametrize("body,where,words", [
    ("    commands: ['true']\n    cache:\n      paths: [c]\n      key_files: ['req/[.txt']\n",
     "8:19", "bad pattern 'req/[.txt' in step 'a': cache.key_files: '[' opens"),
    ("    commands: ['true']\n    workdir: /workspace//x\n", "6:14",
     "step 'a': workdir must be a clean path"),
])
def test_validate_refuses_malformed_globs_and_unclean_workdir(tmp_path: Path, body: str,
                                                              where: str, words: str) -> None:
    cfg = tmp_path / ".kata-ci.yaml"
    cfg.write_text("pipeline: p\n" + STEP + body)
    res = subprocess.run([sys.executable, "-m", "kata", "-f", str(cfg), "validate"],
                         capture_output=True, text=True, cwd=tmp_path,
                         env={"PYTHONPATH": str(REPO), "PATH": "/usr/bin:/bin"}, timeout=60)
    assert res.returncode == 2, res.stdout + res.stderr
    assert res.stderr.startswith(f"error: {cfg}:{where}: ") and words in res.stderr, res.stderr
    assert "Traceback" not in res.stderr


@pytest.mark.parametrize("kind", ["directory", "fifo", "dangling-link"])
def test_a_config_that_is_there_but_no_file_is_named_as_such(tmp_path: Path, kind: str) -> None:
    """Found by a review: a `.kata-ci.yaml` that is a directory (or a FIFO, or a link to
    nothing) was skipped as if absent ("no .kata-ci.yaml in ... or its parents"), and
    `-f /dev/null` said "not found": the user is told the file is missing while it is in
    front of them. Both name the file and what it is instead."""
    from kata.loader import find_config

    repo = tmp_path / "repo"
    (repo / ".git").mkdir(parents=True)
    config = repo / ".kata-ci.yaml"
    if kind == "directory":
        config.mkdir()
    elif kind == "fifo":
        os.mkfifo(config)
    else:
        config.symlink_to("missing.yaml")
    what = {"directory": "is a directory", "fifo": "is not a regular file",
            "dangling-link": "is a symbolic link to 'missing.yaml', which does not exist"}[kind]
    for explicit in (None, config):
        with pytest.raises(KataError) as info:
            find_config(repo, explicit=explicit)
        assert info.value.reason == "config.not_a_file"
        assert str(config) in info.value.message and what in info.value.message


@pytest.mark.parametrize("workdir", ["/bin", "/usr", "/usr/bin", "/lib", "/lib64", "/usr/lib"])
def test_a_workdir_that_would_hide_the_shell_is_refused(workdir: str) -> None:
    """Found by a review: ``workdir: /bin`` loaded, and the workspace mounted there hid
    the image's /bin/sh: the step failed with "executable file `/bin/sh` not found in
    $PATH", which names neither the workdir nor the fix."""
    problem = workdir_problem(workdir)
    assert problem.startswith(f"must not be {workdir}: the workspace mounted there would hide")
    assert "/src" in problem
    for fine in (workdir + "/src", "/usr/src/app", "/binary"):
        assert workdir_problem(fine) == "", fine


def test_validate_warns_of_an_input_or_key_file_pattern_that_matches_nothing(tmp_path: Path) -> None:
    """Found by a review: ``inputs: ["scr/**"]`` (a typo for src/**) validated and ran
    silently; the step saw none of its sources and stayed a cache hit whatever changed
    in src/. `kata validate` names each inputs and cache.key_files pattern that selects
    no file of the repository (a warning: the file may come later), once per matrix step,
    at the pattern's own line and column (it named the step's, last session's leftover)."""
    import json

    from support.cli import KataProcess

    repo = tmp_path / "repo"
    (repo / "src").mkdir(parents=True)
    (repo / "src" / "a.c").write_text("int x;\n")
    subprocess.run(["git", "init", "-q", str(repo)], check=True)
    (repo / ".kata-ci.yaml").write_text(
        "steps:\n"
        "  - name: build\n"
        "    image: busybox\n"
        "    inputs: [\"scr/**\", \"src/**\", \"!src/gen/**\"]\n"
        "    cache: {paths: [.c], key_files: [\"package-lock.json\"]}\n"
        "    matrix: {X: [a, b]}\n"
        "  - name: none\n"
        "    image: busybox\n"
        "    inputs: []\n")
    kata = KataProcess(repo, store=tmp_path / "store")
    proc = kata("validate", "--offline")
    assert proc.returncode == 0, proc.stderr
    assert proc.stderr.splitlines() == [
        f"warning: {repo / '.kata-ci.yaml'}:4:14: step 'build': inputs pattern 'scr/**' "
        "matches no file of the repository",
        f"warning: {repo / '.kata-ci.yaml'}:5:38: step 'build': cache.key_files pattern "
        "'package-lock.json' matches no file of the repository"]
    doc = json.loads(kata("validate", "--offline", "--json").stdout)
    assert doc["valid"] is True and len(doc["warnings"]) == 2


def test_a_matrix_variable_in_an_inputs_pattern_is_named_as_not_expanded(tmp_path: Path) -> None:
    """Found by the zlib trial: a matrix over parts of a C library with ``inputs:
    ["${PART}/**"]`` (one instance per part, each seeing its sources) validated with only
    "matches no file of the repository", as a typo would; ``${VAR}`` is replaced in
    ``image:`` alone, so the warning says so, and what to write instead."""
    from kata.compile import unmatched_patterns

    (tmp_path / "deflate").mkdir()
    (tmp_path / "deflate" / "a.c").write_text("int a;\n")
    p = load_text("steps:\n  - name: compile\n    image: x\n"
                  "    inputs: ['${PART}/**', 'nothing/**']\n"
                  "    cache: {paths: [c], key_files: ['${PART}.lock']}\n"
                  "    matrix: {PART: [deflate, inflate]}\n", file="k.yaml")
    hint = ("is not expanded in {} (matrix variables are replaced only in image:; the "
            "value is in the step's env): to give each value its own files, write one step "
            "per value (a YAML anchor, `<<: *base`)")
    assert unmatched_patterns(p, tmp_path) == [
        "k.yaml:4:14: step 'compile': inputs pattern '${PART}/**' matches no file of the "
        "repository: ${PART} " + hint.format("inputs"),
        "k.yaml:4:28: step 'compile': inputs pattern 'nothing/**' matches no file of the "
        "repository",
        "k.yaml:5:37: step 'compile': cache.key_files pattern '${PART}.lock' matches no file "
        "of the repository: ${PART} " + hint.format("cache.key_files")]


def test_an_inputs_pattern_naming_the_config_file_says_why_it_matches_nothing(tmp_path: Path) -> None:
    """Found by a review: ``inputs: [.kata-ci.yaml, src/**]`` warned that '.kata-ci.yaml'
    "matches no file of the repository" while the file was right there: the config is
    never an input (docs/config.md, inputs). The warning says so."""
    from support.cli import KataProcess

    repo = tmp_path / "repo"
    (repo / "src").mkdir(parents=True)
    (repo / "src" / "a.c").write_text("int x;\n")
    subprocess.run(["git", "init", "-q", str(repo)], check=True)
    (repo / ".kata-ci.yaml").write_text(
        "steps:\n  - name: build\n    image: busybox\n    inputs: [.kata-ci.yaml, src/**]\n")
    proc = KataProcess(repo, store=tmp_path / "store")("validate", "--offline")
    assert proc.returncode == 0, proc.stderr
    assert proc.stderr.splitlines() == [
        f"warning: {repo / '.kata-ci.yaml'}:4:14: step 'build': inputs pattern '.kata-ci.yaml' "
        "matches only the config file, which is never an input (the key holds its settings "
        "field by field)"]
