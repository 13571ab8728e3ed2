"""``python -m omnirag.indexer``."""

import sys

from omnirag.indexer.cli import main

if __name__ == "__main__":
    sys.exit(main())
