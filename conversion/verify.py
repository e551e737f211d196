"""`verify`: run the checkpoint (torch) and an exported ONNX file on the same images and compare detections and AP."""
from __future__ import annotations

import json
import sys
import tempfile
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from commandline import UsageError
from evaluation.coco_eval import evaluate
from evaluation.matching import ap_ratio, match_detections

IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".bmp")


@dataclass
class ImageItem:
    path: Path
    image_id: int


@dataclass
class Totals:
    ref: int = 0
    matched: int = 0
    extra: int = 0
    max_box: float = 0.0
    max_score: float = 0.0
    torch_results: list = field(default_factory=list)
    onnx_results: list = field(default_factory=list)


def find_annotation(coco: Path) -> Path:
    """A COCO root's instances file: annotations/instances_val2017.json, else the only instances_*.json."""
    preferred = coco / "annotations" / "instances_val2017.json"
    if preferred.is_file():
        return preferred
    found = sorted((coco / "annotations").glob("instances_*.json"))
    if len(found) != 1:
        raise UsageError(f"no single annotations/instances_*.json under the COCO folder ({coco})")
    return found[0]


def coco_items(coco: Path, limit: int | None) -> tuple[list[ImageItem], dict]:
    """The first `limit` images of the annotation file (paths in their folder) and the annotation JSON."""
    ann_path = find_annotation(coco)
    data = json.loads(ann_path.read_text())
    name = ann_path.stem.split("_", 1)[-1]  # instances_val2017 -> val2017
    folder = coco / name
    if not folder.is_dir():
        raise UsageError(f"no image folder {name}/ beside annotations/ ({coco})")
    images = data["images"][:limit] if limit else data["images"]
    return [ImageItem(folder / im["file_name"], int(im["id"])) for im in images], data


def subset_annotation(data: dict, image_ids: set[int], folder: Path) -> Path:
    """An instances file restricted to the verified images, so AP is over exactly those."""
    sub = {k: v for k, v in data.items() if k not in ("images", "annotations")}
    sub["images"] = [im for im in data["images"] if int(im["id"]) in image_ids]
    sub["annotations"] = [a for a in data["annotations"] if int(a["image_id"]) in image_ids]
    path = folder / "instances_subset.json"
    path.write_text(json.dumps(sub))
    return path


def file_items(images_dir: str | None, image_files: list[str] | None, limit: int | None) -> list[ImageItem]:
    paths = [Path(p) for p in image_files or []]
    if images_dir:
        folder = Path(images_dir)
        if not folder.is_dir():
            raise UsageError(f"no such image folder ({images_dir})")
        paths += sorted(p for p in folder.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES)
    paths = paths[:limit] if limit else paths
    if not paths:
        raise UsageError("no images to verify (--coco, --images or --image)")
    return [ImageItem(p, i) for i, p in enumerate(paths)]


def onnx_session(path: str, threads: int):
    """An ONNX Runtime session for the file, its fixed batch (or None) and its input size."""
    import onnx
    import onnxruntime as ort

    from conversion.export.lowering import CUSTOM_OPS, lower_ascend_graph

    model = onnx.load(path)
    if any(n.op_type in CUSTOM_OPS for n in model.graph.node):  # an Ascend graph: run its reference
        print("Ascend graph: its custom ops run as their reference computation", file=sys.stderr)
        model = lower_ascend_graph(model)
    options = ort.SessionOptions()
    if threads:
        options.intra_op_num_threads = threads
    session = ort.InferenceSession(model.SerializeToString(), options, providers=["CPUExecutionProvider"])
    dims = next(i for i in session.get_inputs() if i.name == "input").shape
    if not (isinstance(dims[2], int) and isinstance(dims[3], int) and dims[2] == dims[3]):
        raise UsageError(f"the graph's input {dims} is not a fixed S x S canvas ({path})")
    batch = dims[0] if isinstance(dims[0], int) else None
    return session, batch, dims[2]


def batches(items: list[ImageItem], size: int):
    for i in range(0, len(items), size):
        yield items[i:i + size]


