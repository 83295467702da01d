"""``python -m caffec`` runs the command line."""

import sys

from caffec.cli import main

sys.exit(main())
