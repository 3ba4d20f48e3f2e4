"""The layout stays readable: short modules and functions, no pointers outside the repository, a true folder map.

- No module over :data:`MAX_MODULE_LINES` lines and no function over :data:`MAX_FUNCTION_LINES`
  (its ``def`` line to its last line, docstring included) in server/, client/ (generated code
  excluded), tests/, bench/ and scripts/.
- No file of the repository cites the design document, which is not in the repository.
- docs/architecture.md's folder map names every package and module of the server and the client,
  and nothing that does not exist. Its format is described in the document itself: a fenced
  ``text`` block right after the line ``<!-- folder-map -->``; each line is a path (a folder ends in
  ``/``), indented two spaces per level under its folder, then at least two spaces and what it holds.
"""

from __future__ import annotations

import ast
import re
import subprocess
from collections.abc import Iterator
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
MAX_MODULE_LINES = 400
MAX_FUNCTION_LINES = 80
CHECKED_FOLDERS = ("server", "client", "tests", "bench", "scripts", "examples")
GENERATED = ROOT / "client" / "convserve" / "v1"
MAPPED_PACKAGES = (ROOT / "server" / "convserve_server", ROOT / "client" / "convserve")
ARCHITECTURE = ROOT / "docs" / "architecture.md"
# A citation of a document kept outside the repository: the design document (its name, then a section
# or issue number, or its file name), or an issue of the tracker by its number (see the examples in
# test_the_citation_pattern_matches_the_forms_in_use).
OUTSIDE_DOCUMENT = re.compile(r"\bDESIGN(?:\.md\b|\s+(?:section|issue|§)|\s*§)|\bissue\s+\d+\b|\(issue\s+\"", re.IGNORECASE)


def python_files() -> Iterator[Path]:
    """The Python files whose size is limited: the repository's own (build leftovers such as
    client/build/ after `pip install ./client` are ignored, as git ignores them), the generated gRPC code excluded."""
    folders = tuple(ROOT / folder for folder in CHECKED_FOLDERS)
    for path in repository_files():
        if path.suffix == ".py" and any(folder in path.parents for folder in folders) and GENERATED not in path.parents:
            yield path


def repository_files() -> list[Path]:
    """Every file git tracks or would track (new files not yet added included; ignored ones not)."""
    listed = subprocess.run(
        ["git", "ls-files", "--cached", "--others", "--exclude-standard", "-z"], cwd=ROOT, capture_output=True, text=True, check=True, timeout=60
    ).stdout
    return [ROOT / name for name in sorted(set(listed.split("\0"))) if name and (ROOT / name).is_file()]


def test_no_module_is_over_the_line_limit() -> None:
    """Every module has at most MAX_MODULE_LINES lines."""
    files = list(python_files())
    assert len(files) > 100, "the walk found too few files"
    too_long = []
    for path in files:
        count = len(path.read_text().splitlines())
        if count > MAX_MODULE_LINES:
            too_long.append(f"{path.relative_to(ROOT)}: {count} lines")
    assert not too_long, f"{len(too_long)} modules over {MAX_MODULE_LINES} lines:\n" + "\n".join(too_long)


