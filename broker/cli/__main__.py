"""`python -m broker.cli`: the same as the `errand` console script."""

import sys

from broker.cli import main

sys.exit(main())
