"""Item images: find them (a folder named by item id, or an opted-in pickle), prove they decode, copy them.

Images are copied byte for byte, not re-encoded: the evaluation compares generated images with these
targets and histories, and a JPEG re-encode would add its own loss; later stages resize to their model's
resolution anyway, and copying keeps the stage fast. The one exception is a pickle of arrays, which has no
file bytes to copy: those are encoded once as PNG (lossless).

An image counts as usable only after Pillow has both verified and fully decoded it and its mode has an RGB
reading (:mod:`research.pmg.image_modes`, the rule every later stage reads images by), so a truncated JPEG, a
renamed text file or a CIELab TIFF is caught here and not in the middle of a training run. In a folder, only
regular files (or links to one) are read: a name that looks like an image but is a folder, a FIFO, a dangling
link or a link loop is an unreadable image, reported and counted like a file that cannot be decoded.
"""
from __future__ import annotations

import errno
import importlib
import io
import os
import pickle
import stat
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Iterable

import numpy as np
from PIL import Image, UnidentifiedImageError
from tqdm import tqdm

from research.pmg.data.report import Report, fatal
from research.pmg.image_modes import float_to_uint8, sixteen_bit_to_uint8, to_rgb

# Searched in this order when several files share an item id.
IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".webp")
_EXTENSION_OF_FORMAT = {"JPEG": ".jpg", "PNG": ".png", "WEBP": ".webp", "GIF": ".gif", "BMP": ".bmp"}
_PNG_MODES = ("1", "L", "LA", "P", "RGB", "RGBA", "I;16", "I;16B")  # what Pillow writes as PNG unchanged


@dataclass(frozen=True)
class ImageRef:
    """Where one item's image comes from: a label for messages and a way to read its bytes."""

    label: str
    read: Callable[[], bytes]


class FolderImages:
    """``<folder>/<key>.<ext>`` for ext in :data:`IMAGE_EXTENSIONS`, listed once (fast on 10^6 files).

    When several names share a key, a regular file (or a link to one) wins over anything else, then the
    earlier extension. A name that is not a readable regular file is still listed, so that reading it reports
    why (:func:`read_regular_file`) instead of calling the image missing.
    """

    def __init__(self, folder: Path):
        if not folder.is_dir():
            raise fatal(str(folder), 0, "image folder not found (set --images / data.images; default <raw>/images)")
        self.folder = folder
        self._names: dict[str, str] = {}
        best: dict[str, tuple[int, int]] = {}
        rank = {ext: i for i, ext in enumerate(IMAGE_EXTENSIONS)}
        try:
            entries = sorted(os.scandir(folder), key=lambda e: e.name)
        except OSError as exc:
            raise fatal(str(folder), 0, f"cannot list the image folder: {exc.strerror or exc}") from None
        for entry in entries:
            stem, ext = os.path.splitext(entry.name)
            ext = ext.lower()
            if ext not in rank:
                continue
            try:
                regular = entry.is_file()  # follows links: a loop or a dangling link raises or says False
            except OSError:
                regular = False
            order = (0 if regular else 1, rank[ext])
            if stem not in best or order < best[stem]:
                best[stem], self._names[stem] = order, entry.name

    def describe(self, key: str) -> str:
        return f"no {key}{{{','.join(IMAGE_EXTENSIONS)}}} in {self.folder}"

    def get(self, key: str) -> ImageRef | None:
        name = self._names.get(key)
        if name is None:
            return None
        path = self.folder / name
        return ImageRef(label=str(path), read=lambda: read_regular_file(path))


def read_regular_file(path: Path) -> bytes:
    """The bytes of ``path``, which must be a regular file (links followed); ``OSError`` otherwise.

    Opened without blocking and checked on the open descriptor, so a FIFO named like an image cannot hang
    the stage and a name swapped for a folder between listing and reading is still refused.
    """
    fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK)
    with os.fdopen(fd, "rb") as handle:
        if not stat.S_ISREG(os.fstat(fd).st_mode):  # a folder is refused by fdopen already
            raise OSError(errno.EINVAL, "not a regular file", str(path))
        return handle.read()