def run(args) -> int:
    import torch

    from model.checkpoint import CheckpointError, load_detector
    from model.postprocess import to_coco_results
    from model.preprocess import ImageReadError, clip_sizes, load_image, preprocess, stack_batch

    if sum(bool(x) for x in (args.coco, args.images, args.image)) != 1:
        raise UsageError("give exactly one of --coco DIR, --images DIR or --image FILE... (--coco)")
    if not Path(args.onnx).is_file():
        raise UsageError(f"no such ONNX file ({args.onnx})")
    ann_data = None
    if args.coco:
        items, ann_data = coco_items(Path(args.coco), args.limit)
    else:
        items = file_items(args.images, args.image, args.limit)
    try:
        detector = load_detector(args.checkpoint)
    except CheckpointError as exc:
        raise UsageError(str(exc)) from None
    if args.threads:
        torch.set_num_threads(args.threads)
    session, fixed_batch, size = onnx_session(args.onnx, args.threads)
    batch_size = fixed_batch or args.batch
    feeds_clip = any(i.name == "clip_hw" for i in session.get_inputs())
    totals = Totals()
    width = max(len(i.path.name) for i in items)
    print(f"{'image':<{width}}  {'matched':>9}  {'extra':>5}  {'max box diff':>12}  {'max score diff':>14}")
    for group in batches(items, batch_size):
        inputs, metas = [], []
        for item in group:
            try:
                x, meta = preprocess(load_image(item.path), "static", static_size=size)
            except ImageReadError as exc:
                raise UsageError(str(exc)) from None
            inputs.append(x)
            metas.append(meta)
        images = stack_batch(inputs, batch_size)
        clip = np.full((batch_size, 2), float(size), dtype=np.float32)
        clip[:len(metas)] = clip_sizes(metas)
        with torch.no_grad():
            ref_dets, ref_labels = (t.numpy() for t in detector(torch.from_numpy(images), torch.from_numpy(clip)))
        feeds = {"input": images} | ({"clip_hw": clip} if feeds_clip else {})
        dets, labels = session.run(["dets", "labels"], feeds)
        for b, (item, meta) in enumerate(zip(group, metas)):
            m = match_detections(ref_dets[b], ref_labels[b], dets[b], labels[b], args.box_tol, args.score_tol)
            totals.ref += m.ref_count
            totals.matched += m.matched
            totals.extra += m.extra
            totals.max_box = max(totals.max_box, m.max_box_diff)
            totals.max_score = max(totals.max_score, m.max_score_diff)
            totals.torch_results += to_coco_results(ref_dets[b], ref_labels[b], meta, item.image_id)
            totals.onnx_results += to_coco_results(dets[b], labels[b], meta, item.image_id)
            print(f"{item.path.name:<{width}}  {m.matched:>4}/{m.ref_count:<4}  {m.extra:>5}  "
                  f"{m.max_box_diff:>12.2e}  {m.max_score_diff:>14.2e}", flush=True)
    return report(args, totals, ann_data, {i.image_id for i in items})


def report(args, totals: Totals, ann_data: dict | None, image_ids: set[int]) -> int:
    """Print the totals (and AP when annotated); 0 when both criteria hold, 1 otherwise."""
    rate = totals.matched / totals.ref if totals.ref else 1.0
    extra_rate = totals.extra / totals.ref if totals.ref else float(totals.extra > 0)
    print(f"total: matched {totals.matched}/{totals.ref} ({100 * rate:.2f} %), extra {totals.extra}, "
          f"max box diff {totals.max_box:.2e} px, max score diff {totals.max_score:.2e}")
    ok = rate >= args.min_match and extra_rate <= 1 - args.min_match
    summary = {"matched": totals.matched, "reference": totals.ref, "extra": totals.extra, "match_rate": rate,
               "max_box_diff": totals.max_box, "max_score_diff": totals.max_score}
    if ann_data is not None:
        with tempfile.TemporaryDirectory() as tmp:
            ann = subset_annotation(ann_data, image_ids, Path(tmp))
            ap_torch = evaluate(str(ann), totals.torch_results)["stats"]["AP"]
            ap_onnx = evaluate(str(ann), totals.onnx_results)["stats"]["AP"]
        ratio = ap_ratio(ap_torch, ap_onnx)
        print(f"AP: torch {ap_torch:.4f}, onnx {ap_onnx:.4f}, ratio {100 * ratio:.2f} % "
              f"(needs >= {100 * args.min_ap_ratio:.1f} %)")
        ok = ok and ratio >= args.min_ap_ratio
        summary |= {"ap_torch": ap_torch, "ap_onnx": ap_onnx, "ap_ratio": ratio}
    if args.json:
        Path(args.json).write_text(json.dumps(summary | {"passed": ok}, indent=2))
    print("PASS" if ok else f"FAIL: needs >= {100 * args.min_match:.1f} % matched and <= "
          f"{100 * (1 - args.min_match):.1f} % extra" + (" and the AP ratio" if ann_data is not None else ""))
    return 0 if ok else 1


def register(subparsers) -> None:
    p = subparsers.add_parser(
        "verify", help="compare an exported ONNX file with the checkpoint on the same images",
        description="Run torch (the checkpoint) and ONNX Runtime (the ONNX file; an Ascend graph runs its "
                    "reference computation) on the same static-canvas inputs. A torch detection is matched by "
                    "an ONNX one of the same class with every corner within --box-tol px and the score within "
                    "--score-tol. Exit 1 when fewer than --min-match are matched, or the AP ratio is below "
                    "--min-ap-ratio.",
        epilog="example: python -m conversion verify --checkpoint dcn.pth --onnx dcn.onnx --coco data/coco --limit 50",
    )
    p.add_argument("--checkpoint", required=True, help="mmdet .pth checkpoint")
    p.add_argument("--onnx", required=True, help="ONNX file from pth2onnx (either target)")
    p.add_argument("--coco", help="COCO folder with annotations/instances_val2017.json and val2017/")
    p.add_argument("--images", help="a folder of images (no AP without annotations)")
    p.add_argument("--image", nargs="+", help="image files (no AP without annotations)")
    p.add_argument("--limit", type=int, help="only the first N images")
    p.add_argument("--batch", type=int, default=1, help="batch size for a dynamic-batch graph (default 1)")
    p.add_argument("--threads", type=int, default=0, help="CPU threads for torch and ONNX Runtime (0: default)")
    p.add_argument("--box-tol", type=float, default=0.05, help="corner tolerance in px (default 0.05)")
    p.add_argument("--score-tol", type=float, default=1e-4, help="score tolerance (default 1e-4)")
    p.add_argument("--min-match", type=float, default=0.999, help="required matched share (default 0.999)")
    p.add_argument("--min-ap-ratio", type=float, default=0.999, help="required AP(onnx)/AP(torch) (default 0.999)")
    p.add_argument("--json", help="also write the totals to this JSON file")
    p.set_defaults(func=run)
