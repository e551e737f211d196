"""`pth2onnx`: the mmdet checkpoint to an ONNX file for ONNX Runtime (standard opset 19) or for Ascend ATC."""
from __future__ import annotations

import collections
import sys
import time
from pathlib import Path

from commandline import UsageError
from model.config import PREPROCESS


def parse_batch(text: str) -> int | None:
    """`dynamic` -> None, else a positive int."""
    if text == "dynamic":
        return None
    if not text.isdigit() or int(text) < 1:
        raise UsageError(f"bad batch {text!r}: a positive number or `dynamic` (--batch)")
    return int(text)


def check_export(path: Path, target: str, model) -> str:
    """Load the file in ONNX Runtime (the Ascend graph after lowering its custom ops): a one-line summary."""
    import onnxruntime as ort

    from conversion.export.lowering import lower_ascend_graph

    options = ort.SessionOptions()
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL  # loading is the check
    if target == "ascend":
        ort.InferenceSession(lower_ascend_graph(model).SerializeToString(), options,
                             providers=["CPUExecutionProvider"])
        return "ONNX Runtime loads it once its custom ops are lowered to their reference"
    ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
    return "ONNX Runtime loads it"


def describe(model) -> str:
    """`input [1,3,1216,1216]; clip_hw [...] -> dets [...], labels [...]` and the notable operators."""
    def dims(value):
        return ",".join(str(d.dim_value or d.dim_param) for d in value.type.tensor_type.shape.dim)

    inits = {i.name for i in model.graph.initializer}
    ins = "; ".join(f"{v.name} [{dims(v)}]" for v in model.graph.input if v.name not in inits)
    outs = ", ".join(f"{v.name} [{dims(v)}]" for v in model.graph.output)
    ops = collections.Counter(n.op_type for n in model.graph.node)
    notable = ("DeformConv", "DeformableConv2D", "RoiAlign", "RoiExtractor", "NonMaxSuppression",
               "BatchMultiClassNMS")
    counted = ", ".join(f"{ops[o]} {o}" for o in notable if ops[o])
    return f"{ins} -> {outs}; {counted}; opset {model.opset_import[0].version}"


def run(args) -> int:
    from model.checkpoint import CheckpointError, load_detector

    batch = parse_batch(args.batch) if args.batch else (1 if args.target == "ascend" else None)
    if args.target == "ascend" and batch is None:
        raise UsageError("the Ascend graph needs a fixed batch: ATC compiles static shapes (--batch)")
    if args.size_mode == "mmdet" and args.target != "onnxruntime":
        raise UsageError("mmdet mode (dynamic height and width) is for --target onnxruntime: the Ascend recipe's om "
                         "is compiled for the static canvas (--size-mode)")
    if args.nms_fp32 and args.target != "ascend":
        raise UsageError("--nms-fp32 concerns the Ascend graph's BatchMultiClassNMS (--nms-fp32)")
    if args.input_size < 64 or args.input_size % 32:
        raise UsageError(f"input size {args.input_size} must be a multiple of 32, at least 64 (--input-size)")
    output = Path(args.output)
    if not output.parent.is_dir():
        raise UsageError(f"no such folder for the output ({output.parent})")
    try:
        detector = load_detector(args.checkpoint)
    except CheckpointError as exc:
        raise UsageError(str(exc)) from None

    from conversion.export.exporter import export_onnx

    start = time.perf_counter()
    shape = "any height and width (mmdet mode)" if args.size_mode == "mmdet" else f"{args.input_size}x{args.input_size}"
    print(f"exporting {args.target} graph, batch {batch or 'dynamic'}, {shape} ...", file=sys.stderr)
    model = export_onnx(detector, output, target=args.target, batch=batch, size=args.input_size,
                        nms_fp16=not args.nms_fp32, size_mode=args.size_mode)
    print(f"exported in {time.perf_counter() - start:.0f} s: {describe(model)}", file=sys.stderr)
    if not args.no_check:
        print(f"checked: {check_export(output, args.target, model)}", file=sys.stderr)
    print(output)
    return 0


def register(subparsers) -> None:
    p = subparsers.add_parser(
        "pth2onnx", help="export the checkpoint to ONNX for ONNX Runtime or for Ascend ATC",
        description="Export the detector: input [B,3,S,S] (static canvas; --size-mode mmdet: [B,3,H,W], any padded "
                    "size) -> dets [B,100,5], labels [B,100]. --target onnxruntime writes standard opset-19 ONNX "
                    "(DeformConv, RoiAlign, NonMaxSuppression) with a clip_hw [B,2] input; --target ascend writes "
                    "the graph ATC parses (DeformableConv2D, RoiExtractor, BatchMultiClassNMS fed float16; opset 11, "
                    "fixed batch, static canvas).",
        epilog="example: python -m conversion pth2onnx --checkpoint dcn.pth --output dcn.onnx --target onnxruntime\n"
               "         python -m conversion pth2onnx --checkpoint dcn.pth --output dcn_mmdet.onnx --size-mode mmdet\n"
               "         python -m conversion pth2onnx --checkpoint dcn.pth --output dcn_bs4.onnx --target ascend "
               "--batch 4",
    )
    p.add_argument("--checkpoint", required=True, help="mmdet .pth checkpoint")
    p.add_argument("--output", required=True, help="ONNX file to write")
    p.add_argument("--target", choices=("onnxruntime", "ascend"), default="onnxruntime")
    p.add_argument("--batch", help="fixed batch N, or `dynamic` (onnxruntime only; its default)")
    p.add_argument("--input-size", type=int, default=PREPROCESS.static_size,
                   help=f"S of the S x S canvas (default {PREPROCESS.static_size})")
    p.add_argument("--size-mode", choices=("static", "mmdet"), default="static",
                   help="onnxruntime: static S x S canvas (default) or mmdet (dynamic height and width: mmdet's "
                        "keep-ratio 1333x800 protocol, the official AP)")
    p.add_argument("--nms-fp32", action="store_true",
                   help="ascend: feed BatchMultiClassNMS float32 instead of float16 (the 310P kernel takes float16 "
                        "only; for comparing graphs, not for atc)")
    p.add_argument("--no-check", action="store_true", help="skip loading the result in ONNX Runtime")
    p.set_defaults(func=run)
