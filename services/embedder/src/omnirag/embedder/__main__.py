"""``python -m omnirag.embedder``: serve on ``EMBEDDER_HOST:EMBEDDER_PORT`` (default 127.0.0.1:8001)."""

from omnirag.core.app import run
from omnirag.embedder.app import create_app
from omnirag.embedder.config import EmbedderSettings


def main() -> None:
    settings = EmbedderSettings()
    run(create_app(settings), settings, "embedder")


if __name__ == "__main__":
    main()
