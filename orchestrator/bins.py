"""The Ascend recipe's inputs from the tensor store, so Huawei's own benchmark tool can run on exactly ours.

The recipe (MODEL_SPEC.md B.1, B.6) writes one float32 CHW [3, S, S] file per image, named
`<stem>.bin` (the file name up to its first dot), and `gen_dataset_info.py bin` lists them as
`index path S S` lines; `gen_dataset_info.py jpg` lists the originals as `index path width
height` for its post-processing. We write the same from the store's entries: each .bin holds
the bytes our backends receive as that image's network input.
"""
from __future__ import annotations

import os
import sys
from pathlib import Path

from model.preprocess import ImageReadError
from tasks.store import TensorStore


def bin_name(file_name: str) -> str:
    """The recipe's name: `img_name.split('.')[0] + '.bin'`."""
    return Path(file_name).name.split(".")[0] + ".bin"


def info_paths(out_dir: str | os.PathLike) -> tuple[Path, Path]:
    """Beside the folder, like the recipe's coco2017_bin/ and coco2017_bin.info: (DIR.info, DIR_jpg.info)."""
    out = Path(out_dir)
    return out.with_name(out.name + ".info"), out.with_name(out.name + "_jpg.info")


def write_bins(images: list[dict], image_dir: str, store_root: str | None, static_size: int,
               out_dir: str | os.PathLike, progress=None) -> dict:
    """One .bin per readable image (store entry, or preprocessed now) and the two info files.

    `images` are the annotation file's {"id", "file", ...} in file order; unreadable images are
    left out of both info files and returned by id.
    """
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    store = TensorStore(store_root or None)
    names: dict[str, int] = {}
    bin_lines, jpg_lines, unreadable = [], [], {}
    for item in images:
        name = bin_name(item["file"])
        if name in names:
            raise ValueError(f"images {names[name]} and {item['id']} would both be written as {name} "
                             f"(the recipe names a .bin by the file name up to its first dot)")
        names[name] = item["id"]
        path = Path(image_dir) / item["file"]
        try:
            entry = store.load(path, "static", static_size)
        except ImageReadError as exc:
            unreadable[item["id"]] = str(exc)
            continue
        target = out / name
        tmp = target.with_name(f".{name}.{os.getpid()}.tmp")
        entry.network_input().tofile(tmp)  # float32 C order: [3, S, S] as the recipe's img.tofile
        os.replace(tmp, target)
        index = len(bin_lines)
        bin_lines.append(f"{index} {os.path.join(str(out_dir), name)} {static_size} {static_size}")
        jpg_lines.append(f"{index} {path} {entry.meta.ori_w} {entry.meta.ori_h}")
        if progress:
            progress(index + 1, len(images))
    bin_info, jpg_info = info_paths(out_dir)
    bin_info.write_text("".join(line + "\n" for line in bin_lines))
    jpg_info.write_text("".join(line + "\n" for line in jpg_lines))
    return {"written": len(bin_lines), "unreadable": unreadable, "bin_info": str(bin_info),
            "jpg_info": str(jpg_info), "store_hits": store.hits, "store_misses": store.misses}


def report_line(summary: dict, out_dir: str | os.PathLike) -> None:
    """One line on stderr; each unreadable image on its own line."""
    print(f"wrote {summary['written']} .bin files to {out_dir} ({summary['store_hits']} from the store, "
          f"{summary['store_misses']} preprocessed now), {summary['bin_info']} and {summary['jpg_info']}",
          file=sys.stderr)
    for image_id, why in summary["unreadable"].items():
        print(f"  not written, unreadable: {image_id}: {why}", file=sys.stderr)
