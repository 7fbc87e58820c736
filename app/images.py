"""Checks of untrusted image bytes and their decoding to the model's input (224x224 RGB). Never by name.

Everything here is blocking and trusts Pillow to finish: the app runs it only in app/sandbox.py's
processes, with a time and a memory limit. What can be judged from the header is refused before any
pixel is decoded: too many pixels, a decode costing more than the budget, a JPEG with absurdly many scans.
"""

from __future__ import annotations

import hashlib
import io
import re
import warnings
from dataclasses import dataclass

import numpy as np
import pillow_heif
from litestar.exceptions import ClientException, HTTPException
from litestar.status_codes import (
    HTTP_400_BAD_REQUEST,
    HTTP_413_REQUEST_ENTITY_TOO_LARGE,
    HTTP_415_UNSUPPORTED_MEDIA_TYPE,
)

# With the plugins of FORMATS imported (they register themselves), opening a file loads none of Pillow's others.
from PIL import (  # noqa: F401
    AvifImagePlugin,
    BmpImagePlugin,
    GifImagePlugin,
    Image,
    ImageMode,
    ImageOps,
    JpegImagePlugin,
    MpoImagePlugin,
    PngImagePlugin,
    UnidentifiedImageError,
    WebPImagePlugin,
)

# Pillow format name -> file extension. Anything else is refused, whatever the file is called. MPO is
# how Pillow names a JPEG carrying more pictures (a phone's depth or gain map): the first is decoded.
# HEIF is an iPhone's HEIC (HEVC-coded; pillow-heif), AVIF is Pillow's own (its wheels carry libavif).
FORMATS = {
    "JPEG": "jpg",
    "MPO": "jpg",
    "PNG": "png",
    "WEBP": "webp",
    "GIF": "gif",
    "BMP": "bmp",
    "HEIF": "heic",
    "AVIF": "avif",
}
# What Image.open may try (JPEG's opener makes MPOs). AVIF before HEIF: both claim the generic `mif1` brand,
# and the AVIF opener gives way (SyntaxError) to the next when the file is not AV1.
OPENED = ["JPEG", "PNG", "WEBP", "GIF", "BMP", "AVIF", "HEIF"]
JPEGS = {"JPEG", "MPO"}
# What a decoder holds besides Pillow's image, in bytes per pixel (None: one per band). libheif and libavif
# decode whole (no scaled-down decode) and hand Pillow an 8-bit interleaved copy (AVIF's is always RGBA);
# libwebp's animation decoder, which Pillow uses for every WebP, keeps two RGBA canvases from the moment the
# file is opened (so a WebP is judged from its header first: webp_canvas) and hands over an RGBA copy of the
# frame (12 in all, measured). Like every codec's working planes, the YUV planes of HEIC, AVIF and lossy WebP
# are not counted.
DECODER_HOLDS: dict[str, int | None] = {"HEIF": None, "AVIF": 4, "WEBP": 12}
ACCEPTED = "JPEG, PNG, WebP, GIF, BMP, HEIC or AVIF"
# The major brands (of the `ftyp` box) the HEIF and AVIF openers claim: such a file that neither can read is
# a broken HEIC or AVIF (400), not a format we refuse (415).
HEIF_BRANDS = {
    b"heic",
    b"heix",
    b"heim",
    b"heis",
    b"hevc",
    b"hevx",
    b"hevm",
    b"hevs",
    b"mif1",
    b"msf1",
    b"avif",
    b"avis",
}
# What decoders raise on bad data (libheif and libavif's errors come as RuntimeError too).
BAD_DATA = (OSError, SyntaxError, ValueError, EOFError, RuntimeError)
# Only the image itself: no embedded thumbnails, depth maps or auxiliary images are read. One decoding
# thread: a decode process is one core's worth of work, and every thread's stack and malloc arena would
# count against its address-space limit (app/sandbox.py).
pillow_heif.register_heif_opener(thumbnails=False, depth_images=False, aux_images=False, decode_threads=1)
AvifImagePlugin.DEFAULT_MAX_THREADS = 1
SIZE = 224
INPUT_BYTES = SIZE * SIZE * 3  # the model's input: SIZE x SIZE RGB, one byte a channel
# A normal progressive JPEG has about 10 scans; each scan is another pass over every block of the image.
MAX_SCANS = 100
# Text chunks are metadata nobody here reads: at most 8 MB of them (Pillow's own bound is 64 MB).
PngImagePlugin.MAX_TEXT_MEMORY = 8 * 1024 * 1024
# In entropy-coded data 0xFF is followed by 0x00 (a stuffed byte) or a restart marker: anything else ends it.
_MARKER = re.compile(rb"\xff[^\x00\xd0-\xd7\xff]")
# We refuse oversized images ourselves (see open_image); Pillow's warning would only repeat it.
warnings.simplefilter("ignore", Image.DecompressionBombWarning)


