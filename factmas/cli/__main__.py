"""``python -m factmas.cli ...``: the ``factmas`` command."""
import sys

from factmas.cli import main

sys.exit(main())
