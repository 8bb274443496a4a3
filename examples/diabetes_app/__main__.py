"""``python -m examples.diabetes_app [--port 8001] [--broker URL] [--client-id ID]``."""

import sys

from examples.diabetes_app.server import main

sys.exit(main())
