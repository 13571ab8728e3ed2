"""``python -m omnirag.model_download``."""

import sys

from omnirag.model_download.cli import main

if __name__ == "__main__":
    sys.exit(main())
