"""`python -m omni_runtime.serve ...`: the same as the `omni-serve` command."""
import sys

from .cli import main

sys.exit(main())
