"""``python -m tools.audit RUN_DIR``: the same as ``fl-audit RUN_DIR``."""

import sys

from tools.audit.cli import main

sys.exit(main())
