"""Reading the report page back: its images and their decoded sizes."""

from __future__ import annotations

import base64
import io
from html.parser import HTMLParser

from PIL import Image

PNG_PREFIX = "data:image/png;base64,"


class _Tags(HTMLParser):
    def __init__(self) -> None:
        super().__init__()
        self.imgs: list[dict[str, str | None]] = []
        self.tags: list[str] = []

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        self.tags.append(tag)
        if tag == "img":
            self.imgs.append(dict(attrs))


def parse(html: str) -> _Tags:
    p = _Tags()
    p.feed(html)
    return p


def image_sizes(html: str) -> list[tuple[int, int]]:
    """(width, height) of every <img>, each of which must be an embedded PNG."""
    sizes = []
    for img in parse(html).imgs:
        src = img.get("src") or ""
        assert src.startswith(PNG_PREFIX), f"image not embedded as a PNG data URI: {src[:60]}"
        im = Image.open(io.BytesIO(base64.b64decode(src[len(PNG_PREFIX) :], validate=True)))
        assert im.format == "PNG"
        im.load()
        sizes.append(im.size)
    return sizes
