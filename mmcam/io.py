"""Loading images from paths, PIL images, arrays and tensors into 8-bit RGB."""

from __future__ import annotations

import http.client
import io
import os
import re
import time
import urllib.error
import urllib.parse
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image, ImageOps, UnidentifiedImageError

from .errors import InputError

__all__ = ["ImageLike", "InputError", "LoadedImage", "load_image", "to_tensor", "url_path"]

ImageLike = str | os.PathLike | Image.Image | np.ndarray | torch.Tensor

URL_TIMEOUT_S = 30.0  # for the whole download of an image URL
URL_MAX_BYTES = 50 * 1024 * 1024
_SCHEME = re.compile(r"^([A-Za-z][A-Za-z0-9+.-]*)://")
_SUPPORTED = "supported: PNG, JPEG, GIF, BMP, TIFF, WebP"


@dataclass(frozen=True)
class LoadedImage:
    """An image as RGB uint8 (H, W, 3), where it came from, and what conversion happened."""

    pixels: np.ndarray
    source: str | None = None
    notes: tuple[str, ...] = field(default_factory=tuple)

    @property
    def size(self) -> tuple[int, int]:
        """(height, width) of the original image."""
        return int(self.pixels.shape[0]), int(self.pixels.shape[1])


def load_image(image: ImageLike | LoadedImage) -> LoadedImage:
    """Convert ``image`` to :class:`LoadedImage`.

    Paths and http(s) URLs (at most ``URL_MAX_BYTES``, fetched within ``URL_TIMEOUT_S``
    seconds) are decoded fully (truncated files are errors), EXIF orientation is applied, the first
    frame of an animation is used, and palette, grayscale, alpha, 16-bit and CMYK images are
    converted to RGB. Arrays may be (H, W), (H, W, 1|3|4) uint8/uint16 or float in [0, 1];
    tensors (C, H, W) or (H, W) float in [0, 1] or uint8.
    """
    if isinstance(image, LoadedImage):
        return image
    if isinstance(image, str) and _SCHEME.match(image):
        return _load_url(image)
    if isinstance(image, (str, os.PathLike)):
        return _load_path(Path(image))
    if isinstance(image, Image.Image):
        pixels, notes = _pil_to_rgb(image)
        return LoadedImage(pixels, None, notes)
    if isinstance(image, torch.Tensor):
        tensor = image.detach().cpu()
        if tensor.dim() == 3 and tensor.shape[0] in (1, 3, 4):
            tensor = tensor.permute(1, 2, 0)
        return LoadedImage(_array_to_rgb(tensor.numpy()), None, ())
    if isinstance(image, np.ndarray):
        return LoadedImage(_array_to_rgb(image), None, ())
    raise InputError(
        f"unsupported image type {type(image).__name__}; give a path, a PIL image, a NumPy array "
        "or a tensor"
    )


def _load_path(path: Path) -> LoadedImage:
    if not path.exists():
        raise InputError(f"image not found: {path}")
    if path.is_dir():
        raise InputError(f"{path} is a directory, not an image file")
    if path.stat().st_size == 0:
        raise InputError(f"{path} is an empty file, not an image")
    return _decode(path, str(path))


def _decode(data: Path | io.BytesIO, source: str, hint: str = "") -> LoadedImage:
    """Decode a file or downloaded bytes completely; ``source`` names it in errors, ``hint``
    ends the not-an-image one."""
    try:
        with Image.open(data) as opened:
            opened.load()
            pixels, notes = _pil_to_rgb(opened)
    except UnidentifiedImageError:
        raise InputError(f"{source} is not a readable image ({_SUPPORTED}){hint}") from None
    except Image.DecompressionBombError as error:
        raise InputError(f"{source} is too large to decode safely: {error}") from None
    except (OSError, SyntaxError, ValueError) as error:
        raise InputError(f"{source} could not be decoded (truncated or corrupt?): {error}") from None
    return LoadedImage(pixels, source, notes)


def url_path(source: str) -> str | None:
    """The path part of a URL, percent-decoded (``/photos/cat.jpg``), or None when ``source``
    is not a URL; file names (stems) of a URL image are taken from it."""
    if not _SCHEME.match(source):
        return None
    return urllib.parse.unquote(urllib.parse.urlsplit(source).path)


def _load_url(url: str) -> LoadedImage:
    scheme = _SCHEME.match(url).group(1).lower()
    if scheme not in ("http", "https"):
        raise InputError(f"{url}: unsupported URL scheme {scheme!r}; give an http(s) URL or a file path")
    data, content_type = _download(url, URL_TIMEOUT_S, URL_MAX_BYTES)
    if not data:
        raise InputError(f"{url} is empty, not an image")
    return _decode(io.BytesIO(data), url, f"; the server sent {content_type}" if content_type else "")


