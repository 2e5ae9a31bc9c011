"""`python -m errand_client exchange|complete`: the CI commands without the broker's CLI."""

import sys

from errand_client.ci import main

if __name__ == "__main__":
    sys.exit(main())
