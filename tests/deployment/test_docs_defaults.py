"""The defaults the README and the API pages state are the defaults of the code."""

from __future__ import annotations

import ast
import inspect
import re
from pathlib import Path
from typing import Any

import convserve

ROOT = Path(__file__).resolve().parents[2]
README = (ROOT / "README.md").read_text()
UNITS = {"KiB": 2**10, "MiB": 2**20, "GiB": 2**30}


def _value(text: str) -> Any:
    """A documented default: a Python literal, ``512 MiB``, or a ``RetryPolicy(...)``."""
    text = text.strip()
    sized = re.fullmatch(r"(\d+) (KiB|MiB|GiB)", text)
    if sized:
        return int(sized.group(1)) * UNITS[sized.group(2)]
    if text.startswith("RetryPolicy("):
        return eval(text, {"RetryPolicy": convserve.RetryPolicy})  # noqa: S307 (the project's own README)
    return ast.literal_eval(text)


def _documented_call(signature_text: str) -> dict[str, Any]:
    """``name=default`` pairs of a documented call such as ``f(a, b="x", *, c=60.0, d=512 MiB, ...)``."""
    text = re.sub(r"(\d+) (KiB|MiB|GiB)", lambda m: str(int(m.group(1)) * UNITS[m.group(2)]), signature_text)
    text = re.sub(r",\s*\.\.\.\s*$", "", text)
    tree = ast.parse(f"def f({text}): pass")
    arguments = tree.body[0].args  # type: ignore[attr-defined]
    positional = arguments.posonlyargs + arguments.args
    pairs = dict(zip([a.arg for a in positional[len(positional) - len(arguments.defaults) :]], arguments.defaults))
    pairs.update({a.arg: d for a, d in zip(arguments.kwonlyargs, arguments.kw_defaults) if d is not None})
    values = {name: ast.literal_eval(node) for name, node in pairs.items()}
    return {name: value for name, value in values.items() if value is not Ellipsis}  # `x=...`: not stated


def _api_rows() -> list[tuple[str, str]]:
    """``(callable, arguments)`` of every row of the README's API table that spells out arguments."""
    rows = []
    for match in re.finditer(r"^\| `(convserve\.\w+|client\.\w+)\((.*?)\)`", README, flags=re.MULTILINE):
        name, arguments = match.groups()
        if arguments and not arguments.startswith("..."):
            rows.append((name, arguments))
    return rows


def _signature(name: str) -> inspect.Signature:
    owner, attribute = name.split(".")
    return inspect.signature(getattr(convserve, attribute) if owner == "convserve" else getattr(convserve.Client, attribute))


def test_the_readme_api_table_states_the_real_defaults() -> None:
    rows = _api_rows()
    names = [name for name, _ in rows]
    assert {"convserve.Client", "client.convolve", "client.conv_layer", "client.conv_transpose"} <= set(names), names
    wrong = []
    for name, arguments in rows:
        parameters = _signature(name).parameters
        for argument, default in _documented_call(arguments).items():
            if argument not in parameters:
                wrong.append(f"{name}: no argument {argument}")
            elif parameters[argument].default != default:
                wrong.append(f"{name}({argument}=...): documented {default!r}, the code has {parameters[argument].default!r}")
    assert not wrong, "\n".join(wrong)


def test_the_readme_states_client_timeout_and_message_limit() -> None:
    """The two defaults a user reported wrong: 60 s and 512 MiB."""
    row = next(arguments for name, arguments in _api_rows() if name == "convserve.Client")
    documented = _documented_call(row)
    assert documented["timeout"] == 60.0 and documented["max_message_bytes"] == 512 * 2**20
    assert "default deadline of 60 s" in README


def test_the_api_page_defaults_table_is_complete_and_right() -> None:
    """docs/api/client.md lists every constructor argument of Client (and AsyncClient) with its default."""
    page = (ROOT / "docs" / "api" / "client.md").read_text()
    table = dict(re.findall(r"^\| `(\w+)` \| `([^`]+)`", page, flags=re.MULTILINE))
    for cls in (convserve.Client, convserve.AsyncClient):
        parameters = inspect.signature(cls).parameters
        assert sorted(table) == sorted(parameters), f"{cls.__name__}: the table lists {sorted(table)}"
        wrong = {name: (table[name], p.default) for name, p in parameters.items() if _value(table[name]) != p.default}
        assert not wrong, f"{cls.__name__}: documented vs real defaults {wrong}"


def test_retry_policy_defaults_wherever_the_docs_spell_them() -> None:
    """Every ``RetryPolicy(name=value)`` in the README and docs/ names a real field and its default."""
    defaults = {name: p.default for name, p in inspect.signature(convserve.RetryPolicy).parameters.items()}
    texts = [README, *(path.read_text() for path in (ROOT / "docs").rglob("*.md"))]
    found = [pair for text in texts for call in re.findall(r"RetryPolicy\(([^)]*)\)", text) for pair in re.findall(r"(\w+)=([\d.]+)", call)]
    assert found, "no RetryPolicy defaults spelled out in the docs"
    wrong = [(name, value) for name, value in found if name not in defaults or float(value) != defaults[name]]
    assert not wrong, f"RetryPolicy defaults stated wrongly: {wrong} (real: {defaults})"
