"""`python -m optimum_si.cli ...` (e.g. under torchrun)."""

import sys

from .main import main

sys.exit(main())
