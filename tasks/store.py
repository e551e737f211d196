"""The tensor store: resized uint8 images and their meta, keyed by a fingerprint, written atomically.

The store is a cache, never the source of truth: a missing, truncated or corrupt entry is
recomputed from the image, and a store that cannot be written (a full disk, a read-only folder)
steps aside: one warning per process, its entries still read, nothing more written for a minute.
The float32 network input is built on load (normalise + pad), which gives exactly the bytes of
preprocessing in one go.
"""
from __future__ import annotations

import fcntl
import hashlib
import json
import logging
import os
import struct
import time
import zlib
from contextlib import contextmanager
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path

import numpy as np

import model.preprocess as preprocess_module
from model.config import PREPROCESS
from model.preprocess import ImageMeta, ImageReadError, load_image, resize_image, to_network_input

FORMAT_VERSION = 1
MAGIC = b"DCNSTORE"
_LEN = struct.Struct("<I")
UNWRITABLE_RETRY_S = 60.0  # a store that could not be written is tried again after this long

log = logging.getLogger("tasks.store")
_unwritable: dict[str, float] = {}  # store root -> when a write last failed (this process)


@lru_cache(maxsize=1)
def preprocessing_version() -> str:
    """Changes whenever the preprocessing code or the store format changes."""
    source = Path(preprocess_module.__file__).read_bytes()
    return hashlib.sha256(source + f"format={FORMAT_VERSION}".encode()).hexdigest()[:16]


def fingerprint(image_bytes: bytes, size_mode: str, static_size: int) -> str:
    """Store key: image content + every setting that changes the resized image or its use."""
    settings = {
        "content": hashlib.blake2b(image_bytes, digest_size=16).hexdigest(),
        "size_mode": size_mode,
        "static_size": static_size if size_mode == "static" else None,
        "mmdet_scale": PREPROCESS.mmdet_scale, "size_divisor": PREPROCESS.size_divisor,
        "mean": PREPROCESS.mean, "std": PREPROCESS.std,
        "code": preprocessing_version(),
    }
    return hashlib.sha256(json.dumps(settings, sort_keys=True).encode()).hexdigest()[:32]


@dataclass
class StoreEntry:
    """One preprocessed image; `resized` is None when only the meta was read."""

    meta: ImageMeta
    resized: np.ndarray | None

    def network_input(self) -> np.ndarray:
        """float32 [3, H, W], normalised and padded."""
        assert self.resized is not None, "entry loaded without pixels"
        return to_network_input(self.resized, self.meta)


