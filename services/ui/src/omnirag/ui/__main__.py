"""``python -m omnirag.ui``: serve on ``UI_HOST:UI_PORT`` (default 127.0.0.1:7860)."""

import sys

from omnirag.core.app import run
from omnirag.ui.app import create_app
from omnirag.ui.config import UiSettings
from omnirag.ui.login import LoginConfigError


def main() -> None:
    settings = UiSettings()
    try:
        app = create_app(settings)
    except LoginConfigError as exc:
        # A sentence that names the setting, not a traceback: this is the operator's first start.
        print(f"omnirag ui: cannot start: {exc}", file=sys.stderr)
        sys.exit(2)
    run(app, settings, "ui")


if __name__ == "__main__":
    main()
