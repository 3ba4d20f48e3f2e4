"""mkdocs hook: show Sphinx roles left in docstrings (``:class:`X```) as code linked to the object, not as literal role text."""

from __future__ import annotations

import re
from typing import Any

_ROLE = re.compile(r":(?:py:)?(?:class|func|meth|mod|attr|obj|exc|data):<code>(~?)([^<]*)</code>")


def _code(match: re.Match[str]) -> str:
    """``:meth:`~a.b.c``` shows ``c``, as Sphinx does (without the tilde the whole target), linked by autorefs when documented."""
    short, target = match.groups()
    shown = f"<code>{target.rsplit('.', 1)[-1] if short else target}</code>"
    identifier = target if target.startswith("convserve.") else "convserve." + target.lstrip(".")  # a short name: the package's export
    return f'<autoref identifier="{identifier}" optional>{shown}</autoref>'


def on_page_content(html: str, **kwargs: Any) -> str:
    """Replace each role mkdocstrings rendered as ``:role:<code>target</code>`` by the code, linked where the target is documented."""
    return _ROLE.sub(_code, html)
