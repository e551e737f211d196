"""What `submit` evaluates: the user's COCO data and checkpoint, or the built-in sample when there are none."""
from __future__ import annotations

import importlib.util
from dataclasses import dataclass
from pathlib import Path

from commandline import UsageError
from orchestrator.selftest_set import write_selftest_set
from workers.backends import backend_for_model, check_spec

DEFAULT_ANNOTATIONS = Path("data/coco/annotations/instances_val2017.json")
DEFAULT_IMAGES = Path("data/coco/val2017")
CHECKPOINT_DIR = Path("checkpoints")
SAMPLE_IMAGES = 4  # the CPU model needs ~5-10 s per image: keep the sample quick on 2 cores


@dataclass(frozen=True)
class Inputs:
    annotation: str
    image_dir: str
    backend: str
    model: str
    sample: bool


def _torch_sample_possible() -> bool:
    return all(importlib.util.find_spec(m) is not None
               for m in ("torch", "model.random_checkpoint", "workers.backends.torch_backend"))


def images_beside(annotation: Path) -> Path:
    """COCO layout: annotations/instances_val2017.json -> ../val2017."""
    name = annotation.stem.split("_", 1)[-1]
    return annotation.parent.parent / name


def _backend(backend: str | None, model: str | None) -> tuple[str, str]:
    if model and not Path(model).is_file():
        raise UsageError(f"model file not found ({model})")
    try:
        spec = backend or (backend_for_model(model) if model else "")
        if spec:
            check_spec(spec, model or "")
    except ValueError as exc:
        raise UsageError(str(exc)) from exc
    return spec, str(Path(model).resolve()) if model else ""


def resolve(annotations: str | None, images: str | None, backend: str | None, model: str | None,
            sample_dir: Path) -> Inputs:
    """The user's data when given or present under data/coco; else the generated sample (AP means nothing)."""
    if annotations or DEFAULT_ANNOTATIONS.is_file():
        ann = Path(annotations) if annotations else DEFAULT_ANNOTATIONS
        if not ann.is_file():
            raise UsageError(f"annotation file not found ({ann})")
        img = Path(images) if images else (DEFAULT_IMAGES if not annotations else images_beside(ann))
        if not img.is_dir():
            raise UsageError(f"image folder not found ({img}); pass --images (--images)")
        if not backend and not model:
            found = sorted(CHECKPOINT_DIR.glob("*.pth"))
            if not found:
                raise UsageError(f"no checkpoint: pass --model or put a .pth file in {CHECKPOINT_DIR}/ (--model)")
            model = str(found[0])
        spec, model_path = _backend(backend, model)
        return Inputs(str(ann.resolve()), str(img.resolve()), spec, model_path, sample=False)
    if images:
        raise UsageError("--images needs --annotations (--annotations)")
    limit = None
    if not backend and not model:
        if _torch_sample_possible():
            from model.random_checkpoint import write_random_checkpoint  # the torch extra: only when installed
            model = str(sample_dir / "random_weights.pth")
            if not Path(model).is_file():
                sample_dir.mkdir(parents=True, exist_ok=True)
                write_random_checkpoint(model, seed=0)
            backend, limit = "torch", SAMPLE_IMAGES
        else:
            backend = "groundtruth"
    spec, model_path = _backend(backend, model)
    if spec.split(":")[0] in ("torch", "onnxruntime", "ascend"):
        limit = SAMPLE_IMAGES
    ann, img = write_selftest_set(sample_dir / (f"set{limit}" if limit else "set"), limit=limit)
    return Inputs(str(ann.resolve()), str(img.resolve()), spec, model_path, sample=True)
