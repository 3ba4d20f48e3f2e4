"""``python -m convserve_server``: the same as the ``convserve`` command."""

import sys

from .cli import main

sys.exit(main())
