"""http(s) image and video URLs in a chat request, fetched by the gateway, never by a model.

Through core's guarded fetch (:meth:`omnirag.core.netguard.GuardedClient.fetch`): private, loopback
and metadata addresses refused unless the host is in ``GATEWAY_IMAGE_FETCH_ALLOW_HOSTS``, the
checked address pinned for the connection, redirects followed by hand with every hop checked, the
body streamed under ``GATEWAY_MAX_IMAGE_BYTES`` (``GATEWAY_MAX_VIDEO_BYTES``), one deadline
(``GATEWAY_IMAGE_FETCH_TIMEOUT``) over the whole fetch.

Error codes (stable, 400 unless said): ``image_url_refused``, ``image_fetch_failed``,
``video_url_refused``, ``video_fetch_failed``; ``image_too_large`` / ``video_too_large`` (413).
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable

from omnirag.core.errors import BadRequest, PayloadTooLarge
from omnirag.core.netguard import (
    AddressGuard,
    BodyTooLarge,
    FetchError,
    FetchTimeout,
    GuardedClient,
    RefusedURL,
    Resolver,
    TooManyRedirects,
)
from omnirag.gateway.config import GatewaySettings
from omnirag.gateway.images import MediaKind

__all__ = ["MAX_IMAGE_REDIRECTS", "USER_AGENT", "ImageFetch", "ImageFetcher"]

USER_AGENT = "omnirag-gateway/0.1 (image fetch)"
MAX_IMAGE_REDIRECTS = 3

ImageFetch = Callable[[str], Awaitable[bytes]]
"""``async (http(s) URL) -> image bytes``; raises OmniragError subclasses with clear messages."""

_A = {"image": "an image", "video": "a video"}
_ACCEPT = {
    "image": "image/png,image/jpeg,image/webp,image/gif;q=0.9,image/*;q=0.5",
    "video": "video/mp4,video/webm,video/quicktime;q=0.9,video/*;q=0.5",
}


def _shown(url: str, limit: int = 80) -> str:
    return url if len(url) <= limit else url[: limit - 3] + "..."


class ImageFetcher:
    """Fetches http(s) image (or, with ``kind="video"``, video) URLs: ``await fetcher(url) -> bytes``.

    One fetcher resolves each host once (the answer is pinned for its connections), so make one per
    request. Images are compressed already: the fetcher asks for plain bodies (a compressed one is
    still decoded within the cap).
    """

    def __init__(
        self,
        settings: GatewaySettings,
        resolver: Resolver | None = None,
        *,
        kind: MediaKind = "image",
    ) -> None:
        self.kind = kind
        self.max_bytes = settings.max_video_bytes if kind == "video" else settings.max_image_bytes
        self.max_setting = f"GATEWAY_MAX_{kind.upper()}_BYTES"
        self.timeout = settings.image_fetch_timeout
        self.guard = AddressGuard(
            settings.image_fetch_allow_hosts, resolver, allow_setting="GATEWAY_IMAGE_FETCH_ALLOW_HOSTS"
        )
        self.headers = {"User-Agent": USER_AGENT, "Accept": _ACCEPT[kind], "Accept-Encoding": "identity"}

    async def __call__(self, url: str) -> bytes:
        kind, shown = self.kind, _shown(url)
        failed, refused = f"{kind}_fetch_failed", f"{kind}_url_refused"
        try:
            async with GuardedClient(self.guard, max_connections=2, headers=self.headers) as client:
                fetched = await client.fetch(
                    url,
                    max_bytes=self.max_bytes,
                    timeout=self.timeout,
                    max_redirects=MAX_IMAGE_REDIRECTS,
                    accept=lambda content_type: content_type.startswith(kind + "/"),
                )
        except RefusedURL as exc:
            where = _shown(exc.url) if exc.url and exc.url != url else shown
            raise BadRequest(f"{kind} URL {where} refused: {exc.reason}", code=refused) from exc
        except BodyTooLarge as exc:
            raise PayloadTooLarge(
                f"{kind} URL {shown}: the {kind} is larger than {self.max_bytes:,} bytes "
                f"({self.max_setting})",
                code=f"{kind}_too_large",
            ) from exc
        except FetchTimeout as exc:
            raise BadRequest(
                f"{kind} URL {shown}: no complete answer within {self.timeout:g} s", code=failed
            ) from exc
        except TooManyRedirects as exc:
            raise BadRequest(
                f"{kind} URL {shown}: more than {MAX_IMAGE_REDIRECTS} redirects", code=failed
            ) from exc
        except FetchError as exc:
            raise BadRequest(f"{kind} URL {shown} could not be fetched: {exc.reason}", code=failed) from exc
        if fetched.status != 200:
            raise BadRequest(f"{kind} URL {shown} answered HTTP {fetched.status}", code=failed)
        if not fetched.content_type.startswith(kind + "/"):
            raise BadRequest(
                f"{kind} URL {shown} answered {fetched.content_type or 'no content type'}, not {_A[kind]}",
                code=failed,
            )
        return fetched.body
