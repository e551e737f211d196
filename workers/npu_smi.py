"""What `npu-smi` prints, parsed: the chips of `npu-smi info`, its process rows, and the `-m` chip map.

Pure functions on text (no subprocess), so the layouts Huawei's tool prints on 310, 310P (300I Pro,
300I Duo: two chips per card) and 910 hosts are tested from samples. The table lists each chip as two
rows, `| NPU  Name | Health | ...` then `| Chip  Device | Bus-Id | ...` (910B prints `| Chip |` alone,
910 `| Chip  Phy-ID |`); a name may be all digits (`310`). Processes are keyed by card (NPU ID) and
chip, never by the logical device that ACL and `/dev/davinciN` use: `npu-smi info -m` maps
(NPU ID, Chip ID) to that Chip Logic ID.
"""
from __future__ import annotations

import re
from dataclasses import dataclass

_BUS_ID = re.compile(r"^[0-9A-Fa-f]{4}:[0-9A-Fa-f]{2}:[0-9A-Fa-f]{2}\.[0-9A-Fa-f]$")
# Chips whose CANN operator library has no kernel this model needs (MODEL_SPEC B: DeformableConv2D lowers to
# DeformableOffsets, which CANN 8.1.RC1's aic-ascend310-ops-info.json does not list).
UNSUPPORTED_CHIPS = {"310": "Ascend 310 has no DeformableOffsets kernel (CANN's ascend310 operator list), "
                            "which the DCN layers need: use a 310P (300I Pro / 300I Duo)"}


@dataclass(frozen=True)
class Chip:
    """One chip row pair of `npu-smi info`; `device` is the table's Device column when it has one."""

    npu_id: int
    chip_id: int
    name: str
    device: int | None
    bus_id: str = ""


@dataclass(frozen=True)
class ChipProcess:
    """One row of the process table: a process on card `npu_id`, chip `chip_id`."""

    npu_id: int
    chip_id: int
    pid: int  # a host pid, also when npu-smi runs in a container
    name: str
    memory_mb: float | None
    pid_in_container: int | None = None  # newer tables' `Process id in container` (NA: not this container's)


def _cells(line: str) -> list[str]:
    return [c.strip() for c in line.strip().strip("|").split("|")]


def parse_chips(text: str) -> list[Chip]:
    """The chips of `npu-smi info`, in table order."""
    chips: list[Chip] = []
    header_second = ""
    pending: tuple[int, str] | None = None  # (npu id, name) of a name row waiting for its chip row
    for line in text.splitlines():
        if not line.lstrip().startswith("|"):
            continue
        cells = _cells(line)
        first = cells[0].split()
        if cells[0].startswith("Chip") and len(cells) > 1 and cells[1].startswith("Bus-Id"):
            header_second = cells[0]  # `Chip Device`, `Chip Phy-ID` or `Chip`
            continue
        if cells[0].startswith("NPU") and len(cells) > 1 and cells[1].startswith("Process"):
            break  # the process table follows the chips
        if len(cells) < 2 or not first or not first[0].isdigit():
            pending = None
            continue
        if len(first) == 2 and not _BUS_ID.match(cells[1]):  # `| 2  310P3 | OK | ...`: a name row
            pending = (int(first[0]), first[1])
        elif pending is not None and _BUS_ID.match(cells[1]):  # `| 1  1 | 0000:01:00.0 | ...`: its chip row
            device = int(first[1]) if len(first) > 1 and first[1].isdigit() and "Device" in header_second else None
            chips.append(Chip(pending[0], int(first[0]), pending[1], device, cells[1]))
            pending = None
        else:
            pending = None
    return chips


def parse_processes(text: str) -> list[ChipProcess] | None:
    """The process table's rows (`| NPU Chip | Process id | Process name | Process memory(MB) | ...`); None when
    npu-smi printed no process table (it prints one for 310/310P only on card and server boards), so that no
    row is not taken for no process."""
    rows, in_table = [], False
    for line in text.splitlines():
        if not line.lstrip().startswith("|"):
            continue
        cells = _cells(line)
        if cells[0].startswith("NPU") and len(cells) > 1 and cells[1].startswith("Process"):
            in_table = True
            continue
        if not in_table or len(cells) < 3:
            continue
        first = cells[0].split()
        if len(first) == 2 and all(t.isdigit() for t in first) and cells[1].isdigit():
            try:
                memory = float(cells[3]) if len(cells) > 3 else None
            except ValueError:
                memory = None
            in_container = cells[4] if len(cells) > 4 and cells[4].isdigit() else None
            rows.append(ChipProcess(int(first[0]), int(first[1]), int(cells[1]), cells[2], memory,
                                    int(in_container) if in_container else None))
    return rows if in_table else None


def parse_chip_map(text: str) -> dict[tuple[int, int], int]:
    """`npu-smi info -m`: (NPU ID, Chip ID) -> Chip Logic ID; rows without a logic id (the MCU) left out."""
    mapping = {}
    for line in text.splitlines():
        tokens = line.split()
        if len(tokens) >= 3 and tokens[0].isdigit() and tokens[1].isdigit() and tokens[2].isdigit():
            mapping[(int(tokens[0]), int(tokens[1]))] = int(tokens[2])
    return mapping


def logical_ids(chips: list[Chip], chip_map: dict[tuple[int, int], int] | None) -> dict[int, Chip]:
    """Logical device id -> chip: from the `-m` map when there is one, else the table's Device column,
    else the table order (what ACL numbers when nothing else says)."""
    out: dict[int, Chip] = {}
    for order, chip in enumerate(chips):
        if chip_map:
            logic = chip_map.get((chip.npu_id, chip.chip_id))
            if logic is None:
                continue
        else:
            logic = chip.device if chip.device is not None else order
        out[logic] = chip
    return out


def parse_board(text: str) -> dict[str, str]:
    """`npu-smi info -t board -i N [-c C]`: its `Key : value` lines."""
    fields = {}
    for line in text.splitlines():
        key, sep, value = line.partition(":")
        if sep and key.strip():
            fields[key.strip()] = value.strip()
    return fields


def unsupported_reason(chip_name: str) -> str | None:
    """Why this model cannot run on a chip of this name, or None when it can."""
    return UNSUPPORTED_CHIPS.get(chip_name.strip())
