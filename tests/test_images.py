"""Upload checks and decoding, with images of every accepted format and mode, and bad files."""

from __future__ import annotations

import hashlib
import io
import time
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from app import images
from app.settings import Settings
from tests import hostile, samples

MAX_BYTES = 10 * 1024 * 1024
MAX_PIXELS = 64_000_000
MAX_COST = Settings().decode_cost_mb * 2**20


def pixels_of(data: bytes) -> np.ndarray:
    checked = images.check(data, MAX_BYTES, MAX_PIXELS, MAX_COST)
    return np.frombuffer(checked.pixels, dtype=np.uint8).reshape(224, 224, 3)


@pytest.mark.parametrize(
    ("fmt", "extension"),
    [
        ("JPEG", "jpg"),
        ("PNG", "png"),
        ("WEBP", "webp"),
        ("GIF", "gif"),
        ("BMP", "bmp"),
        ("HEIF", "heic"),
        ("AVIF", "avif"),
    ],
)
def test_accepted_formats(fmt: str, extension: str) -> None:
    data = samples.photo(3, fmt=fmt)
    checked = images.check(data, MAX_BYTES, MAX_PIXELS, MAX_COST)
    assert checked.extension == extension
    assert checked.sha256 == hashlib.sha256(data).hexdigest()
    assert len(checked.pixels) == 224 * 224 * 3
    assert checked.relative_path == f"{checked.sha256[:2]}/{checked.sha256}.{extension}"


def test_resize_keeps_aspect_and_crops_the_centre() -> None:
    # 300x200 red|blue: shorter side to 224 then centre crop keeps both halves, red left, blue right.
    pixels = pixels_of(samples.encode(samples.half_red_half_blue(), "PNG"))
    assert tuple(pixels[112, 5]) == (255, 0, 0)
    assert tuple(pixels[112, 218]) == (0, 0, 255)


def test_exif_orientation_is_applied() -> None:
    # Orientation 3 = rotated 180 degrees: blue must end up on the left.
    pixels = pixels_of(samples.with_exif_orientation(samples.half_red_half_blue(), 3))
    left, right = pixels[112, 10].astype(int), pixels[112, 213].astype(int)
    assert left[2] > 200 and left[0] < 60
    assert right[0] > 200 and right[2] < 60


@pytest.mark.parametrize("fmt", ["HEIF", "AVIF"])
def test_a_phones_orientation_is_applied(fmt: str) -> None:
    # Orientation 6 = turned 90 degrees clockwise to be shown: the red left half ends up on top.
    pixels = pixels_of(samples.with_exif_orientation(samples.half_red_half_blue(), 6, fmt))
    top, bottom = pixels[10, 112].astype(int), pixels[213, 112].astype(int)
    assert top[0] > 200 and top[2] < 60
    assert bottom[2] > 200 and bottom[0] < 60


def test_palette_with_transparency_becomes_rgb_on_white() -> None:
    image = Image.new("P", (64, 64), 0)
    image.putpalette([0, 0, 0, 255, 0, 0] + [0] * 762)
    image.paste(1, (32, 0, 64, 64))
    image.info["transparency"] = 0
    pixels = pixels_of(samples.encode(image, "PNG", transparency=0))
    assert tuple(pixels[112, 10]) == (255, 255, 255)  # the transparent half shows white
    assert tuple(pixels[112, 213]) == (255, 0, 0)


def test_rgba_becomes_rgb() -> None:
    image = Image.new("RGBA", (50, 50), (0, 255, 0, 255))
    assert tuple(pixels_of(samples.encode(image, "PNG"))[10, 10]) == (0, 255, 0)


def test_cmyk_jpeg_becomes_rgb() -> None:
    image = Image.new("CMYK", (60, 60), (0, 255, 255, 0))  # pure red in CMYK
    red = pixels_of(samples.encode(image, "JPEG"))[112, 112].astype(int)
    assert red[0] > 200 and red[1] < 60 and red[2] < 60


