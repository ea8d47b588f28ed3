"""``python -m samtriton.tools.cli``: the ``samtriton`` command."""

import sys

from samtriton.tools.cli import main

sys.exit(main())
