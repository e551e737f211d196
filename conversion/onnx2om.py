"""`onnx2om`: the Ascend recipe's ATC step (ONNX -> om) with the soc version read from `npu-smi info`."""
from __future__ import annotations

import glob
import os
import re
import shlex
import shutil
import subprocess
import sys
from pathlib import Path

from commandline import UsageError
from model.config import PREPROCESS
from workers import npu_smi

ASCEND_ENV = "/usr/local/Ascend/ascend-toolkit/set_env.sh"
ATC_LOG_LEVELS = ("debug", "info", "warning", "error", "null")
# Standard ONNX ops that ATC has no parser for: their presence means an onnxruntime-target export.
ORT_ONLY_OPS = {"DeformConv", "NonMaxSuppression", "RoiAlign"}
# On the 310P, BatchMultiClassNonMaxSuppression has float16 kernels only (CANN's aic-ascend310p-ops-info.json) and
# DeformableConv2D computes its float32 convolution in float16 on the chip (op_proto nn_calculation_ops.h): a graph
# built to keep every float32 operator as float32 cannot be compiled as the recipe's is.
REFUSED_PRECISION_MODES = {"must_keep_origin_dtype": "the 310P's BatchMultiClassNMS kernel takes float16 only and "
                                                     "DeformableConv2D convolves float32 in float16 on the chip"}


def build_atc_command(onnx_path: str, output: str, soc: str, batch: int, size: tuple[int, int],
                      log: str = "debug", extra_inputs: dict[str, list[int]] | None = None,
                      precision_mode: str | None = None) -> list[str]:
    """The recipe's `atc` invocation (MODEL_SPEC B.7) for a static NCHW `input` of batch x 3 x H x W."""
    shapes = [f"input:{batch},3,{size[0]},{size[1]}"]
    shapes += [f"{name}:{','.join(str(d) for d in dims)}" for name, dims in (extra_inputs or {}).items()]
    cmd = [
        "atc", "--framework=5", f"--model={onnx_path}", f"--output={output}",
        "--input_format=NCHW", f"--input_shape={';'.join(shapes)}", f"--log={log}", f"--soc_version={soc}",
    ]
    if precision_mode:
        cmd.append(f"--precision_mode={precision_mode}")
    return cmd


def soc_names(text: str) -> list[str]:
    """Chip names (e.g. `310P3`) of the chips `npu-smi info` lists, in table order."""
    return [chip.name for chip in npu_smi.parse_chips(text)]


def detect_soc(runner=subprocess.run) -> str:
    """`Ascend<name>` from `npu-smi info`; one line naming what is missing otherwise."""
    tool = shutil.which("npu-smi")
    if tool is None:
        raise UsageError("no --soc given and npu-smi is not on PATH to read it: pass e.g. --soc Ascend310P3 (--soc)")
    proc = runner([tool, "info"], capture_output=True, text=True)
    if proc.returncode != 0:
        first = (proc.stderr or proc.stdout or "").strip().splitlines()[:1]
        raise UsageError(f"npu-smi info failed ({first[0] if first else f'exit {proc.returncode}'}): pass --soc (--soc)")
    names = sorted(set(soc_names(proc.stdout)))
    if not names:
        raise UsageError("npu-smi info lists no NPU with a name: pass --soc (--soc)")
    if len(names) > 1:
        raise UsageError(f"npu-smi info lists several chip kinds ({', '.join(names)}): pass one with --soc (--soc)")
    reason = npu_smi.unsupported_reason(names[0])
    if reason:
        raise UsageError(f"this host's NPUs are {names[0]}: {reason} (--soc)")
    return f"Ascend{names[0]}"


def read_onnx_inputs(path: Path) -> tuple[dict[str, list], set[str]] | None:
    """Input name -> dims (int or None when symbolic) and op types of an ONNX file; None without the onnx package."""
    try:
        import onnx
    except ImportError:
        return None
    model = onnx.load(str(path), load_external_data=False)
    inits = {i.name for i in model.graph.initializer}
    inputs = {}
    for vi in model.graph.input:
        if vi.name in inits:
            continue
        dims = [d.dim_value if d.HasField("dim_value") else None for d in vi.type.tensor_type.shape.dim]
        inputs[vi.name] = dims
    return inputs, {n.op_type for n in model.graph.node}


