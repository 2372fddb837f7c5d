"""Images of a request, read within the serving limits: bytes, header, then pixels.

One `image` cell is base64 (optionally a `data:` URL) or raw bytes; where the server allows it
(serving.limits.file_root), the path of a file under the server's image folder. Every image is held
to `max_image_bytes`, then its header is read (PIL opens lazily: size and format, no pixels) and held
to `max_image_pixels`; the pyfunc sums the sizes against `max_request_pixels` before it decodes any
image. Only JPEG, PNG, WebP, GIF and BMP are opened. Decoding is the training path's
(`preprocess.decode_resized`: the whole image, bilinear, to S x S RGB).

A path outside the image folder, a missing file, a folder and an unreadable file all get the same
answer as a string that is not base64: a caller learns nothing about the server's other files.
"""

from __future__ import annotations

import base64
import binascii
import contextlib
import io
import os
import stat
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from labelspace.config import ServingConfig
from labelspace.data.preprocess import decode_resized
from labelspace.serving.errors import ServingError, too_large

IMAGE_COLUMN = "image"
FORMATS = ("JPEG", "PNG", "WEBP", "GIF", "BMP")
MAX_PATH_CHARS = 4096



@dataclass(frozen=True)
class EncodedImage:
    """One request image, read and measured but not decoded."""

    row: int
    data: bytes
    width: int
    height: int

    @property
    def pixels(self) -> int:
        return self.width * self.height


def image_to_base64(image: bytes | str | os.PathLike | Image.Image, fmt: str = "PNG") -> str:
    """The `image` column value for a request: base64 of encoded bytes, a file, or a PIL image."""
    if isinstance(image, Image.Image):
        buffer = io.BytesIO()
        image.save(buffer, format=fmt)
        image = buffer.getvalue()
    elif isinstance(image, (str, os.PathLike)):
        image = Path(image).read_bytes()
    return base64.b64encode(image).decode("ascii")


def read_image(value: Any, row: int, limits: ServingConfig, root: Path | None = None) -> EncodedImage:
    """The encoded bytes of one `image` cell and the size its header gives, both within the limits."""
    data = encoded_bytes(value, row, limits, root)
    width, height = header_size(data, row, limits)
    return EncodedImage(row=row, data=data, width=width, height=height)


def encoded_bytes(value: Any, row: int, limits: ServingConfig, root: Path | None = None) -> bytes:
    if isinstance(value, (bytes, bytearray)):
        data = bytes(value)
    elif not isinstance(value, str):
        raise ServingError(f"row {row}: column '{IMAGE_COLUMN}' must hold strings (base64 image bytes), "
                           f"got {type(value).__name__}", row=row)
    else:
        text = value.strip()
        data = _file_under(root, text, row, limits) if root is not None else None
        if data is None:
            data = _from_base64(text, row, limits, files=root is not None)
    if len(data) > limits.max_image_bytes:
        raise too_large(f"row {row}: the image is {len(data)} bytes, over the limit of {limits.max_image_bytes} "
                        "bytes per image", row=row)
    return data


def _not_an_image_cell(row: int, files: bool) -> ServingError:
    where = " or the path of an image file under the server's image folder" if files else ""
    return ServingError(f"row {row}: column '{IMAGE_COLUMN}' must hold base64-encoded JPEG/PNG bytes{where}", row=row)


def _from_base64(text: str, row: int, limits: ServingConfig, files: bool) -> bytes:
    if text.startswith("data:") and "," in text[:200]:
        text = text.split(",", 1)[1]
    if len(text) // 4 * 3 > limits.max_image_bytes + 3:  # before decoding it
        raise too_large(f"row {row}: the image is about {len(text) // 4 * 3} bytes, over the limit of "
                        f"{limits.max_image_bytes} bytes per image", row=row)
    try:
        return base64.b64decode(text, validate=True)
    except (binascii.Error, ValueError):
        pass
    try:  # base64 as `base64 FILE` prints it: wrapped lines
        return base64.b64decode("".join(text.split()), validate=True)
    except (binascii.Error, ValueError):
        raise _not_an_image_cell(row, files) from None


def _file_under(root: Path, text: str, row: int, limits: ServingConfig) -> bytes | None:
    """The bytes of the regular file `text` names under `root` (resolved, symbolic links followed),
    or None for anything else; nothing outside `root` is ever looked at."""
    if not text or len(text) > MAX_PATH_CHARS or "\0" in text:
        return None
    try:
        candidate = Path(text)
        path = (candidate if candidate.is_absolute() else root / candidate).resolve()
    except (OSError, RuntimeError, ValueError):
        return None
    if not path.is_relative_to(root):
        return None
    try:
        info = os.stat(path)
        if not stat.S_ISREG(info.st_mode):
            return None
        if info.st_size > limits.max_image_bytes:
            raise too_large(f"row {row}: the image file is {info.st_size} bytes, over the limit of "
                            f"{limits.max_image_bytes} bytes per image", row=row)
        with open(path, "rb") as f:
            data = f.read(limits.max_image_bytes + 1)
    except OSError:
        return None
    if len(data) > limits.max_image_bytes:  # it grew since stat
        raise too_large(f"row {row}: the image file is over the limit of {limits.max_image_bytes} bytes per image",
                        row=row)
    return data


@contextlib.contextmanager
def _no_bomb_warning():
    """PIL's decompression-bomb warning (over 89 MP) only repeats the check made here from the header,
    against the model's own budget; its error (over 179 MP) is answered as a 413."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", Image.DecompressionBombWarning)
        yield


def header_size(data: bytes, row: int, limits: ServingConfig) -> tuple[int, int]:
    """(width, height) from the image header, held to `max_image_pixels`; no pixel is decoded."""
    try:
        with _no_bomb_warning(), Image.open(io.BytesIO(data), formats=FORMATS) as im:
            width, height = im.size
    except Image.DecompressionBombError:
        raise too_large(f"row {row}: the image is over {2 * Image.MAX_IMAGE_PIXELS} pixels (a decompression bomb); "
                        f"the limit is {limits.max_image_pixels} pixels per image", row=row) from None
    except Exception:  # noqa: BLE001 - whatever PIL makes of foreign bytes, it is not an image we serve
        raise ServingError(f"row {row}: the {len(data)} bytes are not a JPEG, PNG, WebP, GIF or BMP image",
                           row=row) from None
    if width * height > limits.max_image_pixels:
        raise too_large(f"row {row}: the image is {width}x{height} = {width * height} pixels, over the limit of "
                        f"{limits.max_image_pixels} pixels per image", row=row)
    return width, height


def decode(image: EncodedImage, image_size: int) -> np.ndarray:
    """(S, S, 3) uint8 RGB of a measured image, resized exactly as the training arrays were."""
    try:
        with _no_bomb_warning():
            return decode_resized(io.BytesIO(image.data), image_size)
    except Image.DecompressionBombError:
        raise too_large(f"row {image.row}: the image is over {2 * Image.MAX_IMAGE_PIXELS} pixels",
                        row=image.row) from None
    except MemoryError:
        raise
    except Exception:  # noqa: BLE001 - truncated or corrupt pixel data is the input's fault
        raise ServingError(f"row {image.row}: the {image.width}x{image.height} image cannot be decoded "
                           "(truncated or corrupt data)", row=image.row) from None
