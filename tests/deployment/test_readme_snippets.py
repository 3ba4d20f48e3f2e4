"""Every ```python block of the README and of the docs pages (but the one listed) runs as written against a real server.

Each block runs alone in a fresh interpreter, in a scratch directory, with the target it names
(``127.0.0.1:50051``, or the replicas of the examples) replaced by a test server's address on
loopback, which is also its ``CONVSERVE_TARGET`` (for ``convserve.compat``). A block in docs/
preceded by ``<!-- snippet: not run -->`` is only compiled (it needs TLS files or a remote host); the
README has no such blocks.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.conftest import RunningServer, start_server, stop_server

ROOT = Path(__file__).resolve().parents[2]
UNTESTED_PAGES: set[str] = set()  # every page's snippets run
PAGES = ["README.md"] + [p for p in sorted(str(path.relative_to(ROOT)) for path in (ROOT / "docs").rglob("*.md")) if p not in UNTESTED_PAGES]
# The targets the pages name, and what each becomes: the test server, once per replica named.
TARGETS = {
    "ipv4:10.0.0.1:50051,10.0.0.2:50051": 2,
    "ipv4:127.0.0.1:50051,127.0.0.1:50052,127.0.0.1:50053": 3,
    "dns:///convserve.default.svc.cluster.local:50051": 1,
    "127.0.0.1:50051": 1,
}
NOT_RUN = "<!-- snippet: not run -->"


def snippets(page: str) -> list[tuple[str, int, str, bool]]:
    """``(page, line, code, marked not-run)`` of every python block of a page."""
    text = (ROOT / page).read_text()
    found = []
    for match in re.finditer(r"^```python\n(.*?)^```$", text, flags=re.MULTILINE | re.DOTALL):
        line = text.count("\n", 0, match.start()) + 1
        previous = text[: match.start()].rstrip("\n").rsplit("\n", 1)[-1]
        found.append((page, line, match.group(1), previous.strip() == NOT_RUN))
    return found


FOUND = [snippet for page in PAGES if (ROOT / page).exists() for snippet in snippets(page)]
ALL = [snippet for snippet in FOUND if not snippet[3]]
MARKED = [snippet for snippet in FOUND if snippet[3]]


@pytest.fixture(scope="module")
def snippet_server() -> Iterator[RunningServer]:
    running = start_server("--log-level", "WARNING")
    yield running
    assert stop_server(running) == 0


def test_the_readme_has_snippets_and_none_is_skipped() -> None:
    readme = snippets("README.md")
    assert len(readme) >= 4, f"expected the README's examples, found {len(readme)} python blocks"
    assert not [line for _, line, _, skipped in readme if skipped], "every README snippet must run as written"


def test_the_blocks_marked_not_run_are_few_and_compile() -> None:
    """Only the TLS block of the operations page is exempt from running; it must still be valid Python."""
    assert [(page, line) for page, line, _, _ in MARKED if page != "docs/operations.md"] == []
    assert len(MARKED) <= 1
    for page, line, code, _ in MARKED:
        compile(code, f"{page}:{line}", "exec")


@pytest.mark.parametrize(("page", "line", "code", "skipped"), ALL, ids=[f"{page}:{line}" for page, line, _, _ in ALL])
def test_snippet_runs_as_written(page: str, line: int, code: str, skipped: bool, snippet_server: RunningServer, tmp_path: Path) -> None:
    for target, replicas in TARGETS.items():
        replaced = snippet_server.target if replicas == 1 else "ipv4:" + ",".join([snippet_server.target] * replicas)
        code = code.replace(f'"{target}"', f'"{replaced}"')
    script = tmp_path / "snippet.py"
    script.write_text(code)
    assert snippet_server.target in code or "Client(" not in code, f"{page}:{line} names no target the test can replace"
    env = {**os.environ, "CONVSERVE_TARGET": snippet_server.target}  # what convserve.compat and convserve.dask use unless told
    result = subprocess.run([sys.executable, str(script)], cwd=tmp_path, capture_output=True, text=True, timeout=300, env=env)
    assert result.returncode == 0, f"{page}:{line} failed:\n{code}\n--- stderr ---\n{result.stderr[-3000:]}"