def test_grayscale_and_16_bit_become_rgb() -> None:
    gray = pixels_of(samples.encode(Image.new("L", (40, 40), 128), "PNG"))
    assert tuple(gray[5, 5]) == (128, 128, 128)
    deep = Image.new("I;16", (40, 40), 65535)
    white = pixels_of(samples.encode(deep, "PNG"))
    assert tuple(white[5, 5]) == (255, 255, 255)
    mid = pixels_of(samples.encode(Image.new("I;16", (40, 40), 32768), "PNG"))
    assert 120 <= mid[5, 5, 0] <= 135  # scaled, not clipped to white


def test_gif_uses_the_first_frame() -> None:
    frames = [Image.new("RGB", (40, 40), color) for color in ((255, 0, 0), (0, 0, 255))]
    data = samples.encode(frames[0], "GIF", save_all=True, append_images=frames[1:])
    assert tuple(pixels_of(data)[20, 20]) == (255, 0, 0)


def test_large_jpeg_decodes_in_draft_mode() -> None:
    data = samples.encode(Image.new("RGB", (6000, 4000), (10, 200, 10)), "JPEG", quality=70)
    pixel = pixels_of(data)[112, 112].astype(int)
    assert abs(pixel[1] - 200) < 10


def reject(
    data: bytes, status: int, *, max_bytes: int = MAX_BYTES, max_pixels: int = MAX_PIXELS, max_cost: int = MAX_COST
) -> str:
    with pytest.raises(images.ImageRejected) as caught:
        images.check(data, max_bytes, max_pixels, max_cost)
    assert caught.value.status_code == status
    return caught.value.detail


def test_empty_file_is_400() -> None:
    assert "empty" in reject(b"", 400)


def test_oversized_file_is_413() -> None:
    assert "larger" in reject(samples.photo(4), 413, max_bytes=100)


@pytest.mark.parametrize(
    "data",
    [
        b"just some text, named cat.jpg",
        b"%PDF-1.4\n%\xe2\xe3\xcf\xd3\n",
        samples.encode(Image.new("RGB", (20, 20)), "TIFF"),
        samples.encode(Image.new("RGB", (20, 20)), "ICO"),
    ],
)
def test_unsupported_formats_are_415(data: bytes) -> None:
    assert "JPEG, PNG, WebP, GIF, BMP, HEIC or AVIF" in reject(data, 415)


def test_decompression_bomb_is_400() -> None:
    assert "too large" in reject(samples.png_bomb(), 400)
    assert "too large" in reject(samples.photo(5, (2000, 1000)), 400, max_pixels=1_000_000)


@pytest.mark.parametrize("data", [samples.truncated_jpeg(), samples.corrupt_png()])
def test_truncated_or_corrupt_is_400(data: bytes) -> None:
    reject(data, 400)


