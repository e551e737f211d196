"""`python -m conversion predict`: detections of the PyTorch model for a few images, as COCO results."""
from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

from commandline import UsageError
from model.config import PREPROCESS
from model.preprocess import SIZE_MODES, ImageReadError, clip_sizes, load_image, preprocess

EXAMPLE = """\
example:
  python -m conversion predict --checkpoint model.pth --image 000000000139.jpg --out dets.json
  python -m conversion predict --checkpoint model.pth --image a.jpg --image b.jpg --size-mode static --out dets.json

image_id: the file stem as an integer when it is all digits (COCO file names), otherwise the
image's 0-based position among the --image arguments."""


def register(subparsers) -> None:
    parser = subparsers.add_parser(
        "predict", help="run the PyTorch model on images and write COCO results",
        description="Run Faster R-CNN R50-FPN-DCN (PyTorch, eager) on images; write a COCO results JSON "
                    "in original-image pixels.",
        epilog=EXAMPLE, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--checkpoint", required=True, help="mmdet .pth checkpoint")
    parser.add_argument("--image", action="append", required=True, help="image file (repeat for more)")
    parser.add_argument("--size-mode", choices=SIZE_MODES, default="mmdet",
                        help="mmdet: keep ratio into 1333x800, pad to 32 (default); static: centred S x S canvas")
    parser.add_argument("--input-size", type=int, default=PREPROCESS.static_size,
                        help=f"S of the static canvas (default {PREPROCESS.static_size})")
    parser.add_argument("--device", default="cpu", help="cpu (default) or cuda:N")
    parser.add_argument("--out", required=True, help="COCO results JSON to write")
    parser.set_defaults(func=run)


def image_id_for(path: str, index: int) -> int:
    """COCO-style id from a numeric file stem, else the position of the image on the command line."""
    stem = Path(path).stem
    return int(stem) if stem.isdigit() else index


def _device(spec: str):
    import torch

    try:
        device = torch.device(spec)
    except (RuntimeError, ValueError):
        raise UsageError(f"unknown device {spec!r}, expected cpu or cuda:N (--device)") from None
    if device.type not in ("cpu", "cuda"):
        raise UsageError(f"unsupported device {spec!r}, expected cpu or cuda:N (--device)")
    if device.type == "cuda" and not torch.cuda.is_available():
        raise UsageError(f"CUDA is not available on this machine (--device {spec})")
    return device


def run(args: argparse.Namespace) -> int:
    if args.size_mode == "static" and (args.input_size < 64 or args.input_size % 32):
        raise UsageError(f"input size must be a multiple of 32 and at least 64, got {args.input_size} (--input-size)")
    images = []
    for path in args.image:  # read every image before the slow model load, so a typo fails fast
        try:
            images.append(load_image(path))
        except ImageReadError as exc:
            raise UsageError(str(exc)) from None
    out_dir = os.path.dirname(os.path.abspath(args.out))
    if not os.path.isdir(out_dir):
        raise UsageError(f"output folder does not exist ({args.out})")
    device = _device(args.device)

    import torch

    from model.checkpoint import CheckpointError, load_detector
    from model.postprocess import to_coco_results
    try:
        detector = load_detector(args.checkpoint, device)
    except CheckpointError as exc:
        raise UsageError(str(exc)) from None

    results = []
    for index, (path, img) in enumerate(zip(args.image, images)):
        start = time.perf_counter()
        tensor, meta = preprocess(img, args.size_mode, args.input_size)
        with torch.inference_mode():
            dets, labels = detector(torch.from_numpy(tensor[None]).to(device),
                                    torch.from_numpy(clip_sizes([meta])).to(device))
        found = to_coco_results(dets[0].cpu().numpy(), labels[0].cpu().numpy(), meta, image_id_for(path, index))
        results.extend(found)
        print(f"image {index + 1}/{len(images)} {path}: {len(found)} detections "
              f"({time.perf_counter() - start:.2f} s)", file=sys.stderr)
    tmp = f"{args.out}.tmp{os.getpid()}"
    with open(tmp, "w") as f:
        json.dump(results, f)
    os.replace(tmp, args.out)
    print(f"wrote {len(results)} detections to {args.out}", file=sys.stderr)
    return 0
