"""``python -m convserve_server``: the same as the ``convserve`` command."""

import sys

from convserve_server.cli import main

sys.exit(main())
