"""Entry point: ``python -m services.auth`` (see ``services.auth.cli``)."""

import sys

from services.auth.cli import main

sys.exit(main())