class PickleImages:
    """A pickle of images keyed by item id, as the official code stored posters (``image_data.pkl``).

    Accepted layouts: a dict ``{id: image}`` or a sequence of tuples whose last two entries are
    ``(id, image)``. An image is a uint8 array (H, W), (H, W, 3) or (H, W, 4) — uint16 arrays are read as
    16-bit samples, other numbers as 0..1 when their maximum is <= 1, else as 0..255 — a PIL image (modes PNG
    cannot store are read as RGB first), or encoded bytes / BytesIO.
    Only numpy arrays, PIL images, bytes and plain containers may be unpickled; anything else is refused.
    """

    def __init__(self, path: Path, allow_pickle: bool):
        if not allow_pickle:
            raise fatal(str(path), 0, "images are a pickle, which can carry code; reading one needs an explicit "
                                      "--allow-pickle (data.allow_pickle: true), for a file you trust")
        self.path = path
        try:
            with open(path, "rb") as handle:
                data = _RestrictedUnpickler(handle).load()
        except (OSError, pickle.UnpicklingError, EOFError, AttributeError, ImportError, ValueError) as exc:
            raise fatal(str(path), 0, f"cannot read the image pickle: {exc}") from None
        self._images: dict[str, Any] = {}
        if isinstance(data, dict):
            pairs: Iterable[Any] = data.items()
        elif isinstance(data, (list, tuple)):
            pairs = (entry[-2:] if isinstance(entry, (list, tuple)) and len(entry) >= 2 else (None, None)
                     for entry in data)
        else:
            raise fatal(str(path), 0, f"expected a dict or a list of (id, image) tuples, got {type(data).__name__}")
        for key, image in pairs:
            if key is None:
                raise fatal(str(path), 0, "list entries must be tuples ending with (id, image)")
            self._images.setdefault(str(key), image)

    def describe(self, key: str) -> str:
        return f"no entry {key!r} in {self.path}"

    def get(self, key: str) -> ImageRef | None:
        if key not in self._images:
            return None
        value = self._images[key]
        return ImageRef(label=f"{self.path}[{key!r}]", read=lambda: _encode(value))


def open_images(path: Path, allow_pickle: bool) -> FolderImages | PickleImages:
    """The image source at ``path``: a ``.pkl``/``.pickle`` file, otherwise a folder."""
    if path.suffix.lower() in (".pkl", ".pickle"):
        if not path.is_file():
            raise fatal(str(path), 0, "image pickle not found")
        return PickleImages(path, allow_pickle)
    return FolderImages(path)


def check_image(data: bytes) -> str:
    """Decode ``data`` completely; return the file extension of its format. Raises ``ValueError`` if unusable."""
    try:
        with Image.open(io.BytesIO(data)) as img:
            img.verify()
        with Image.open(io.BytesIO(data)) as img:
            img.load()
            to_rgb(img)  # the reading every later stage applies must exist for this mode
            fmt, (width, height) = img.format, img.size
    except UnidentifiedImageError:
        raise ValueError("not an image file in a format Pillow can decode") from None
    except (OSError, SyntaxError, ValueError, Image.DecompressionBombError) as exc:
        raise ValueError(str(exc) or type(exc).__name__) from None
    if width < 1 or height < 1:
        raise ValueError("image has no pixels")
    if fmt not in _EXTENSION_OF_FORMAT:
        raise ValueError(f"unsupported image format {fmt}")
    return _EXTENSION_OF_FORMAT[fmt]


