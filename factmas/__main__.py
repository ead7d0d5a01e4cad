"""``python -m factmas ...``: the ``factmas`` command (``factmas.cli.main``)."""
import sys

from factmas.cli import main

sys.exit(main())
