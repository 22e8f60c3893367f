"""python -m reference.preprocess (reference/preprocess/cli.py)."""

import sys

from .cli import main

sys.exit(main())
