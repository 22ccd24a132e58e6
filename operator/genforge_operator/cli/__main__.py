"""`python -m genforge_operator.cli` runs the `genforge` console script."""

import sys

from . import main

sys.exit(main())
