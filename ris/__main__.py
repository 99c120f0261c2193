"""``python -m ris``: the same as the ``ris`` console command (rules use this form)."""

import sys

from ris.cli import main

sys.exit(main())
