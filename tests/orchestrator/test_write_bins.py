"""submit --write-bins: the recipe's .bin files hold, byte for byte, the network input our backends receive."""
from __future__ import annotations

from pathlib import Path

import pytest

from model.preprocess import load_image, preprocess
from orchestrator.__main__ import main
from orchestrator.bins import bin_name, info_paths, write_bins
from tasks.params import JobParams
from tasks.shards import plan_shards, read_images
from tasks.lease import DeviceLease
from tasks.state import JobState
from workers.backends.base import Backend, empty_outputs
from workers.inference import ShardRunner, run_shard

SIZE = 320


class RecordingBackend(Backend):
    """Keeps the bytes of every real image row it is given."""

    name = "recording"
    needs_pixels = True

    def __init__(self):
        self.seen: dict[int, bytes] = {}

    def infer(self, batch):
        for row, image_id in enumerate(batch.image_ids):
            self.seen[image_id] = batch.images[row].tobytes()
        return empty_outputs(len(batch.images))


def test_each_bin_is_the_input_a_backend_received(redis_url, selftest_set, tmp_path):
    ann, img = selftest_set
    state = JobState.open(redis_url)
    lease = DeviceLease(state.r, "cpu:0", 30.0, host="h")
    lease.try_acquire()
    images = read_images(ann)
    params = JobParams(job_id="b1", annotation=str(ann), image_dir=str(img), backend="groundtruth", batch=4,
                       size_mode="static", static_size=SIZE, store=str(tmp_path / "store"))
    (shard,) = plan_shards(images, 4, 1, "static", SIZE, shard_size=len(images))
    state.create(params, [shard])
    backend = RecordingBackend()
    run_shard(ShardRunner(state, lease), backend, params, 0, shard)
    assert len(backend.seen) == len(images)

    out = tmp_path / "coco_bin"
    summary = write_bins(images, str(img), params.store, SIZE, out)
    assert summary["written"] == len(images) and summary["store_hits"] == len(images)  # read from the store
    for im in images:
        data = (out / bin_name(im["file"])).read_bytes()
        assert len(data) == 3 * SIZE * SIZE * 4
        assert data == backend.seen[im["id"]]
        # and the recipe's formula in one go (imrescale, normalise, centre, pad after normalising)
        assert data == preprocess(load_image(Path(img) / im["file"]), "static", SIZE)[0].tobytes()

    bin_info, jpg_info = info_paths(out)
    bin_lines = bin_info.read_text().splitlines()
    assert bin_lines[0] == f"0 {out / bin_name(images[0]['file'])} {SIZE} {SIZE}"
    assert [line.split()[0] for line in bin_lines] == [str(i) for i in range(len(images))]
    assert all(Path(line.split()[1]).is_file() and line.split()[2:] == [str(SIZE)] * 2 for line in bin_lines)
    jpg_lines = jpg_info.read_text().splitlines()
    for line, im in zip(jpg_lines, images):
        index, path, w, h = line.split()
        assert Path(path).name == im["file"] and (int(w), int(h)) == (im["w"], im["h"])


def test_unreadable_images_are_left_out_and_named(selftest_set, tmp_path):
    ann, img = selftest_set
    images = read_images(ann)
    broken = tmp_path / "images"
    broken.mkdir()
    for im in images[1:]:
        (broken / im["file"]).write_bytes((Path(img) / im["file"]).read_bytes())
    summary = write_bins(images, str(broken), None, SIZE, tmp_path / "bins")
    assert summary["written"] == len(images) - 1 and list(summary["unreadable"]) == [images[0]["id"]]
    assert len(info_paths(tmp_path / "bins")[0].read_text().splitlines()) == len(images) - 1


def test_mmdet_mode_has_no_bins_one_line_error(capsys, selftest_set, tmp_path):
    ann, img = selftest_set
    assert main(["submit", "--annotations", str(ann), "--images", str(img), "--backend", "groundtruth",
                 "--size-mode", "mmdet", "--write-bins", str(tmp_path / "bins")]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and err.startswith("error: ") and err.endswith("(--write-bins)")


def test_two_images_with_one_stem_are_refused(selftest_set, tmp_path):
    ann, img = selftest_set
    images = read_images(ann)
    twins = [dict(images[0]), dict(images[1], file=images[0]["file"].split(".")[0] + ".png")]
    with pytest.raises(ValueError, match="would both be written as"):
        write_bins(twins, str(img), None, SIZE, tmp_path / "bins")