def plan(args) -> list[str]:
    """Check the flags against the ONNX file and build the atc command line."""
    onnx_path = Path(args.onnx)
    if not onnx_path.is_file():
        raise UsageError(f"no such ONNX file ({args.onnx})")
    batch, size = args.batch, (args.input_size, args.input_size) if args.input_size else None
    extra: dict[str, list[int]] = {}
    info = read_onnx_inputs(onnx_path)
    if info is not None:
        inputs, ops = info
        if "input" not in inputs:
            raise UsageError(f"the graph has no input named `input` (inputs: {', '.join(inputs)}) ({args.onnx})")
        if ops & ORT_ONLY_OPS:
            raise UsageError(f"the graph uses {', '.join(sorted(ops & ORT_ONLY_OPS))}, which ATC does not parse: "
                             f"export it with `pth2onnx --target ascend` ({args.onnx})")
        dims = inputs["input"]
        if len(dims) != 4:
            raise UsageError(f"`input` has rank {len(dims)}, expected 4 (N, 3, H, W) ({args.onnx})")
        if dims[0] is not None:
            if batch is not None and batch != dims[0]:
                raise UsageError(f"the graph's batch is fixed at {dims[0]}, not {batch}: "
                                 f"export it again with --batch {batch} (--batch)")
            batch = dims[0]
        if dims[2] is not None and dims[3] is not None:
            if size is not None and size != (dims[2], dims[3]):
                raise UsageError(f"the graph's input is {dims[2]}x{dims[3]}, not {size[0]}x{size[1]} (--input-size)")
            size = (dims[2], dims[3])
        if batch is None:
            raise UsageError("the batch size is not fixed in the graph: pass --batch N (--batch)")
        for name, d in inputs.items():
            if name != "input":
                extra[name] = [batch if (i == 0 and v is None) else v for i, v in enumerate(d)]
                if any(v is None for v in extra[name]):
                    raise UsageError(f"input `{name}` has a symbolic dimension ATC cannot fix ({args.onnx})")
    if batch is None:
        raise UsageError("the batch size is not fixed in the graph: pass --batch N (--batch)")
    size = size or (PREPROCESS.static_size, PREPROCESS.static_size)
    if args.precision_mode in REFUSED_PRECISION_MODES:
        raise UsageError(f"--precision-mode {args.precision_mode} cannot build this model: "
                         f"{REFUSED_PRECISION_MODES[args.precision_mode]}; leave it out (force_fp16, as the recipe) "
                         f"(--precision-mode)")
    soc = args.soc or detect_soc()
    output = args.output[:-3] if args.output.endswith(".om") else args.output
    return build_atc_command(str(onnx_path), output, soc, batch, size, args.log, extra, args.precision_mode)


def run(args) -> int:
    cmd = plan(args)
    if args.dry_run:
        print(shlex.join(cmd))
        return 0
    if shutil.which("atc") is None:
        hint = (f"run `source {ASCEND_ENV}` first" if os.path.exists(ASCEND_ENV)
                else "install the CANN toolkit (Ascend-cann-toolkit) and source its set_env.sh")
        raise UsageError(f"atc is not on PATH: {hint}; --dry-run prints the command (atc)")
    print(f"running: {shlex.join(cmd)}", file=sys.stderr)
    code = subprocess.run(cmd).returncode
    if code != 0:
        raise UsageError(f"atc failed with exit code {code}; its log says why (--log) ({args.onnx})")
    om = written_om(cmd[3].split("=", 1)[1])
    if om is None:
        raise UsageError(f"atc exited 0 but wrote no {cmd[3].split('=', 1)[1]}.om (--output)")
    print(om)
    return 0


def written_om(output: str) -> Path | None:
    """The file atc wrote for --output: `<output>.om`, or `<output>_<os>_<arch>.om` when it names the run
    environment (ATC's --host_env_os / --host_env_cpu, e.g. `xxx_linux_x86_64.om`); the newest if several."""
    base = Path(output)
    named = re.compile(re.escape(base.name) + r"(_[a-z]+_[A-Za-z0-9_]+)?\.om")
    found = [p for p in base.parent.glob(f"{glob.escape(base.name)}*.om") if named.fullmatch(p.name)]
    return max(found, key=lambda p: p.stat().st_mtime) if found else None


def register(subparsers) -> None:
    p = subparsers.add_parser(
        "onnx2om", help="compile an Ascend-target ONNX file to an om model with atc (CANN)",
        description="Run the recipe's atc command: --framework=5 --input_format=NCHW --input_shape=input:N,3,S,S.",
        epilog="example: python -m conversion onnx2om --onnx dcn_ascend_bs1.onnx --output dcn_bs1 --soc Ascend310P3",
    )
    p.add_argument("--onnx", required=True, help="ONNX file made by `pth2onnx --target ascend`")
    p.add_argument("--output", required=True, help="om path without the .om suffix atc appends (it may also "
                                                    "append _<os>_<arch>: the path it wrote is printed)")
    p.add_argument("--soc", help="soc version, e.g. Ascend310P3 (default: read from `npu-smi info`)")
    p.add_argument("--batch", type=int, help="batch size (default: the graph's fixed batch)")
    p.add_argument("--input-size", type=int, help="S of the S x S input (default: the graph's, else 1216)")
    p.add_argument("--log", default="debug", choices=ATC_LOG_LEVELS, help="atc --log level (recipe: debug)")
    p.add_argument("--precision-mode", help="atc --precision_mode (the recipe passes none: force_fp16)")
    p.add_argument("--dry-run", action="store_true", help="print the atc command instead of running it")
    p.set_defaults(func=run)
