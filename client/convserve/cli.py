"""Entry point of the ``convserve`` command; the commands live in the server package.

In a client-only install ``convserve serve`` says which extra to install instead of failing
with an import error.
"""

from __future__ import annotations

import sys
from typing import Sequence


def main(argv: Sequence[str] | None = None) -> int:
    """Run the ``convserve`` command."""
    try:
        from convserve_server.cli import main as server_main
    except ImportError as exc:
        print(
            f"convserve: the server is not installed ({exc}); install it with: pip install 'convserve[server]'",
            file=sys.stderr,
        )
        return 2
    return server_main(argv)


if __name__ == "__main__":
    sys.exit(main())
