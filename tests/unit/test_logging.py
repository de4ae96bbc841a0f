"""One line per event: Opacus' logging.basicConfig() must not duplicate Flower's log lines."""

import subprocess
import sys

from tests.conftest import APP_DIR


def test_each_event_is_logged_once_even_after_opacus_is_imported():
    program = (
        "import logging; import fl_app.server_app; import privacy.dp; "
        "from flwr.common.logger import log; "
        "log(logging.INFO, 'event-once'); log(logging.DEBUG, 'debug-hidden')"
    )
    completed = subprocess.run(
        [sys.executable, "-c", program], cwd=APP_DIR, capture_output=True, text=True, check=True
    )
    output = completed.stdout + completed.stderr
    assert output.count("event-once") == 1, output
    assert "debug-hidden" not in output
