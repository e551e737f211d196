"""The reproducibility manifest: what exactly was evaluated, with which code."""
from __future__ import annotations

import hashlib
import os
import platform
import socket
import subprocess
from functools import lru_cache
from importlib import metadata
from pathlib import Path

from tasks.params import JobParams
from tasks.store import preprocessing_version

PACKAGES = ("dcn-evaluator", "celery", "redis", "numpy", "opencv-python", "pycocotools", "onnxruntime",
            "torch", "torchvision")


def sha256_file(path: str | Path) -> str:
    """The file's sha256, read once per process while its size and mtime stay the same (a .pth model is also
    the checkpoint; every job of a sweep has the same annotation file)."""
    st = os.stat(path)
    return _sha256(str(Path(path).resolve()), st.st_size, st.st_mtime_ns)


@lru_cache(maxsize=32)
def _sha256(path: str, size: int, mtime_ns: int) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def git_commit() -> str | None:
    try:
        out = subprocess.run(["git", "rev-parse", "HEAD"], capture_output=True, text=True, timeout=5,
                             cwd=Path(__file__).resolve().parent.parent)
    except (OSError, subprocess.SubprocessError):
        out = None
    if out is not None and out.returncode == 0:
        return out.stdout.strip()
    return os.environ.get("EVALUATOR_GIT_COMMIT") or None  # an image built without .git (Dockerfile GIT_COMMIT)


def versions() -> dict[str, str | None]:
    out = {}
    for name in PACKAGES:
        try:
            out[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            out[name] = None
    return out


def build_manifest(params: JobParams, checkpoint: str | None = None) -> dict:
    """`checkpoint`: the .pth an exported model came from (a .pth model is its own checkpoint)."""
    if checkpoint is None and params.model.endswith(".pth"):
        checkpoint = params.model
    return {
        "annotation": params.annotation,
        "annotation_sha256": sha256_file(params.annotation),
        "model": params.model or None,
        "model_sha256": sha256_file(params.model) if params.model else None,
        "checkpoint": checkpoint or None,
        "checkpoint_sha256": sha256_file(checkpoint) if checkpoint else None,
        "preprocessing": preprocessing_version(),
        "git_commit": git_commit(),
        "submitted_from": socket.gethostname(),
        "python": platform.python_version(),
        "packages": versions(),
    }