def verify_images(source: FolderImages | PickleImages, wanted: dict[str, tuple[str, int]], report: Report,
                  progress: bool) -> dict[str, tuple[ImageRef, str]]:
    """Find and decode the image of every item in ``wanted`` (``id -> (file, line)`` where the item is defined).

    Returns ``id -> (ref, extension)`` for usable images; each missing or unreadable one is a reported
    issue. Decoding runs on a few threads (Pillow releases the GIL); results do not depend on their order.
    """
    keys = sorted(wanted)
    refs = {key: source.get(key) for key in keys}

    def check(key: str) -> tuple[str, str | None, str | None]:
        ref = refs[key]
        if ref is None:
            return key, None, None
        try:
            return key, check_image(ref.read()), None
        except OSError as exc:  # unreadable file (permissions, I/O error)
            return key, None, f"cannot read: {exc.strerror or exc}"
        except ValueError as exc:
            return key, None, str(exc)

    usable: dict[str, tuple[ImageRef, str]] = {}
    workers = max(1, min(8, os.cpu_count() or 1))
    with ThreadPoolExecutor(max_workers=workers) as pool:
        results = list(tqdm(pool.map(check, keys), total=len(keys), desc="images", unit=" img",
                            disable=None if progress else True, leave=False))
    for key, ext, error in results:
        file, line = wanted[key]
        ref = refs[key]
        if ref is None:
            report.issue(file, line, "missing_image", f"item {key}: {source.describe(key)}")
        elif ext is None:
            report.issue(file, line, "unreadable_image", f"item {key}: {ref.label}: {error}")
        else:
            usable[key] = (ref, ext)
    return usable


def _encode(value: Any) -> bytes:
    """Bytes of one pickled image: encoded bytes pass through, arrays and PIL images become PNG."""
    if isinstance(value, (bytes, bytearray)):
        return bytes(value)
    if isinstance(value, io.BytesIO):
        return value.getvalue()
    if isinstance(value, Image.Image):
        img = value if value.mode in _PNG_MODES else to_rgb(value)
    elif isinstance(value, np.ndarray):
        img = Image.fromarray(_to_uint8(value))
    else:
        raise ValueError(f"not an image: {type(value).__name__}")
    buffer = io.BytesIO()
    img.save(buffer, format="PNG")
    return buffer.getvalue()


def _to_uint8(array: np.ndarray) -> np.ndarray:
    """uint8 as is, uint16 as 16-bit samples, any other number by the float rule (:mod:`research.pmg.image_modes`)."""
    if array.ndim not in (2, 3) or (array.ndim == 3 and array.shape[2] not in (1, 3, 4)):
        raise ValueError(f"array of shape {array.shape} is not an image (H, W), (H, W, 3) or (H, W, 4)")
    if array.ndim == 3 and array.shape[2] == 1:
        array = array[:, :, 0]
    if array.dtype == np.uint8:
        return array
    if array.dtype == np.uint16:
        return sixteen_bit_to_uint8(array)
    if not np.issubdtype(array.dtype, np.number) or np.issubdtype(array.dtype, np.complexfloating):
        raise ValueError(f"array of dtype {array.dtype} is not an image")
    return float_to_uint8(array)


_SAFE_GLOBALS = {
    ("numpy.core.multiarray", "_reconstruct"), ("numpy._core.multiarray", "_reconstruct"),
    ("numpy.core.multiarray", "scalar"), ("numpy._core.multiarray", "scalar"),
    ("numpy.core.numeric", "_frombuffer"), ("numpy._core.numeric", "_frombuffer"),
    ("numpy", "ndarray"), ("numpy", "dtype"), ("_io", "BytesIO"), ("collections", "OrderedDict"),
    ("copyreg", "_reconstructor"), ("builtins", "object"), ("builtins", "bytearray"), ("PIL.Image", "Image"),
}


class _RestrictedUnpickler(pickle.Unpickler):
    """Unpickle image containers only: no other class or function can be reached from the file."""

    def find_class(self, module: str, name: str) -> Any:
        pil_image_file = module.startswith("PIL.") and module.endswith("ImagePlugin") and name.endswith("ImageFile")
        if (module, name) in _SAFE_GLOBALS or pil_image_file:
            return getattr(importlib.import_module(module), name)
        raise pickle.UnpicklingError(f"refusing to load {module}.{name}: only numpy arrays, PIL images and bytes "
                                     "are allowed in an image pickle")
