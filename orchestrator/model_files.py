"""A model file opened before anything starts, so a wrong one costs one line and no cluster.

A checkpoint is read with `weights_only=True` and checked against the model's architecture; an
ONNX file must keep the detection contract (inputs `input` [B,3,H,W] and optional `clip_hw`
[B,2]; outputs `dets` [B,100,5] and `labels` [B,100]) and, where its canvas is fixed, fit the
job's; an om must pass ais_bench's own path rules (workers/backends/om_file.py): the ownership rule
depends on the user a device host runs as, so it is a warning here and a refusal on the worker.
"""
from __future__ import annotations

import importlib.util
import sys

import onnxruntime as ort

from commandline import UsageError

MAX_DETS = 100
FLOAT_TYPES = ("tensor(float)", "tensor(float16)")
INDEX_TYPES = ("tensor(int64)", "tensor(int32)")


def check_model_file(backend: str, path: str, size_mode: str, static_size: int) -> None:
    """UsageError (one line naming the file and what is wrong) when the backend cannot run this model file."""
    name = backend.partition(":")[0]
    if name == "torch":
        check_checkpoint(path)
    elif name == "onnxruntime":
        check_onnx(path, size_mode, static_size)
    elif name == "ascend":
        check_om_file(path)


def check_om_file(path: str) -> None:
    """ais_bench's path rules; the ownership one only warns (the worker's user decides it, on its host)."""
    from workers.backends.om_file import path_problems

    problems = path_problems(path)
    owner = [p for p in problems if p.startswith("it is owned by")]
    refused = [p for p in problems if p not in owner]
    if refused:
        raise UsageError(f"ais_bench refuses this om: {'; '.join(refused)} ({path})")
    if owner:
        print(f"warning: a worker running as this user would refuse the om: {owner[0]} ({path})", file=sys.stderr)


def check_checkpoint(path: str) -> None:
    """The tensors read safely and matched, key by key and shape by shape, with the model's own state dict."""
    if importlib.util.find_spec("torch") is None:  # a submit host without the torch extra; the worker checks
        print(f"warning: torch is not installed here, so the checkpoint is first opened by the worker ({path})",
              file=sys.stderr)
        return
    import torch  # the torch extra: imported only for a checkpoint

    from model.checkpoint import CheckpointError, check_state_dict, read_state_dict, to_model_keys
    from model.config import MODEL
    from model.detector import Detector

    try:
        state_dict = to_model_keys(read_state_dict(path))
        with torch.device("meta"):  # the expected names and shapes, no memory and no initialisation
            expected = Detector(MODEL).state_dict()
        check_state_dict(state_dict, expected, path)
    except CheckpointError as exc:
        raise UsageError(str(exc)) from None


def check_onnx(path: str, size_mode: str, static_size: int) -> None:
    """The graph opens in ONNX Runtime and its inputs and outputs keep the detection contract."""
    options = ort.SessionOptions()
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL  # only its signature is read
    options.log_severity_level = 3
    try:
        session = ort.InferenceSession(path, options, providers=["CPUExecutionProvider"])
    except Exception as exc:  # not protobuf, a truncated file, an operator ONNX Runtime lacks
        reason = (str(exc).strip().splitlines() or [type(exc).__name__])[0]
        raise UsageError(f"ONNX Runtime cannot open the model: {reason[:200]} ({path})") from None
    inputs = {i.name: i for i in session.get_inputs()}
    outputs = {o.name: o for o in session.get_outputs()}
    problems = contract_problems(inputs, outputs)
    if not problems and size_mode == "static":
        h, w = inputs["input"].shape[2:]
        if isinstance(h, int) and isinstance(w, int) and (h, w) != (static_size, static_size):
            problems.append(f"its input is fixed at {h}x{w}, the job's canvas is {static_size}x{static_size} "
                            f"(--static-size {h})")
    elif not problems and size_mode == "mmdet" and all(isinstance(d, int) for d in inputs["input"].shape[2:]):
        problems.append("its input height and width are fixed, mmdet mode needs them dynamic "
                        "(pth2onnx --size-mode mmdet)")
    if problems:
        raise UsageError(f"the ONNX model does not keep the detection contract: {'; '.join(problems)} ({path})")


def contract_problems(inputs: dict, outputs: dict) -> list[str]:
    """What differs from inputs `input` [B,3,H,W] (+ `clip_hw` [B,2]) and outputs `dets` [B,100,5], `labels`
    [B,100], in words (ONNX Runtime's NodeArg: name, shape with ints or symbols, type)."""
    problems = []
    if "input" not in inputs:
        problems.append(f"no input named `input` (inputs: {', '.join(inputs) or 'none'})")
    elif not _fits(inputs["input"], [None, 3, None, None], FLOAT_TYPES):
        problems.append(f"`input` is {_show(inputs['input'])}, expected float [B,3,H,W]")
    if "clip_hw" in inputs and not _fits(inputs["clip_hw"], [None, 2], FLOAT_TYPES):
        problems.append(f"`clip_hw` is {_show(inputs['clip_hw'])}, expected float [B,2]")
    extra = [name for name in inputs if name not in ("input", "clip_hw")]
    if extra:
        problems.append(f"inputs other than `input` and `clip_hw`: {', '.join(extra)}")
    for name, dims, types, kind in (("dets", [None, MAX_DETS, 5], FLOAT_TYPES, "float"),
                                    ("labels", [None, MAX_DETS], INDEX_TYPES, "integer")):
        if name not in outputs:
            problems.append(f"no output named `{name}` (outputs: {', '.join(outputs) or 'none'})")
        elif not _fits(outputs[name], dims, types):
            shown = ",".join("B" if d is None else str(d) for d in dims)
            problems.append(f"`{name}` is {_show(outputs[name])}, expected {kind} [{shown}]")
    return problems


def _fits(arg, dims: list[int | None], types: tuple[str, ...]) -> bool:
    """Rank, the fixed sizes where `dims` names one (a symbolic size passes), and the element type."""
    shape = arg.shape or []
    return (arg.type in types and len(shape) == len(dims)
            and all(want is None or not isinstance(got, int) or got == want for got, want in zip(shape, dims)))


def _show(arg) -> str:
    return f"{arg.type.removeprefix('tensor(').removesuffix(')')} [{','.join(str(d) for d in arg.shape or [])}]"