class ImageRejected(ClientException):
    """A bad upload; its status code says why (400, 413 or 415)."""


@dataclass(frozen=True)
class CheckedImage:
    sha256: str
    extension: str
    data: bytes
    pixels: bytes  # SIZE x SIZE x 3 uint8 RGB
    # When this upload stored its original (files.store_original), None when the original was there already or
    # not stored at all. Stored by this upload, it was not kept before, so no earlier result of it is either
    # (app.predictions.accept); refused after all, the upload removes it (files.forget_original).
    written_ns: int | None = None

    @property
    def new(self) -> bool:
        return self.written_ns is not None

    @property
    def relative_path(self) -> str:
        return stored_path(self.sha256, self.extension)


# Originals are spread over folders named by their hash's first two characters (retention runs go folder by folder).
ORIGINALS_FOLDER = re.compile(r"[0-9a-f]{2}")


def stored_path(sha256: str, extension: str) -> str:
    """Where an original is kept, under UPLOAD_DIR: by its content, never by its name."""
    return f"{sha256[:2]}/{sha256}.{extension}"


def reject(status: int, detail: str) -> HTTPException:
    return ImageRejected(detail=detail, status_code=status)


def check_size(data: bytes, max_bytes: int) -> None:
    if not data:
        raise reject(HTTP_400_BAD_REQUEST, "The file is empty")
    if len(data) > max_bytes:
        raise reject(HTTP_413_REQUEST_ENTITY_TOO_LARGE, f"The file is larger than {max_bytes} bytes")


def corrupt(exc: Exception) -> HTTPException:
    if "MAX_TEXT" in str(exc):  # PngImagePlugin's bounds on text chunks
        return reject(
            HTTP_400_BAD_REQUEST, "The image's metadata is too large: a text chunk of over 1 MB, or 8 MB of them"
        )
    return reject(HTTP_400_BAD_REQUEST, f"The image is truncated or corrupt: {exc}")


def jpeg_scans(data: bytes, limit: int = MAX_SCANS) -> int:
    """The scans (SOS segments) of a JPEG's first image, counted up to limit + 1. Walks the segments by
    their lengths and skips each scan's entropy-coded data, so bytes in metadata or in the data are never
    miscounted; skips stray bytes between segments as libjpeg does, so they cannot hide a scan from it."""
    scans, at = 0, 2
    while scans <= limit and at + 1 < len(data):
        if data[at] != 0xFF:
            at = data.find(b"\xff", at)
            if at < 0:
                break
            continue
        marker = data[at + 1]
        if marker == 0xD9:  # end of image: libjpeg reads no further
            break
        if marker in (0x00, 0x01, 0xFF) or 0xD0 <= marker <= 0xD7:  # no length: a fill byte, a restart
            at += 1 if marker == 0xFF else 2
            continue
        at += 2 + int.from_bytes(data[at + 2 : at + 4], "big")
        if marker == 0xDA:
            scans += 1
            found = _MARKER.search(data, at)
            at = found.start() if found else len(data)
    return scans


def decode_cost(image: Image.Image) -> int:
    """What decoding `image` costs in memory, in bytes, judged from its header (see `cost_of`). A JPEG counts
    at the size it is drafted to (call `draft` first)."""
    return cost_of(image.width, image.height, image.mode, image.format)


