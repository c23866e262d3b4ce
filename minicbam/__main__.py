"""``python -m minicbam``: the same command line as the ``minicbam`` script."""

import sys

from minicbam.cli import main

sys.exit(main())