def _download(url: str, timeout: float, max_bytes: int) -> tuple[bytes, str | None]:
    """The body of ``url`` and its Content-Type, at most ``max_bytes`` long. The download gives
    up once ``timeout`` seconds have passed (checked as data arrives; no single wait for the
    server is longer than ``timeout``); every failure is one InputError line."""
    deadline = time.monotonic() + timeout
    too_large = f"{url} is larger than {max_bytes / 2**20:.3g} MB; download it and give the file"
    too_slow = f"{url} did not arrive within {timeout:g} s"
    try:
        with urllib.request.urlopen(url, timeout=timeout) as response:  # noqa: S310 (scheme checked above)
            length = response.headers.get("Content-Length")
            if length is not None and length.isdigit() and int(length) > max_bytes:
                raise InputError(too_large)
            chunks, received = [], 0
            while chunk := response.read1(min(1 << 16, max_bytes + 1 - received)):  # returns what has come
                chunks.append(chunk)
                received += len(chunk)
                if received > max_bytes:
                    raise InputError(too_large)
                if time.monotonic() > deadline:
                    raise InputError(too_slow)
            return b"".join(chunks), response.headers.get_content_type() if "Content-Type" in response.headers else None
    except InputError:
        raise
    except urllib.error.HTTPError as error:
        raise InputError(f"{url} could not be fetched: HTTP {error.code} {error.reason}") from None
    except urllib.error.URLError as error:
        if isinstance(error.reason, TimeoutError):
            raise InputError(too_slow) from None
        raise InputError(f"{url} could not be fetched: {error.reason}") from None
    except TimeoutError:
        raise InputError(too_slow) from None
    except (OSError, ValueError, http.client.HTTPException) as error:  # reset, cut short, bad URL...
        raise InputError(f"{url} could not be fetched: {error}") from None


def _pil_to_rgb(image: Image.Image) -> tuple[np.ndarray, tuple[str, ...]]:
    notes: list[str] = []
    if getattr(image, "n_frames", 1) > 1:
        image.seek(0)
        notes.append(f"animated image with {image.n_frames} frames: the first frame is explained")
    orientation = image.getexif().get(0x0112, 1)
    if orientation not in (None, 1):
        image = ImageOps.exif_transpose(image)
        notes.append(f"EXIF orientation {orientation} applied")
    if image.width < 1 or image.height < 1:
        raise InputError(f"image has no pixels ({image.width}x{image.height})")
    if image.mode in ("I;16", "I;16B", "I;16L", "I"):
        # 16-bit data on its full scale, as a uint16 array would be read (not stretched per image)
        array = np.asarray(image, dtype=np.float64)
        return _array_to_rgb(np.clip(array / 65535, 0, 1)), tuple(notes)
    if image.mode == "F":
        array = np.asarray(image, dtype=np.float64)
        return _array_to_rgb(np.clip(array / max(array.max(), 1.0), 0, 1)), tuple(notes)
    if image.mode in ("RGBA", "LA", "PA") or (image.mode == "P" and "transparency" in image.info):
        rgba = image.convert("RGBA")
        background = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        image = Image.alpha_composite(background, rgba)
        notes.append("transparency composited on white")
    return np.array(image.convert("RGB"), dtype=np.uint8), tuple(notes)


def _array_to_rgb(array: Any) -> np.ndarray:
    array = np.asarray(array)
    if array.ndim == 3 and array.shape[-1] == 1:
        array = array[..., 0]
    if array.ndim == 2:
        array = np.stack([array] * 3, axis=-1)
    if array.ndim != 3 or array.shape[-1] not in (3, 4):
        raise InputError(
            f"image array has shape {array.shape}; expected (H, W), (H, W, 3) or (H, W, 4)"
        )
    if array.shape[0] < 1 or array.shape[1] < 1:
        raise InputError(f"image has no pixels (shape {array.shape})")
    array = array[..., :3]
    if array.dtype == np.uint8:
        return np.ascontiguousarray(array)
    if array.dtype == np.uint16:
        return (array.astype(np.float64) / 65535 * 255).round().astype(np.uint8)
    if np.issubdtype(array.dtype, np.floating):
        if not np.isfinite(array).all():
            raise InputError("image array contains NaN or infinite values")
        if array.min() < 0 or array.max() > 1:
            raise InputError(
                f"float image values must lie in [0, 1], got [{array.min():.3g}, {array.max():.3g}]"
            )
        return (array * 255).round().astype(np.uint8)
    if np.issubdtype(array.dtype, np.integer):
        if array.min() < 0 or array.max() > 255:
            raise InputError("integer image values must lie in [0, 255] (or use uint16)")
        return array.astype(np.uint8)
    raise InputError(f"unsupported image dtype {array.dtype}")


def to_tensor(pixels: np.ndarray, size: tuple[int, int]) -> torch.Tensor:
    """RGB uint8 (H, W, 3) -> float (3, h, w) in [0, 1], resized (antialiased bilinear) to
    ``size`` = (h, w) without cropping, so maps can be stretched back to the original frame."""
    tensor = torch.from_numpy(np.ascontiguousarray(pixels)).permute(2, 0, 1).float() / 255
    if tuple(tensor.shape[-2:]) != tuple(size):
        tensor = torch.nn.functional.interpolate(
            tensor[None], size=tuple(size), mode="bilinear", align_corners=False, antialias=True
        )[0]
    return tensor.clamp(0, 1)
