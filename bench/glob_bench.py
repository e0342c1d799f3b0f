"""Path globs: kata's automaton (``kata.globs.PathGlobs``) against pathspec's regexes.

    python3 bench/glob_bench.py [LISTING]

LISTING: a file of repository-relative paths, one a line (``git ls-files > listing``);
by default the first 50,000 files below /usr (real names, sorted). For 1, 3 and 20
gitignore patterns, the time to select from the whole listing with pathspec's
``GitIgnoreSpec`` (what kata matched with before) and with ``PathGlobs`` freshly compiled
(cold: every DFA state built during the run) and again (warm), best of 5, interleaved;
the ratio kata / pathspec is printed (target: <= 1.05 for the ``inputs:`` sizes, 1-3
patterns). Then a pushed pattern ``*a`` x 12 + ``*b`` against a name of n ``a``s: the
regex's time grows ~n^12 (a 30-character name: ~7 s), the automaton's linearly.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import pathspec  # noqa: E402

from kata.globs import PathGlobs  # noqa: E402
from timing import best_time, timed_call  # noqa: E402

PATTERNS = ["src/**", "*.py", "!**/test_*.py",  # the first 1 and 3: what `inputs:` holds
            "lib/**", "share/doc/", "!*.md", "Makefile", "*.[ch]", "share/*/README*",
            "locale/", "!**/LC_MESSAGES/*.mo", "*.so*", "python3*/", "share/man/man1/*.gz",
            "/lib/x86_64-linux-gnu/", "**/*.json", "*.txt", "!share/doc/**/copyright",
            "icons/**/*.png", "**/__pycache__/"]


def listing(argv: list[str], limit: int = 50_000) -> list[str]:
    if argv:
        return Path(argv[0]).read_text().splitlines()
    out: list[str] = []
    for top in ("/usr/share", "/usr/lib"):
        for root, dirs, files in os.walk(top):
            dirs.sort()
            out.extend(os.path.relpath(os.path.join(root, f), "/usr") for f in sorted(files))
            if len(out) >= limit:
                return out[:limit]
    return out


def main() -> None:
    paths = listing(sys.argv[1:])
    print(f"listing: {len(paths)} paths, mean length {sum(map(len, paths)) / len(paths):.0f}; "
          f"load average {os.getloadavg()[0]:.1f}")
    for n in (1, 3, 20):
        patterns = PATTERNS[:n]
        spec = pathspec.GitIgnoreSpec.from_lines(patterns)
        ref: list[float] = []
        cold: list[float] = []
        warm: list[float] = []
        for _ in range(5):  # interleaved: a noisy machine disturbs both alike
            ref.append(best_time(lambda: [p for p in paths if spec.match_file(p)], 1))
            globs = PathGlobs(patterns)
            t, got = timed_call(lambda: globs.select(paths))
            cold.append(t)
            warm.append(best_time(lambda: globs.select(paths), 1))
        assert got == [p for p in paths if spec.match_file(p)]
        print(f"  {n:2} patterns, {len(got):6} selected: pathspec {min(ref) * 1000:6.1f} ms, "
              f"kata cold {min(cold) * 1000:6.1f} ms ({min(cold) / min(ref):.2f}x), "
              f"warm {min(warm) * 1000:6.1f} ms ({min(warm) / min(ref):.2f}x)")
    attack = "*a" * 12 + "*b"
    for size in (20, 22, 30, 4096):
        name = "a" * size
        t, _ = timed_call(lambda: PathGlobs([attack]).select([name]))
        line = f"  {attack!r} against {size} a's: kata {t * 1000:.2f} ms"
        if size <= 22:
            r, _ = timed_call(lambda: pathspec.GitIgnoreSpec.from_lines([attack]).match_file(name))
            line += f", pathspec {r * 1000:.0f} ms"
        print(line)


if __name__ == "__main__":
    main()
