"""Ascend devices as this process sees them: discovery, the ACL device id of `npu:N`, idle attestation, identity.

`npu:N` is the host's logical device (npu-smi's Device column and `-m` Chip Logic ID: npu_info_print.c prints
dcmi_get_device_logic_id there); it names the lease and the report. The driver names `/dev/davinciN` by the
physical id, the same number on hosts whose logic and physical ids coincide (all the public samples).
ACL numbers only the devices this process can see, from 0: a container given `/dev/davinci3` alone sees
one device, ACL id 0 (vllm-ascend #16256: host devices 3-7 are 0-4 in the container), and
ASCEND_RT_VISIBLE_DEVICES indexes that visible range again (CANN refuses an id outside it, gpustack #3352).
`EVALUATOR_NPU_VISIBLE` (the host numbers of the devices this process sees, in ACL order) says it
explicitly, as the compose file does; otherwise the `/dev/davinciN` nodes present tell it.
"""
from __future__ import annotations

import os
import re
from pathlib import Path

from workers import npu_smi
from workers.vendor_tools import run_tool

VISIBLE_ENV = "EVALUATOR_NPU_VISIBLE"
DEV_DIR = Path("/dev")
_NODE = re.compile(r"davinci(\d+)$")


def _int_list(text: str, what: str) -> list[int]:
    try:
        return [int(x) for x in text.replace(" ", "").split(",") if x != ""]
    except ValueError:
        raise ValueError(f"{what} must list device numbers like 0,1,2, got {text!r} ({what})") from None


def visible_nodes(dev_dir: Path | None = None) -> list[int] | None:
    """Host numbers of the `/dev/davinciN` nodes this process sees (sorted), None when there are none."""
    try:
        found = sorted(int(m.group(1)) for p in (dev_dir or DEV_DIR).iterdir() if (m := _NODE.match(p.name)))
    except OSError:
        return None
    return found or None


def visible_devices(dev_dir: Path | None = None) -> list[int] | None:
    """The host numbers this process sees, in ACL order: EVALUATOR_NPU_VISIBLE, else the device nodes."""
    if os.environ.get(VISIBLE_ENV, "").strip():
        return _int_list(os.environ[VISIBLE_ENV], VISIBLE_ENV)
    return visible_nodes(dev_dir)


def acl_device_id(index: int, dev_dir: Path | None = None) -> int:
    """The device id ACL (ais_bench's InferSession) must be given for `npu:index` in this process."""
    visible = visible_devices(dev_dir)
    acl = index
    if visible is not None:
        if index not in visible:
            seen = ", ".join(f"npu:{v}" for v in visible)
            raise ValueError(f"npu:{index} is not visible to this process (it sees {seen}): give the container "
                             f"/dev/davinci{index} or set {VISIBLE_ENV} (--device)")
        acl = visible.index(index)
    rt = os.environ.get("ASCEND_RT_VISIBLE_DEVICES", "").strip()
    if rt:
        allowed = _int_list(rt, "ASCEND_RT_VISIBLE_DEVICES")
        if acl not in allowed:
            raise ValueError(f"npu:{index} is visible as device {acl}, which ASCEND_RT_VISIBLE_DEVICES={rt} "
                             f"hides (--device)")
        acl = allowed.index(acl)
    return acl


def in_container() -> bool:
    return Path("/.dockerenv").exists() or Path("/run/.containerenv").exists()


def chip_table() -> tuple[dict[int, npu_smi.Chip], str | None]:
    """Logical id -> chip from `npu-smi info` and `-m`, and the `npu-smi info` text (None without npu-smi)."""
    info = run_tool(["npu-smi", "info"])
    if info is None:
        return {}, None
    mapping = run_tool(["npu-smi", "info", "-m"])
    return npu_smi.logical_ids(npu_smi.parse_chips(info), npu_smi.parse_chip_map(mapping or "")), info


