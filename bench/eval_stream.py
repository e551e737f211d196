"""COCOeval streamed with the shards against COCOeval in one go, on a val2017-sized job with detector-like answers.

    .venv/bin/python bench/eval_stream.py [--images 5000] [--shard 16] [--no-pycocotools] [--cpp-accumulate]

A generated set (5000 images, about 37k boxes over 80 classes) and the sim devices' detector-like
answers (about 409k detections) are cut into shards of 16 images (what 32 devices get), fed in
file order to `evaluation.streaming.StreamingCocoEval.add` one shard at a time, then `finish()`.
Printed: each `add` (mean, p90, max, sum) against the interval at which 32 sim 310P cards deliver
shards; `finish()` after the last shard, with its sort, curves and summary; the coverage check on the
same payloads; `evaluation.coco_eval.evaluate` in one go (faster-coco-eval and pycocotools); whether all
give the same 12 numbers. `--cpp-accumulate` also times faster-coco-eval's own `COCOevalAccumulate` on
the C++ per-image results of every shard (the alternative that `finish` does not use).
"""
from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from evaluation.streaming import StreamingCocoEval  # noqa: E402
from orchestrator.generated_set import (  # noqa: E402
    cut_into_shards, detections_as_results, make_annotations, make_detections)
from evaluation.coco_eval import evaluate  # noqa: E402
from tasks.reduce import check_coverage  # noqa: E402
from tasks.streaming import frozen_heap  # noqa: E402

DEVICE_BATCH_S, DEVICE_BATCH, DEVICES = 0.95, 8, 32  # a 310P: batch 8 in 0.95 s


def timed(fn, *args):
    """(result, wall seconds, CPU seconds of this process): the CPU figure holds on a machine others load."""
    t0, c0 = time.perf_counter(), time.process_time()
    out = fn(*args)
    return out, time.perf_counter() - t0, time.process_time() - c0


def cpp_accumulate(data: dict, shards: list) -> float:
    """Seconds of faster-coco-eval's COCOevalAccumulate on the per-image C++ results of every shard, in image order."""
    import faster_coco_eval.faster_eval_api_cpp as _C
    from faster_coco_eval import COCO, COCOeval_faster

    quiet = lambda *args, **kwargs: None  # noqa: E731
    gt = COCO(data)
    gt.print_function = quiet
    per_image = {}
    for ids, res in shards:
        ev = COCOeval_faster(gt, gt.loadRes([dict(r) for r in res]), "bbox", print_function=quiet, separate_eval=True)
        ev.params.imgIds = ids
        ev.evaluate()
        block = np.empty(len(ev._evalImgs_cpp), dtype=object)
        block[:] = ev._evalImgs_cpp
        block = block.reshape(len(ev.params.catIds), len(ev.params.areaRng), -1)
        for column, image_id in enumerate(sorted(ids)):
            per_image[image_id] = block[:, :, column]
    params = COCOeval_faster(gt, None, "bbox", print_function=quiet).params
    every = np.stack([per_image[i] for i in sorted(per_image)], axis=2)  # [K, A, I], as EvaluateImages lays it out
    listed = every.ravel().tolist()
    _, wall, cpu = timed(_C.COCOevalAccumulate, params, listed)
    print(f"faster-coco-eval COCOevalAccumulate on {len(listed)} ImageEvaluation objects: {wall:.2f} s "
          f"(CPU {cpu:.2f} s)")
    return wall


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--images", type=int, default=5000)
    p.add_argument("--shard", type=int, default=16, help="images per shard (default 16, as 32 devices get)")
    p.add_argument("--no-pycocotools", action="store_true", help="skip the reference's one-go run (slow)")
    p.add_argument("--cpp-accumulate", action="store_true", help="also time faster-coco-eval's C++ accumulation")
    args = p.parse_args()
    if args.images < 1 or args.shard < 1:
        print("error: --images and --shard must be at least 1 (--images, --shard)", file=sys.stderr)
        return 2
    t0 = time.time()
    data = make_annotations(args.images, seed=0)
    results = detections_as_results(make_detections(data, seed=1))
    shards = cut_into_shards(data, results, args.shard)
    print(f"{args.images} images, {len(data['annotations'])} boxes, {len(results)} detections, {len(shards)} shards "
          f"of {args.shard} (generated in {time.time() - t0:.0f} s)", flush=True)

    ev, init_s, _ = timed(StreamingCocoEval, data)
    with frozen_heap():  # as the follower does while it follows a job
        adds = np.array([timed(ev.add, ids, res)[1:] for ids, res in shards])  # [shards, (wall, CPU)]
        _, curves_s, curves_cpu = timed(ev.curves, False)
        streamed, finish_s, finish_cpu = timed(ev.finish)
    payloads = {i: {"image_ids": ids, "unreadable": {}, "results": res} for i, (ids, res) in enumerate(shards)}
    coverage, coverage_s, coverage_cpu = timed(check_coverage, [im["id"] for im in data["images"]], payloads, payloads)
    after = adds[-1] + (finish_s, finish_cpu) + (coverage_s, coverage_cpu)
    interval = args.shard / (DEVICES * DEVICE_BATCH / DEVICE_BATCH_S)
    print(f"\nstreaming (seconds wall / CPU): init {init_s:.2f} (before the first shard)")
    print(f"  add per shard: mean {1000 * adds[:, 0].mean():.1f} / {1000 * adds[:, 1].mean():.1f} ms, p90 "
          f"{1000 * np.percentile(adds[:, 0], 90):.1f} ms, max {1000 * adds[:, 0].max():.1f} ms, sum "
          f"{adds[:, 0].sum():.2f} / {adds[:, 1].sum():.2f} s; {DEVICES} sim 310P cards deliver a shard every "
          f"{1000 * interval:.0f} ms")
    print(f"  after the last shard: its add {adds[-1, 0]:.3f} / {adds[-1, 1]:.3f} + finish() {finish_s:.3f} / "
          f"{finish_cpu:.3f} (its curves {curves_s:.3f} / {curves_cpu:.3f}) + coverage check {coverage_s:.3f} / "
          f"{coverage_cpu:.3f} = {after[0]:.3f} / {after[1]:.3f}")
    print(f"  one go through the same path (every add, then finish): {adds[:, 0].sum() + finish_s:.2f} / "
          f"{adds[:, 1].sum() + finish_cpu:.2f}; coverage ok: {coverage['ok']}")
    rows = [("streaming", streamed["stats"])]
    for evaluator in ("faster-coco-eval",) + (() if args.no_pycocotools else ("pycocotools",)):
        out, wall, cpu = timed(evaluate, data, results, evaluator)
        print(f"one go, {evaluator}: {wall:.2f} / {cpu:.2f} ({wall / after[0]:.0f}x / {cpu / after[1]:.0f}x the "
              f"streamed work after the last shard)", flush=True)
        rows.append((evaluator, out["stats"]))
    if args.cpp_accumulate:
        cpp_accumulate(data, shards)
    print("\n" + " ".join(f"{name:>6}" for name in rows[0][1]))
    for label, stats in rows:
        print(" ".join(f"{v:6.4f}" for v in stats.values()) + f"  {label}")
    print("12 numbers identical across rows:", all(s == rows[0][1] for _, s in rows))
    return 0


if __name__ == "__main__":
    sys.exit(main())