@pytest.mark.parametrize("fmt", ["HEIF", "AVIF"])
def test_a_broken_heic_or_avif_is_400(fmt: str) -> None:
    data = samples.photo(6, (640, 480), fmt=fmt)
    for broken in (data[:200], data[: len(data) // 2]):  # cut in its header, cut in its data
        assert "truncated or corrupt" in reject(broken, 400)
    if fmt == "AVIF":  # libavif refuses garbled data (as a RuntimeError); libheif's decoder conceals it
        garbled = data[: len(data) // 2] + bytes(b ^ 0x5A for b in data[len(data) // 2 :])
        assert "truncated or corrupt" in reject(garbled, 400)


def test_a_header_pillow_cannot_read_is_400() -> None:
    data = bytearray(samples.encode(Image.new("RGB", (8, 8)), "BMP"))
    data[14:18] = (20).to_bytes(4, "little")  # a DIB header size no BMP variant has
    assert "truncated or corrupt" in reject(bytes(data), 400)


# ---- what is judged from the header, before decoding: scans, cost, text --------------------------------


@pytest.fixture(scope="session")
def hostile_files(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    return hostile.write_all(tmp_path_factory.getbasetemp() / "hostile")


def jpeg(image: Image.Image, **options: object) -> bytes:
    return samples.encode(image, "JPEG", **options)


def test_scans_are_counted_segment_by_segment() -> None:
    picture = Image.effect_noise((256, 192), 40).convert("RGB")
    assert images.jpeg_scans(jpeg(picture)) == 1
    progressive = jpeg(picture, progressive=True)
    assert images.jpeg_scans(progressive) == 10
    # 0xFFDA in a comment is not a scan; stray bytes between segments do not hide the scans after them.
    comment = b"\xff\xfe" + (2 + 300).to_bytes(2, "big") + b"\xff\xda" * 150
    assert images.jpeg_scans(progressive[:2] + comment + progressive[2:]) == 10
    strayed = progressive.replace(b"\xff\xda", b"junk\xff\xda")
    assert images.jpeg_scans(strayed) == 10
    assert images.jpeg_scans(hostile.scan_bomb_jpeg(repeats=500)) == images.MAX_SCANS + 1  # stops counting


def test_a_jpeg_of_absurdly_many_scans_is_refused_before_decoding(hostile_files: dict[str, Path]) -> None:
    started = time.thread_time()  # this thread's CPU, which a decode would spend; a busy machine does not stretch it
    assert "more than 100 scans" in reject(hostile_files["scan_bomb_jpeg"].read_bytes(), 400)
    assert time.thread_time() - started < 1  # decoded, it takes about 45 s


@pytest.mark.parametrize(("name", "megabytes"), [("huge_webp", 976), ("huge_png", 305), ("huge_gif", 305)])
def test_a_decode_costing_more_than_the_budget_is_refused_from_the_header(
    name: str, megabytes: int, hostile_files: dict[str, Path]
) -> None:
    started = time.thread_time()  # CPU, as above
    detail = reject(hostile_files[name].read_bytes(), 400)
    assert "7999x7999 pixels" in detail and f"would take {megabytes} MB, more than 192 MB" in detail
    assert time.thread_time() - started < 1  # decoded, each takes 0.3 to 1 GB


def animation(fmt: str, frames: int = 100, size: tuple[int, int] = (800, 600)) -> bytes:
    """`frames` frames, each different (Pillow would merge equal ones): the first red, the others blue."""
    shown = []
    for i in range(frames):
        frame = Image.new("RGB", size, (220, 20, 20) if i == 0 else (20, 20, 220))
        frame.paste((20, 200, 20), (i * 7, 0, i * 7 + 20, 20))
        shown.append(frame)
    return samples.encode(shown[0], fmt, save_all=True, append_images=shown[1:], duration=40)


@pytest.mark.parametrize("fmt", ["GIF", "WEBP", "PNG"])
def test_an_animation_costs_its_first_frame_the_only_one_decoded(fmt: str) -> None:
    # 100 frames of 800x600 were counted as 100 decoded pictures: 400 "would take 192 MB" for a 120 kB GIF.
    data = animation(fmt)
    assert getattr(Image.open(io.BytesIO(data)), "n_frames", 1) == 100
    assert [int(v) for v in pixels_of(data)[112, 112]] == pytest.approx([220, 20, 20], abs=8)


def test_a_webp_counts_what_its_decoder_holds() -> None:
    # Pillow decodes every WebP with libwebp's animation decoder: two RGBA canvases, kept from the moment the
    # file is opened, and the RGBA copy of the frame it hands over, besides Pillow's own image (measured:
    # 183 MB to load the first frame of a 12 MP WebP).
    still = samples.encode(Image.new("RGB", (640, 480), (10, 120, 10)), "WEBP")
    for data, per_pixel in ((still, 4 + 12), (animation("WEBP", 3), 4 + 4 + 12)):  # RGB; RGBA and its RGB copy
        image = images.open_image(data, MAX_PIXELS, MAX_COST)
        assert images.decode_cost(image) == image.width * image.height * per_pixel
    detail = reject(samples.encode(Image.new("RGB", (6000, 4000), (10, 120, 10)), "WEBP"), 400)
    assert "6000x4000 pixels (RGB) would take 366 MB, more than 192 MB" in detail


def webp_kinds() -> list[tuple[bytes, bytes]]:
    """Small real WebPs of every header kind, at odd sizes (the sizes are stored minus 1 in VP8L and VP8X)."""
    rgb, rgba = Image.new("RGB", (641, 479), (10, 120, 10)), Image.new("RGBA", (333, 97), (10, 120, 10, 128))
    orientation = Image.Exif()
    orientation[0x0112] = 1  # upright: metadata makes it a VP8X
    return [
        (b"VP8 ", samples.encode(rgb, "WEBP")),
        (b"VP8L", samples.encode(rgb, "WEBP", lossless=True)),
        (b"VP8L", samples.encode(rgba, "WEBP", lossless=True)),
        (b"VP8X", samples.encode(rgba, "WEBP")),  # lossy with alpha: an ALPH chunk
        (b"VP8X", samples.encode(rgb, "WEBP", exif=orientation.tobytes())),
        (b"VP8X", animation("WEBP", 3, (1001, 17))),
    ]


@pytest.mark.parametrize("index", range(6))
def test_a_webps_canvas_is_read_from_its_header_as_pillow_reads_it(index: int) -> None:
    kind, data = webp_kinds()[index]
    opened = Image.open(io.BytesIO(data))
    assert data[12:16] == kind
    assert images.webp_canvas(data) == (opened.width, opened.height, opened.mode)
    assert images.webp_canvas(data[:24]) is None  # cut short: left to Pillow
    pixels_of(data)  # still accepted


def test_huge_text_chunks_are_refused_clearly(hostile_files: dict[str, Path]) -> None:
    assert "metadata is too large" in reject(hostile_files["text_bomb_png"].read_bytes(), 400)


@pytest.mark.parametrize(
    ("size", "mode", "fmt"),
    [
        ((8000, 6000), "RGB", "JPEG"),
        ((4000, 3000), "RGB", "PNG"),
        ((4000, 3000), "RGBA", "PNG"),
        ((6000, 4000), "RGBA", "PNG"),
    ],
)
def test_the_default_budget_takes_a_48_mp_phone_photo_and_a_12_mp_png(
    size: tuple[int, int], mode: str, fmt: str
) -> None:
    data = samples.encode(Image.new(mode, size, (10, 120, 10)), fmt)
    image = images.open_image(data, MAX_PIXELS, MAX_COST)  # only the header: the budget's judgement
    assert images.decode_cost(image) <= MAX_COST
    if fmt == "JPEG":
        assert image.size == (1000, 750)  # decoded at 1/8 scale: 3 MB
        assert [int(v) for v in pixels_of(data)[112, 112]] == pytest.approx([10, 120, 10], abs=8)


@pytest.mark.parametrize(("fmt", "per_pixel"), [("HEIF", 4 + 3), ("AVIF", 4 + 4)])
def test_a_heic_or_avif_is_judged_at_its_full_size_with_the_decoders_copy(fmt: str, per_pixel: int) -> None:
    # No scaled-down decode for them, and their decoder hands Pillow a copy (RGB for HEIF, RGBA for AVIF).
    small = samples.encode(Image.new("RGB", (128, 96), (10, 120, 10)), fmt)
    assert images.decode_cost(images.open_image(small, MAX_PIXELS, MAX_COST)) == 128 * 96 * per_pixel
    # The 24 MP of an iPhone 15's default photo pass the default budget; the 48 MP of its largest do not.
    phone = images.open_image(samples.claiming_size(small, 5712, 4284), MAX_PIXELS, MAX_COST)
    assert phone.size == (5712, 4284) and images.decode_cost(phone) == 5712 * 4284 * per_pixel <= MAX_COST
    started = time.thread_time()  # CPU, as above
    detail = reject(samples.claiming_size(small, 8064, 6048), 400)
    assert f"8064x6048 pixels (RGB) would take {8064 * 6048 * per_pixel // 2**20} MB, more than 192 MB" in detail
    assert "9000x9000 pixels is more than 64000000" in reject(samples.claiming_size(small, 9000, 9000), 400)
    assert time.thread_time() - started < 1  # judged from the header


def test_a_multi_picture_jpeg_is_a_jpeg() -> None:
    pictures = [Image.new("RGB", (64, 48), color) for color in ((200, 0, 0), (0, 0, 200))]
    buffer = io.BytesIO()
    pictures[0].save(buffer, format="MPO", save_all=True, append_images=pictures[1:])
    checked = images.check(buffer.getvalue(), MAX_BYTES, MAX_PIXELS, MAX_COST)
    assert checked.extension == "jpg"
    assert np.frombuffer(checked.pixels, dtype=np.uint8)[0] > 150  # the first picture, red
