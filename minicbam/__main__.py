"""``python -m minicbam``: the same command line as the ``minicbam`` script."""

import sys

from minicbam.app.cli import main

sys.exit(main())
