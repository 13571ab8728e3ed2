"""``python -m omnirag.ui``: serve on ``UI_HOST:UI_PORT`` (default 127.0.0.1:7860)."""

from omnirag.core.app import run
from omnirag.ui.app import create_app
from omnirag.ui.config import UiSettings


def main() -> None:
    settings = UiSettings()
    run(create_app(settings), settings, "ui")


if __name__ == "__main__":
    main()
