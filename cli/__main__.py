"""`python -m shoal.cli ...`: the `shoal` command, for tests, benchmarks and images without the script."""

import sys

from shoal.cli import main

sys.exit(main())
