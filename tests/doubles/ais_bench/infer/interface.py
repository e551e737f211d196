"""Test double of ais_bench's `InferSession`, written from its two public releases.

- "new" (2024-2025, `infer/interface.py` + `interface_check.py` + `common/path_security_check.py`): the
  constructor runs `check_model_path_legality` (path characters, no symlink, owner or group, not group- or
  other-writable, readable, `.om` suffix; a ValueError as `check_path_legality` raises) and
  `check_device_range_valid` (0-255); `infer(feeds, mode, custom_sizes, out_array)`; `free_resource()`.
- "old" (2023, `infer/interface.py`): no path checks; `session.run` answers `[]` when the execute fails,
  and `infer` returns that; `finalize()` frees the session.

The "om" is a small JSON file standing in for a compiled model: {"inputs": [[name, shape]], "outputs": [[name,
shape]]}; output names are written as ATC names an ONNX model's outputs, `<op>:<index>:<onnx name>`. What the
session answers comes from `InferSession.respond(feeds) -> list of arrays` (default: no detection).
Environment, for worker processes started by tests: AIS_DOUBLE_MODE (new|old), AIS_DOUBLE_LOG (a file that
gets one JSON line per session: device_id, model_path), AIS_DOUBLE_FAIL_EXECUTE (1: every execute fails).
"""
from __future__ import annotations

import json
import os
import re
import stat

import numpy as np

PATH_WHITE_LIST_REGEX = re.compile(r"[^_A-Za-z0-9/.-]")


class TensorDesc:
    def __init__(self, name: str, shape: list[int], dtype: str = "float32"):
        self.name, self.shape, self.datatype = name, list(shape), dtype


def _check_model_path_legality(value: str) -> None:
    """interface_check.check_model_path_legality -> check_path_legality(value, READ, suffix=["om"])."""
    if not value:
        raise RuntimeError("empty model path!")
    path = os.path.abspath(value)
    if PATH_WHITE_LIST_REGEX.search(path):
        raise ValueError("The path string is illegal. Please check.")
    if not os.path.isfile(path):
        raise ValueError(f"The path:{value} is not a file.")
    st = os.stat(path)
    owned = st.st_uid == os.geteuid() or st.st_gid in os.getgroups()
    readable = os.access(os.path.realpath(path), os.R_OK) and st.st_mode & stat.S_IRUSR
    if os.path.islink(path) or not owned or st.st_mode & (stat.S_IWGRP | stat.S_IWOTH) or not readable:
        raise ValueError(f"The path:{value} is illegal. Please check the error log for more detail.")
    if os.path.splitext(path)[1] != ".om":
        raise ValueError(f"The suffix of path:{value} not in ['om']. Please check.")


def no_detections(feeds, outputs):
    return [np.zeros(shape, np.float32) for _, shape in outputs]


class _Session:
    """What both releases share; `respond(feeds, outputs)` makes the answer, `created` keeps every session."""

    respond = staticmethod(no_detections)
    created: list = []
    checks_path = False

    def __init__(self, device_id: int, model_path: str, acl_json_path: str = None, debug: bool = False,
                 loop: int = 1):
        if self.checks_path:
            _check_model_path_legality(model_path)
            if not isinstance(device_id, int) or not 0 <= device_id <= 255:
                raise ValueError(f"device:{device_id} is invalid")
        spec = json.loads(open(model_path).read())
        self.device_id, self.model_path = device_id, model_path
        self.inputs = [TensorDesc(n, s) for n, s in spec["inputs"]]
        self.outputs = [(n, s) for n, s in spec["outputs"]]
        self.output_descs = [TensorDesc(f"PartitionedCall_{n}_{i}:{i}:{n}", s)
                             for i, (n, s) in enumerate(self.outputs)]
        self.feeds, self.freed = [], False
        self.fail_execute = os.environ.get("AIS_DOUBLE_FAIL_EXECUTE") == "1"
        _Session.created.append(self)
        log = os.environ.get("AIS_DOUBLE_LOG")
        if log:
            with open(log, "a") as f:
                f.write(json.dumps({"device_id": device_id, "model_path": model_path, "pid": os.getpid()}) + "\n")

    def get_inputs(self):
        return self.inputs

    def get_outputs(self):
        return self.output_descs

    def _execute(self, feeds):
        self.feeds.append([np.array(f, copy=True) for f in feeds])
        return None if self.fail_execute else type(self).respond(feeds, self.outputs)


class NewInferSession(_Session):
    """The 2024-2025 release: path checks in the constructor, an exception on a failed execute, free_resource."""

    checks_path = True

    def infer(self, feeds, mode="static", custom_sizes=100000, out_array=True):
        if not feeds:
            raise ValueError("feeds is empty")
        out = self._execute(feeds)
        if out is None:
            raise RuntimeError("execute failed")
        return out

    def free_resource(self):
        self.freed = True


class OldInferSession(_Session):
    """The 2023 release: no path checks, `[]` from a failed execute, finalize."""

    def infer(self, feeds, mode="static", custom_sizes=100000):
        out = self._execute(feeds)
        # an empty answer, as reported of the 2023 release in the field; the aclruntime sources read throw instead
        return [] if out is None else out

    def finalize(self):
        self.freed = True


InferSession = OldInferSession if os.environ.get("AIS_DOUBLE_MODE") == "old" else NewInferSession
