"""``python -m virnucpro.cli``."""

import sys

from virnucpro.cli.main import main

sys.exit(main())