class TensorStore:
    """A folder of entries `<root>/<key[:2]>/<key>.img`; root None disables caching."""

    def __init__(self, root: str | os.PathLike | None):
        self.root = Path(root) if root else None
        self.hits = 0
        self.misses = 0
        self.recomputed = 0  # corrupt or truncated entries replaced

    def path(self, key: str) -> Path:
        assert self.root is not None
        return self.root / key[:2] / f"{key}.img"

    def get(self, key: str, pixels: bool = True) -> StoreEntry | None:
        """The entry, or None when absent; a damaged entry is deleted and reported as absent."""
        if self.root is None:
            return None
        path = self.path(key)
        try:
            with open(path, "rb") as f:
                entry = self._read(f, key, os.fstat(f.fileno()).st_size, pixels)
        except FileNotFoundError:
            return None
        if entry is None:
            self.recomputed += 1
            try:
                path.unlink(missing_ok=True)
            except OSError:
                pass  # a read-only store: the entry stays damaged, and is recomputed each time
        return entry

    @staticmethod
    def _read(f, key: str, size: int, pixels: bool) -> StoreEntry | None:
        if f.read(len(MAGIC)) != MAGIC:
            return None
        raw_len = f.read(_LEN.size)
        if len(raw_len) != _LEN.size:
            return None
        (hlen,) = _LEN.unpack(raw_len)
        try:
            header = json.loads(f.read(hlen))
            meta = ImageMeta.from_dict(header["meta"])
            shape, nbytes = tuple(header["shape"]), int(header["nbytes"])
        except (ValueError, KeyError, TypeError):
            return None
        if header.get("key") != key or size != len(MAGIC) + _LEN.size + hlen + nbytes:
            return None
        if not pixels:
            return StoreEntry(meta, None)
        data = f.read(nbytes)
        if len(data) != nbytes or zlib.crc32(data) != header["crc32"]:
            return None
        return StoreEntry(meta, np.frombuffer(data, dtype=np.uint8).reshape(shape))

    @property
    def writable(self) -> bool:
        """False for a minute after a write to this store failed in this process."""
        failed = _unwritable.get(str(self.root))
        return self.root is not None and (failed is None or time.monotonic() - failed > UNWRITABLE_RETRY_S)

    def put(self, key: str, resized: np.ndarray, meta: ImageMeta) -> None:
        """Atomic: temp file in the same folder, fsync, os.replace; readers never see a partial entry. A write
        that fails (full disk, read-only folder) leaves the store aside, with one warning."""
        if self.root is None or not self.writable:
            return
        try:
            self._write(key, resized, meta)
        except OSError as exc:
            if str(self.root) not in _unwritable:
                log.warning("tensor store %s cannot be written (%s): it steps aside, images are preprocessed "
                            "where they are used", self.root, exc.strerror or exc)
            _unwritable[str(self.root)] = time.monotonic()

    def _write(self, key: str, resized: np.ndarray, meta: ImageMeta) -> None:
        data = np.ascontiguousarray(resized, dtype=np.uint8).tobytes()
        header = json.dumps({"key": key, "meta": meta.to_dict(), "shape": list(resized.shape),
                             "nbytes": len(data), "crc32": zlib.crc32(data)}).encode()
        path = self.path(key)
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(f".{key}.{os.getpid()}.{os.urandom(4).hex()}.tmp")
        try:
            with open(tmp, "wb") as f:
                f.write(MAGIC + _LEN.pack(len(header)) + header)
                f.write(data)
                f.flush()
                os.fsync(f.fileno())
            os.replace(tmp, path)
        finally:
            tmp.unlink(missing_ok=True)

    def load(self, image_path: str | os.PathLike, size_mode: str, static_size: int,
             pixels: bool = True) -> StoreEntry:
        """The image's entry from the store, or preprocessed now (and stored); raises ImageReadError."""
        try:
            image_bytes = Path(image_path).read_bytes()
        except OSError as exc:
            raise ImageReadError(f"cannot read image ({image_path}): {exc.strerror or exc}") from exc
        key = fingerprint(image_bytes, size_mode, static_size)
        entry = self.get(key, pixels)
        if entry is None:
            with self._claim(key):  # one process makes an entry; one that missed it meanwhile waits, then reads it
                entry = self.get(key, pixels)
                if entry is None:
                    self.misses += 1
                    resized, meta = resize_image(load_image(image_path), size_mode, static_size)
                    self.put(key, resized, meta)
                    return StoreEntry(meta, resized if pixels else None)
        self.hits += 1
        return entry

    @contextmanager
    def _claim(self, key: str):
        """An exclusive flock on `.<key>.lock` beside the entry; the kernel drops it if its holder dies. A store
        that cannot be written takes no lock: nobody would find an entry by waiting."""
        fd = self._lock_file(key) if self.root is not None and self.writable else None
        if fd is None:
            yield
            return
        try:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX)
            except OSError:
                pass  # a filesystem without locks: at worst two processes make the same entry
            yield
        finally:
            self.path(key).with_name(f".{key}.lock").unlink(missing_ok=True)  # whoever misses from now on finds
            os.close(fd)                                                      # the entry, or makes it

    def _lock_file(self, key: str) -> int | None:
        lock = self.path(key).with_name(f".{key}.lock")
        try:
            lock.parent.mkdir(parents=True, exist_ok=True)
            return os.open(lock, os.O_CREAT | os.O_RDWR, 0o644)
        except OSError:
            return None
