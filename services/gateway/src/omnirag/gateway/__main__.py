"""``python -m omnirag.gateway``: serve on ``GATEWAY_HOST:GATEWAY_PORT`` (default 127.0.0.1:8000)."""

from omnirag.core.app import run
from omnirag.gateway.app import create_app
from omnirag.gateway.config import GatewaySettings


def main() -> None:
    settings = GatewaySettings()
    # Everything the lifespan makes (clients, keys, OCR) lives until shutdown.
    run(create_app(settings), settings, "gateway", freeze_after_startup=True)


if __name__ == "__main__":
    main()
