"""``python -m adamax_ps.cli``: the ``adamax-ps`` command."""

import sys

from adamax_ps.cli.main import main

sys.exit(main())