def cost_of(width: int, height: int, mode: str, fmt: str | None) -> int:
    """What decoding a width x height image of this mode and format costs in memory, in bytes: pixels x the
    bytes Pillow keeps per pixel in its mode (4 for any mode of several bands), plus 4 for the RGB copy every
    image other than RGB becomes, plus what its decoder holds (DECODER_HOLDS). Only the first frame of an
    animation is ever decoded, so its other frames cost nothing."""
    try:
        found = ImageMode.getmode(mode)
        bands = len(found.bands)
        stored = 4 if bands > 1 else int(found.typestr[-1])
    except (KeyError, ValueError):  # a mode Pillow only reads from, never keeps: count the most
        bands, stored = 4, 4
    per_pixel = stored + (0 if mode == "RGB" else 4)
    if fmt in DECODER_HOLDS:
        per_pixel += DECODER_HOLDS[fmt] or bands
    return width * height * per_pixel


def check_pixels(width: int, height: int, max_pixels: int) -> None:
    if width * height > max_pixels:
        raise reject(
            HTTP_400_BAD_REQUEST,
            f"The image is too large to decode safely: {width}x{height} pixels is more than {max_pixels}",
        )


def check_cost(width: int, height: int, mode: str, fmt: str | None, max_cost: int) -> None:
    if (cost := cost_of(width, height, mode, fmt)) > max_cost:
        raise reject(
            HTTP_400_BAD_REQUEST,
            f"The image is too large to decode: {width}x{height} pixels ({mode}) would"
            f" take {cost // 2**20} MB, more than {max_cost // 2**20} MB",
        )


def webp_canvas(data: bytes) -> tuple[int, int, str] | None:
    """A WebP's canvas (width, height, and the mode Pillow opens it in), read from its first chunk: VP8 (lossy,
    no alpha), VP8L (lossless) or VP8X (extended: an animation, or a still image with metadata or lossy alpha).
    None for any other file or a header cut short: Pillow judges those. The mode is RGB unless the header says
    alpha (a VP8X still image may yet carry an ALPH chunk: RGBA then, so this cost is never more than Pillow's)."""
    if data[:4] != b"RIFF" or data[8:12] != b"WEBP":
        return None
    kind = data[12:16]
    if kind == b"VP8 " and len(data) >= 30 and data[23:26] == b"\x9d\x01\x2a":  # key frame's start code
        width, height = int.from_bytes(data[26:28], "little"), int.from_bytes(data[28:30], "little")
        return width & 0x3FFF, height & 0x3FFF, "RGB"  # the top 2 bits are an upscaling hint, not the size
    if kind == b"VP8L" and len(data) >= 25 and data[20] == 0x2F:  # signature, then 14 + 14 + 1 bits
        bits = int.from_bytes(data[21:25], "little")
        return (bits & 0x3FFF) + 1, (bits >> 14 & 0x3FFF) + 1, "RGBA" if bits >> 28 & 1 else "RGB"
    if kind == b"VP8X" and len(data) >= 30:  # flags (alpha: 0x10), 3 reserved bytes, then 24 + 24 bits
        width, height = int.from_bytes(data[24:27], "little"), int.from_bytes(data[27:30], "little")
        return width + 1, height + 1, "RGBA" if data[20] & 0x10 else "RGB"
    return None