def long_functions(path: Path) -> Iterator[tuple[str, int, int]]:
    """(qualified name, def line, length) of every function of ``path`` over MAX_FUNCTION_LINES."""

    def walk(node: ast.AST, prefix: str) -> Iterator[tuple[str, int, int]]:
        for child in ast.iter_child_nodes(node):
            name = prefix
            if isinstance(child, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
                name = f"{prefix}{child.name}."
            if isinstance(child, (ast.FunctionDef, ast.AsyncFunctionDef)):
                length = (child.end_lineno or child.lineno) - child.lineno + 1
                if length > MAX_FUNCTION_LINES:
                    yield name.rstrip("."), child.lineno, length
            yield from walk(child, name)

    yield from walk(ast.parse(path.read_text()), "")


def test_no_function_is_over_the_line_limit() -> None:
    """Every function, method and nested function has at most MAX_FUNCTION_LINES lines."""
    too_long = [f"{path.relative_to(ROOT)}:{line} {name}: {length} lines" for path in python_files() for name, line, length in long_functions(path)]
    assert not too_long, f"{len(too_long)} functions over {MAX_FUNCTION_LINES} lines:\n" + "\n".join(too_long)


def test_the_function_walk_finds_long_and_nested_functions(tmp_path: Path) -> None:
    """The function check itself: methods and nested functions count, by their def line to their end."""
    method_body = "".join("        x = 1\n" for _ in range(MAX_FUNCTION_LINES))
    source = f"class A:\n    def ok(self):\n        pass\n\n    def long(self):\n{method_body}\ndef outer():\n    def inner():\n{method_body}"
    sample = tmp_path / "sample.py"
    sample.write_text(source)
    found = {name: length for name, _, length in long_functions(sample)}
    assert found == {"A.long": MAX_FUNCTION_LINES + 1, "outer.inner": MAX_FUNCTION_LINES + 1, "outer": MAX_FUNCTION_LINES + 2}


def test_no_file_cites_a_document_outside_the_repository() -> None:
    """No comment, docstring or document points to the design document, which is not in the repository."""
    files = repository_files()
    assert any(path.name == "README.md" for path in files)
    citations = []
    for path in files:
        try:
            text = path.read_text()
        except (UnicodeDecodeError, OSError):
            continue  # binary files
        for number, line in enumerate(text.splitlines(), 1):
            if OUTSIDE_DOCUMENT.search(line):
                citations.append(f"{path.relative_to(ROOT)}:{number}: {line.strip()[:120]}")
    assert not citations, "state the fact inline or point to a file under docs/:\n" + "\n".join(citations)


def test_the_citation_pattern_matches_the_forms_in_use() -> None:
    """The pattern of the check above: the forms that were in the code, and not the word design itself."""
    name = "DESIGN"  # spelt apart, so that this file does not cite it
    issue = "issue"  # likewise
    for cited in (f"({name} section 5)", f"see {name}.md section 2", f"{name} {issue} 5", f"{name} §3", f"{name.lower()} Section 4"):
        assert OUTSIDE_DOCUMENT.search(cited), cited
    for cited in (f"({issue} 10, section 1)", f"the matrix of {issue} 3", f'({issue} "production-grade service")'):
        assert OUTSIDE_DOCUMENT.search(cited), cited
    for fine in ("the layout redesign", "a design choice", "DESIGNATED", "a known issue", "grpc/grpc#36066"):
        assert not OUTSIDE_DOCUMENT.search(fine), fine


def folder_map(text: str) -> dict[str, str]:
    """The folder map of docs/architecture.md: {path relative to the repository: what it holds}."""
    lines = text.splitlines()
    start = lines.index("<!-- folder-map -->")
    assert lines[start + 1].startswith("```"), "the folder map's fenced block must follow its marker line"
    entries: dict[str, str] = {}
    parents: list[str] = []
    for line in lines[start + 2 :]:
        if line.startswith("```"):
            return entries
        if not line.strip():
            continue
        match = re.fullmatch(r"( *)(\S+)(?: {2,}(\S.*))?", line)
        assert match, f"folder map line not in the format: {line!r}"
        indent, name, description = len(match.group(1)), match.group(2), match.group(3)
        assert indent % 2 == 0 and indent // 2 <= len(parents), f"folder map line indented wrongly: {line!r}"
        assert description, f"folder map line says nothing about {name!r}: {line!r}"
        parents = parents[: indent // 2]
        path = "".join(parents) + name
        assert path not in entries, f"{path} appears twice in the folder map"
        entries[path] = description
        if name.endswith("/"):
            parents.append(name)
    raise AssertionError("the folder map's fenced block is not closed")


def the_tree() -> set[str]:
    """Every package (as ``folder/``) and module of the server and the client, relative to the repository."""
    names: set[str] = set()
    for package in MAPPED_PACKAGES:
        for init in package.rglob("__init__.py"):
            folder = init.parent
            names.add(str(folder.relative_to(ROOT)) + "/")
            if folder == GENERATED:
                continue  # generated modules: the folder's line covers them
            names.update(str(module.relative_to(ROOT)) for module in folder.glob("*.py") if module.name != "__init__.py")
    return names


def test_the_folder_map_parser_reads_the_documented_format() -> None:
    """The parser on a small map: nesting by indentation, folders end in a slash."""
    sample = "<!-- folder-map -->\n```text\nserver/pkg/  the package\n  sub/  a sub-package\n    mod.py  a module\n  top.py  another\n```\n"
    assert folder_map(sample) == {
        "server/pkg/": "the package",
        "server/pkg/sub/": "a sub-package",
        "server/pkg/sub/mod.py": "a module",
        "server/pkg/top.py": "another",
    }


def test_the_folder_map_matches_the_tree() -> None:
    """Every package and module is in docs/architecture.md's folder map, and everything the map names exists."""
    mapped = folder_map(ARCHITECTURE.read_text())
    tree = the_tree()
    assert len(tree) > 50, "the tree walk found too few modules"
    missing = sorted(tree - set(mapped))
    invented = sorted(path for path in mapped if not (ROOT / path).exists() or (path.endswith("/") != (ROOT / path).is_dir()))
    assert not missing and not invented, f"not in the folder map: {missing}; in the map but not in the tree: {invented}"
