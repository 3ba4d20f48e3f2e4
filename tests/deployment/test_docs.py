"""The documentation site builds with warnings as errors, its API pages carry the docstrings, and its generated pages are fresh."""

from __future__ import annotations

import html
import os
import re
import subprocess
import sys
from pathlib import Path

import griffe
import pytest

import convserve
from convserve.v1 import convserve_pb2 as pb

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def site(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The site built once by ``mkdocs build --strict`` (any warning fails the build)."""
    out = tmp_path_factory.mktemp("site")
    result = subprocess.run(
        [sys.executable, "-m", "mkdocs", "build", "--strict", "--config-file", str(ROOT / "mkdocs.yml"), "--site-dir", str(out)],
        cwd=ROOT,
        capture_output=True,
        text=True,
        env={**os.environ, "NO_MKDOCS_2_WARNING": "1"},
    )
    assert result.returncode == 0, f"mkdocs build --strict failed:\n{result.stdout}\n{result.stderr}"
    return out


def _section(page: str, anchor: str) -> str:
    """The HTML of one documented object, from its heading to the next object's heading."""
    start = page.index(f'id="{anchor}"')
    following = re.search(r'<h\d id="convserve\.', page[start + len(anchor) :])
    return page[start : start + len(anchor) + following.start()] if following else page[start:]


def _text(fragment: str) -> str:
    """Visible text of an HTML fragment, whitespace collapsed."""
    return " ".join(html.unescape(re.sub(r"<[^>]+>", " ", fragment)).split())


def test_the_api_page_documents_every_parameter_of_client_convolve(site: Path) -> None:
    """Each parameter of ``Client.convolve``'s docstring appears on the page with its description."""
    page = (site / "api" / "client" / "index.html").read_text()
    section = _section(page, "convserve.Client.convolve")
    docstring = griffe.Docstring(convserve.Client.convolve.__doc__ or "", parser="numpy")
    parameters = next(part for part in docstring.parse() if part.kind.value == "parameters").value
    assert len(parameters) >= 12, [p.name for p in parameters]
    text = _text(section)
    words = " ".join(re.findall(r"\w+", text))
    for parameter in parameters:
        assert f"<code>{parameter.name}</code>" in section, f"{parameter.name} is not in the API page's convolve section"
        plain = re.sub(r":\w+:", "", parameter.description)  # as rendered: no Sphinx roles
        first_words = " ".join(re.findall(r"\w+", plain)[:5])
        assert first_words in words, f"the description of {parameter.name} ({first_words!r}) is not on the page"
    assert "Raises" in text and "OutOfRangeError" in text


def test_every_public_name_of_convserve_has_an_api_entry(site: Path) -> None:
    """Every name in ``convserve.__all__`` (but the version) is documented on some API page."""
    pages = "".join(path.read_text() for path in (site / "api").rglob("index.html"))
    anchors = set(re.findall(r'id="convserve\.(?:errors\.)?(\w+)"', pages))
    missing = [name for name in convserve.__all__ if name != "__version__" and name not in anchors]
    assert not missing, f"public names without an API entry: {missing}"


def test_the_torch_and_scipy_pages_document_their_functions(site: Path) -> None:
    """convserve.torch.forward and scipy's names in convserve.compat.signal / ndimage have entries, and no Sphinx role is left as text."""
    pages = {name: (site / "api" / name / "index.html").read_text() for name in ("torch", "compat", "client", "aio")}
    expected = ["torch.forward"] + [f"compat.signal.{f}" for f in ("convolve", "correlate", "fftconvolve", "oaconvolve", "convolve2d", "correlate2d")]
    expected += ["compat.ndimage.convolve", "compat.ndimage.correlate", "compat.configure"]
    joined = "".join(pages.values())
    missing = [name for name in expected if f'id="convserve.{name}"' not in joined]
    assert not missing, f"no API entry for {missing}"
    assert not re.search(r":(class|func|meth|mod|attr):<code>", joined), "a Sphinx role is rendered as text"
    assert "fillvalue" in _text(pages["compat"]), "convolve2d's scipy argument fillvalue is not documented"


def test_the_proto_page_lists_every_rpc_and_message(site: Path) -> None:
    text = _text((site / "proto" / "index.html").read_text())
    service = pb.DESCRIPTOR.services_by_name["ConvolutionService"]
    missing = [m.name for m in service.methods if m.name not in text] + [name for name in pb.DESCRIPTOR.message_types_by_name if name not in text]
    assert not missing, missing


def test_the_proto_reference_is_fresh(tmp_path: Path) -> None:
    """docs/proto.md is what scripts/proto_reference.py renders from the proto's comments now."""
    fresh = tmp_path / "proto.md"
    subprocess.run([sys.executable, str(ROOT / "scripts" / "proto_reference.py"), str(fresh)], check=True, capture_output=True)
    assert fresh.read_text() == (ROOT / "docs" / "proto.md").read_text(), "docs/proto.md is stale: run scripts/proto_reference.py"


def test_the_changelog_s_newest_entry_is_the_version() -> None:
    """CHANGELOG.md (keep a changelog) names ``convserve.__version__`` in its newest released entry."""
    changelog = (ROOT / "CHANGELOG.md").read_text()
    releases = re.findall(r"^## \[(\d+\.\d+\.\d+[^\]]*)\] - (\d{4}-\d{2}-\d{2})$", changelog, flags=re.MULTILINE)
    assert releases, "CHANGELOG.md has no '## [X.Y.Z] - YYYY-MM-DD' entry"
    assert releases[0][0] == convserve.__version__, f"the newest CHANGELOG entry is {releases[0][0]}, the version is {convserve.__version__}"
    numbers = [tuple(int(part) for part in version.split(".")[:3]) for version, _ in releases]
    assert numbers == sorted(numbers, reverse=True), f"CHANGELOG entries are not newest first: {numbers}"


def test_every_page_of_docs_is_in_the_nav() -> None:
    """No page is built but unreachable: each docs/**/*.md is an entry of mkdocs.yml's nav."""
    config = (ROOT / "mkdocs.yml").read_text()
    nav = set(re.findall(r"^\s+- (?:[^:\n]+: )?([\w/.-]+\.md)$", config, flags=re.MULTILINE))
    pages = {str(path.relative_to(ROOT / "docs")) for path in (ROOT / "docs").rglob("*.md")}
    assert not pages - nav, f"pages missing from the nav of mkdocs.yml: {sorted(pages - nav)}"
    assert not nav - pages, f"nav entries without a page: {sorted(nav - pages)}"


def test_every_rpc_message_field_and_enum_value_of_the_proto_has_a_comment() -> None:
    """The README promises that every field is documented in the proto: no row of the reference has an empty description."""
    reference = (ROOT / "docs" / "proto.md").read_text()
    rows = [line for line in reference.splitlines() if line.startswith("| `")]
    assert len(rows) >= 140, len(rows)
    bare = [line.split("|")[1].strip() for line in rows if not line.rstrip().rstrip("|").split("|")[-1].strip()]
    assert not bare, f"proto elements without a comment: {bare}"
    sections = re.split(r"^### ", reference, flags=re.MULTILINE)[1:]
    undescribed = [section.split("\n", 1)[0] for section in sections if section.split("\n\n", 2)[1].startswith("|")]
    assert not undescribed, f"messages or enums without a comment: {undescribed}"
