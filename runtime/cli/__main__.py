"""`python -m omni_runtime.cli ...`: the same as the `omni-run` command."""
import sys

from . import main

sys.exit(main())
