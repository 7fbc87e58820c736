"""Checks of untrusted image bytes and their decoding to the model's input (224x224 RGB). Never by name."""

from __future__ import annotations

import hashlib
import io
import warnings
from dataclasses import dataclass

from litestar.exceptions import ClientException, HTTPException
from litestar.status_codes import (
    HTTP_400_BAD_REQUEST,
    HTTP_413_REQUEST_ENTITY_TOO_LARGE,
    HTTP_415_UNSUPPORTED_MEDIA_TYPE,
)
from PIL import Image, ImageOps, UnidentifiedImageError

# Pillow format name -> file extension. Anything else is refused, whatever the file is called.
FORMATS = {"JPEG": "jpg", "PNG": "png", "WEBP": "webp", "GIF": "gif", "BMP": "bmp"}
ACCEPTED = "JPEG, PNG, WebP, GIF or BMP"
SIZE = 224
# We refuse oversized images ourselves (see _open); Pillow's warning would only repeat it.
warnings.simplefilter("ignore", Image.DecompressionBombWarning)


class ImageRejected(ClientException):
    """A bad upload; its status code says why (400, 413 or 415)."""


@dataclass(frozen=True)
class CheckedImage:
    sha256: str
    extension: str
    data: bytes
    pixels: bytes  # SIZE x SIZE x 3 uint8 RGB

    @property
    def relative_path(self) -> str:
        return f"{self.sha256[:2]}/{self.sha256}.{self.extension}"


def reject(status: int, detail: str) -> HTTPException:
    return ImageRejected(detail=detail, status_code=status)


def check_size(data: bytes, max_bytes: int) -> None:
    if not data:
        raise reject(HTTP_400_BAD_REQUEST, "The file is empty")
    if len(data) > max_bytes:
        raise reject(HTTP_413_REQUEST_ENTITY_TOO_LARGE, f"The file is larger than {max_bytes} bytes")


def _open(data: bytes, max_pixels: int) -> Image.Image:
    Image.MAX_IMAGE_PIXELS = max_pixels
    try:
        image = Image.open(io.BytesIO(data), formats=list(FORMATS))
    except Image.DecompressionBombError as exc:
        raise reject(HTTP_400_BAD_REQUEST, f"The image is too large to decode safely: {exc}") from exc
    except UnidentifiedImageError as exc:
        raise reject(HTTP_415_UNSUPPORTED_MEDIA_TYPE, f"Not a supported image: send {ACCEPTED}") from exc
    except (OSError, SyntaxError, ValueError, EOFError) as exc:
        # A format plugin recognised the file but could not read its header.
        raise reject(HTTP_400_BAD_REQUEST, f"The image is truncated or corrupt: {exc}") from exc
    # Pillow only warns between 1x and 2x the limit: the limit is the limit.
    if image.width * image.height > max_pixels:
        raise reject(
            HTTP_400_BAD_REQUEST,
            f"The image is too large to decode safely: {image.width}x{image.height} pixels is more than {max_pixels}",
        )
    return image


def _to_rgb(image: Image.Image) -> Image.Image:
    if image.mode == "RGB":
        return image
    if image.mode.startswith("I;16"):
        image = image.convert("I")
    if image.mode == "I":
        # 16-bit grayscale: scale to 8 bits instead of clipping everything to white.
        image = image.point(lambda v: v / 257).convert("L")
    if image.mode == "P" and "transparency" in image.info:
        image = image.convert("RGBA")
    if image.mode in {"RGBA", "LA", "PA", "RGBa", "La"}:
        background = Image.new("RGB", image.size, (255, 255, 255))
        rgba = image.convert("RGBA")
        background.paste(rgba, mask=rgba.getchannel("A"))
        return background
    return image.convert("RGB")


def _fit(image: Image.Image) -> Image.Image:
    """Resize the shorter side to SIZE, then crop the centre SIZE x SIZE."""
    return ImageOps.fit(image, (SIZE, SIZE), method=Image.Resampling.BILINEAR, centering=(0.5, 0.5))


def decode(data: bytes, max_pixels: int) -> tuple[str, bytes]:
    """Decode an upload to the model input. Returns (format extension, 224x224x3 RGB bytes)."""
    image = _open(data, max_pixels)
    extension = FORMATS[image.format or ""]
    try:
        if image.format == "JPEG":
            # Draft mode decodes a scaled-down JPEG directly: a 24 MP photo costs little.
            image.draft("RGB", (SIZE * 2, SIZE * 2))
        image.seek(0)  # first frame of an animation
        image.load()
        image = ImageOps.exif_transpose(image) or image
        pixels = _fit(_to_rgb(image)).tobytes()
    except (OSError, SyntaxError, ValueError, EOFError) as exc:
        raise reject(HTTP_400_BAD_REQUEST, f"The image is truncated or corrupt: {exc}") from exc
    if len(pixels) != SIZE * SIZE * 3:  # pragma: no cover - _fit always gives RGB SIZE x SIZE
        raise reject(HTTP_400_BAD_REQUEST, "The image could not be converted")
    return extension, pixels


def check(data: bytes, max_bytes: int, max_pixels: int) -> CheckedImage:
    """Every check an upload must pass, by content, never by its name. Raises ImageRejected."""
    check_size(data, max_bytes)
    extension, pixels = decode(data, max_pixels)
    return CheckedImage(hashlib.sha256(data).hexdigest(), extension, data, pixels)