def discover() -> tuple[list[str], dict[str, str]]:
    """(`npu:N` of every chip this model can run on, {`npu:N`: why not} for the others)."""
    chips, _ = chip_table()
    usable, refused = [], {}
    for logic in sorted(chips):
        reason = npu_smi.unsupported_reason(chips[logic].name)
        if reason:
            refused[f"npu:{logic}"] = reason
        else:
            usable.append(f"npu:{logic}")
    return usable, refused


def unsupported(index: int) -> str | None:
    """Why `npu:index` cannot run this model (its chip kind), None when it can or npu-smi does not say."""
    chip = chip_table()[0].get(index)
    return npu_smi.unsupported_reason(chip.name) if chip else None


def _visibility() -> str:
    nodes = visible_nodes()
    seen = ", ".join(f"/dev/davinci{n}" for n in nodes) if nodes else "no /dev/davinci node"
    where = "inside a container" if in_container() else "on the host"
    return f"this process runs {where} and sees {seen}"


def attest(index: int) -> dict:
    """Idle when npu-smi lists no other process on this device's card and chip (rows of other chips don't count)."""
    rule = "idle = npu-smi lists no other process on this device's card and chip"
    chips, info = chip_table()
    if info is None:
        return {"idle": None, "detail": f"npu-smi not available; {_visibility()}", "rule": rule}
    chip = chips.get(index)
    if chip is None:
        listed = ", ".join(f"npu:{i}" for i in sorted(chips)) or "none"
        return {"idle": None, "detail": f"npu-smi lists no logical device {index} (it lists {listed}); "
                                        f"{_visibility()} ({rule})", "rule": rule}
    rows = npu_smi.parse_processes(info)
    if rows is None:
        return {"idle": None, "rule": rule, "npu_id": chip.npu_id, "chip_id": chip.chip_id,
                "detail": f"npu-smi printed no process table for card {chip.npu_id} chip {chip.chip_id} "
                          f"({chip.name}); {_visibility()} ({rule})"}
    own = os.getpid()
    rows = [p for p in rows if own not in (p.pid, p.pid_in_container)]  # in a container `pid` is the host's
    mine = [p for p in rows if (p.npu_id, p.chip_id) == (chip.npu_id, chip.chip_id)]
    others = len(rows) - len(mine)
    detail = f"npu-smi: card {chip.npu_id} chip {chip.chip_id} ({chip.name}) has {len(mine)} other process(es)"
    if mine:
        detail += ": " + "; ".join(f"{p.pid} {p.name} ({p.memory_mb:g} MB)" if p.memory_mb is not None
                                   else f"{p.pid} {p.name}" for p in mine[:4])
    detail += f"; {others} on other chips of this host (not counted); {_visibility()} ({rule})"
    return {"idle": not mine, "detail": detail, "rule": rule, "npu_id": chip.npu_id, "chip_id": chip.chip_id,
            "processes": [p.__dict__ for p in mine]}


def identity(index: int) -> dict:
    """Card and chip of `npu:index` (board serial, firmware, chip name) through the `-m` map: `-i` takes the card's
    NPU ID and chip fields need `-c`."""
    out: dict = {}
    chip = chip_table()[0].get(index)
    if chip is None:
        return out
    out.update(npu_id=chip.npu_id, chip_id=chip.chip_id, chip_name=chip.name, bus_id=chip.bus_id)
    board = npu_smi.parse_board(run_tool(["npu-smi", "info", "-t", "board", "-i", str(chip.npu_id)]) or "")
    chip_board = npu_smi.parse_board(run_tool(["npu-smi", "info", "-t", "board", "-i", str(chip.npu_id),
                                               "-c", str(chip.chip_id)]) or "")
    for field in ("Serial Number", "Firmware Version", "Software Version"):
        if board.get(field):
            out[field.lower().replace(" ", "_")] = board[field]
    for field in ("Chip Name", "Chip Type", "Chip Version"):
        if chip_board.get(field):
            out[field.lower().replace(" ", "_")] = chip_board[field]
    try:
        out["acl_device_id"] = acl_device_id(index)
    except ValueError as exc:
        out["acl_device_id"] = None
        out["visibility"] = str(exc)
    return out
