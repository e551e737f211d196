"""The reducer on a val2017-sized job: time after the last shard, streaming against one go, both evaluators.

    .venv/bin/python bench/reducer.py [--images 5000] [--shard 16] [--no-pycocotools]

A generated set (5000 images, about 37k boxes over 80 classes) and detections shaped like a real
detector's (83 an image, 409k in all) are written as shard results to a private Redis. Then:
  streaming: a follower has parsed every shard but the last; measured from the last write to the report;
  one go: the reducer reads and parses every result after the last shard (the reduce task's fallback);
  both with faster-coco-eval, and one go with pycocotools, the reference (same 12 numbers).
"""
from __future__ import annotations

import argparse
import json
import sys
import tempfile
import threading
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from orchestrator.cluster import RedisServer  # noqa: E402
from orchestrator.generated_set import detections_as_results, make_annotations, make_detections  # noqa: E402
from tasks.params import JobParams  # noqa: E402
from tasks.reduce import reduce_job  # noqa: E402
from tasks.shards import read_images  # noqa: E402
from tasks.state import JobState  # noqa: E402
from tasks.streaming import ResultStream, follow_job  # noqa: E402



def write_job(state: JobState, lease, job_id: str, ann: Path, results: list[dict], shard: int, coco_eval: str,
              last: bool = True) -> list[tuple[int, dict]]:
    """The job and its shard results; with `last` False the last shard's payload is returned, not written."""
    images = read_images(ann)
    shards = [images[i:i + shard] for i in range(0, len(images), shard)]
    by_image: dict[int, list] = {}
    for r in results:
        by_image.setdefault(r["image_id"], []).append(r)
    state.create(JobParams(job_id=job_id, annotation=str(ann), image_dir=str(ann.parent), backend="groundtruth",
                           batch=8, coco_eval=coco_eval), shards)
    state.set_status(job_id, "running")
    payloads = [(i, {"image_ids": [im["id"] for im in s], "unreadable": {},
                     "results": [r for im in s for r in by_image.get(im["id"], [])]}) for i, s in enumerate(shards)]
    for i, payload in payloads[:-1] if not last else payloads:
        state.write_result(job_id, i, payload, lease.fence_key, lease.fence)
    return payloads


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--images", type=int, default=5000)
    p.add_argument("--shard", type=int, default=16, help="images per shard (default 16, as 32 devices get)")
    p.add_argument("--no-pycocotools", action="store_true", help="skip the reference's one-go run (slow)")
    args = p.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        t0 = time.time()
        data = make_annotations(args.images, seed=0)
        ann = tmp / "instances.json"
        ann.write_text(json.dumps(data))
        results = detections_as_results(make_detections(data, seed=1))
        print(f"{args.images} images, {len(data['annotations'])} boxes, {len(results)} detections, shards of "
              f"{args.shard} (generated in {time.time() - t0:.0f} s)", flush=True)
        server = RedisServer(tmp / "redis").start()
        try:
            state = JobState.open(server.url)
            rows = []
            lease = state.device_lease("cpu:0", 3600, host="bench")  # the writer's fencing number, as a device's
            lease.try_acquire()
            # streaming: the follower has everything but the last shard when it arrives
            payloads = write_job(state, lease, "stream", ann, results, args.shard, "faster-coco-eval", last=False)
            stream_ready = threading.Event()
            original_poll = ResultStream.poll

            def poll(self):
                n = original_poll(self)
                if n == len(payloads) - 1:
                    stream_ready.set()
                return n
            ResultStream.poll = poll
            done = {}
            follower = threading.Thread(target=lambda: done.update(report=follow_job(state, "stream")))
            follower.start()
            stream_ready.wait()
            t_last = time.time()
            state.write_result("stream", payloads[-1][0], payloads[-1][1], lease.fence_key, lease.fence)
            follower.join()
            ResultStream.poll = original_poll
            rows.append(("streaming", "faster-coco-eval", time.time() - t_last, done["report"]))
            for evaluator in ("faster-coco-eval",) + (() if args.no_pycocotools else ("pycocotools",)):
                job = f"one-{evaluator}"
                write_job(state, lease, job, ann, results, args.shard, evaluator)
                t = time.time()
                report = reduce_job(state, job)
                rows.append(("one go", evaluator, time.time() - t, report))
        finally:
            server.stop()
    print(f"{'reducer':<10} {'evaluator':<17} {'after last shard s':>18} {'COCOeval s':>10} {'AP':>8}")
    for mode, evaluator, seconds, report in rows:
        print(f"{mode:<10} {evaluator:<17} {seconds:>18.2f} {report['ap']['seconds']:>10.2f} "
              f"{report['ap']['stats']['AP']:>8.5f}")
    stats = [r[3]["ap"]["stats"] for r in rows]
    print("12 numbers identical across rows:", all(s == stats[0] for s in stats))
    return 0


if __name__ == "__main__":
    sys.exit(main())
