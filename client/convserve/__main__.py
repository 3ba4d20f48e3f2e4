"""``python -m convserve``: the same as the ``convserve`` command."""

import sys

from convserve.cli import main

sys.exit(main())