def open_image(data: bytes, max_pixels: int, max_cost: int, draft: int = SIZE) -> Image.Image:
    """`data` opened, its header checked: its format, its pixels, its scans (JPEG) and its decode cost,
    a JPEG drafted to be decoded at no less than draft x draft. Nothing is decoded yet."""
    Image.MAX_IMAGE_PIXELS = max_pixels
    if (canvas := webp_canvas(data)) is not None:
        # Opening a WebP already reserves libwebp's canvases (DECODER_HOLDS): judged before, not after.
        check_pixels(canvas[0], canvas[1], max_pixels)
        check_cost(*canvas, "WEBP", max_cost)
    try:
        image = Image.open(io.BytesIO(data), formats=OPENED)
    except Image.DecompressionBombError as exc:
        raise reject(HTTP_400_BAD_REQUEST, f"The image is too large to decode safely: {exc}") from exc
    except UnidentifiedImageError as exc:
        if data[4:8] == b"ftyp" and data[8:12] in HEIF_BRANDS:
            raise reject(
                HTTP_400_BAD_REQUEST, "The image is truncated or corrupt: a HEIC or AVIF file its decoder cannot read"
            ) from exc
        raise reject(HTTP_415_UNSUPPORTED_MEDIA_TYPE, f"Not a supported image: send {ACCEPTED}") from exc
    except BAD_DATA as exc:
        # A format plugin recognised the file but could not read its header.
        raise corrupt(exc) from exc
    # Pillow only warns between 1x and 2x the limit: the limit is the limit.
    check_pixels(image.width, image.height, max_pixels)
    if image.format in JPEGS:
        if jpeg_scans(data) > MAX_SCANS:
            raise reject(
                HTTP_400_BAD_REQUEST,
                f"The image is too costly to decode: a JPEG of more than {MAX_SCANS} scans (a photo has about 10)",
            )
        # Draft mode decodes a scaled-down JPEG directly: a 24 MP photo costs little.
        image.draft("RGB", (draft, draft))
    check_cost(image.width, image.height, image.mode, image.format, max_cost)
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
        rgba = image if image.mode == "RGBA" else image.convert("RGBA")
        background.paste(rgba, mask=rgba.getchannel("A"))
        return background
    return image.convert("RGB")


def _fit(image: Image.Image) -> bytes:
    """The centre square, resized to SIZE x SIZE: the model's input, as RGB bytes. OpenCV's resize, many
    times faster than Pillow's here (it uses the CPU's vector instructions): bilinear when shrinking by
    less than half (a drafted JPEG), by area beyond (no aliasing)."""
    import cv2  # preloaded in the decode processes' fork server; the web process never needs it

    pixels = np.asarray(image)
    height, width = pixels.shape[:2]
    side = min(height, width)
    top, left = (height - side) // 2, (width - side) // 2
    square = pixels[top : top + side, left : left + side]
    interpolation = cv2.INTER_AREA if side > 2 * SIZE else cv2.INTER_LINEAR
    return bytes(cv2.resize(square, (SIZE, SIZE), interpolation=interpolation).data)


def first_frame(image: Image.Image) -> Image.Image:
    """The first frame of an opened image (a HEIF's primary image), decoded and turned upright (as its EXIF
    orientation, or a HEIC or AVIF's rotation and mirroring, says)."""
    try:
        if image.format != "HEIF":  # a HEIF opens at its primary image, which need not be its first
            image.seek(0)  # first frame of an animation
        image.load()
        ImageOps.exif_transpose(image, in_place=True)  # in place: no copy of an upright image
        return image
    except BAD_DATA as exc:
        raise corrupt(exc) from exc


def decode(data: bytes, max_pixels: int, max_cost: int) -> tuple[str, bytes]:
    """Decode an upload to the model input. Returns (format extension, 224x224x3 RGB bytes)."""
    image = open_image(data, max_pixels, max_cost)
    extension = FORMATS[image.format or ""]
    image = first_frame(image)
    try:
        pixels = _fit(_to_rgb(image))
    except BAD_DATA as exc:
        raise corrupt(exc) from exc
    if len(pixels) != INPUT_BYTES:  # pragma: no cover - _fit always gives RGB SIZE x SIZE
        raise reject(HTTP_400_BAD_REQUEST, "The image could not be converted")
    return extension, pixels


def check(data: bytes, max_bytes: int, max_pixels: int, max_cost: int) -> CheckedImage:
    """Every check an upload must pass, by content, never by its name. Raises ImageRejected. Unbounded
    in time and memory for a hostile file: the app calls it through app/sandbox.py only."""
    check_size(data, max_bytes)
    extension, pixels = decode(data, max_pixels, max_cost)
    return CheckedImage(hashlib.sha256(data).hexdigest(), extension, data, pixels)
