"""``python -m omnirag.retriever``: serve on ``RETRIEVER_HOST:RETRIEVER_PORT`` (default 127.0.0.1:8002)."""

from omnirag.core.app import run
from omnirag.retriever.app import create_app
from omnirag.retriever.config import RetrieverSettings


def main() -> None:
    settings = RetrieverSettings()
    run(create_app(settings), settings, "retriever")


if __name__ == "__main__":
    main()
