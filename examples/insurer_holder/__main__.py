"""``python -m examples.insurer_holder [serve|registration|keygen] [--port 8003] [--broker URL]``."""

import sys

from examples.common.holder import main
from examples.insurer_holder.server import CATEGORIES, IDENTIFIER, LEGAL_NAME, PORT, build

sys.exit(
    main(None, identifier=IDENTIFIER, legal_name=LEGAL_NAME, categories=CATEGORIES, port=PORT, build=build)
)
