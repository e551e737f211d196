"""`submit`: bad input gets one line and exit 2; jobs on a running cluster (--broker) and on the embedded one."""
from __future__ import annotations

import json
import shutil
from pathlib import Path

import cv2
import numpy as np
import pytest

from real_processes import run_cli, wait_for
from orchestrator.__main__ import main
from tasks.state import JobState


def one_line_error(capsys, argv, *fragments):
    assert main(argv) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and err.startswith("error: "), err
    for fragment in fragments:
        assert fragment in err, err
    return err


def test_batch_zero_is_a_one_line_error_from_the_real_command():
    out = run_cli("submit", "--batch", "0", timeout_s=60)
    assert out.returncode == 2
    assert out.stderr.strip() == "error: --batch must be at least 1, got 0 (--batch)"


def test_missing_annotation_file_names_the_file(capsys, tmp_path):
    one_line_error(capsys, ["submit", "--annotations", str(tmp_path / "nope.json")], "annotation file not found",
                   str(tmp_path / "nope.json"))


def test_missing_image_folder_and_model_are_named(capsys, selftest_set, tmp_path):
    ann, _ = selftest_set
    one_line_error(capsys, ["submit", "--annotations", str(ann), "--images", str(tmp_path / "none")],
                   "image folder not found", str(tmp_path / "none"))
    one_line_error(capsys, ["submit", "--annotations", str(ann), "--images", str(tmp_path),
                            "--model", str(tmp_path / "m.pth")], "model file not found", "m.pth")


def test_other_bad_flags_are_named(capsys, selftest_set, tmp_path):
    ann, img = selftest_set
    base = ["submit", "--annotations", str(ann), "--images", str(img)]
    one_line_error(capsys, base + ["--backend", "warp"], "unknown backend", "(--backend)")
    one_line_error(capsys, base + ["--backend", "onnxruntime"], "(--model)")
    one_line_error(capsys, base + ["--backend", "groundtruth", "--devices", "gpu0"], "(--devices)")
    one_line_error(capsys, ["selftest", "--batch", "4", "0"], "(--batch)")
    bad = tmp_path / "bad.json"
    bad.write_text("{not json")
    one_line_error(capsys, ["submit", "--annotations", str(bad), "--images", str(img), "--backend", "groundtruth"],
                   "not a COCO", "bad.json")


def test_an_unknown_precision_is_a_one_line_error_before_anything_starts(capsys, selftest_set, tmp_path):
    ann, img = selftest_set
    runs = tmp_path / "runs"
    # groundtruth ignores the precision: without the check this would run a whole embedded job
    one_line_error(capsys, ["submit", "--annotations", str(ann), "--images", str(img), "--backend", "groundtruth",
                            "--precision", "fp8", "--run-dir", str(runs)],
                   "unknown precision 'fp8': choose from fp32, fp16", "(--precision)")
    assert not runs.exists()  # no run folder, no embedded cluster


def write_boxes_set(folder: Path, n: int):
    """n small images with one box each (COCO format)."""
    (folder / "images").mkdir(parents=True)
    images, anns = [], []
    for i in range(n):
        image_id = 1000 + 3 * i
        cv2.imwrite(str(folder / "images" / f"{image_id}.jpg"), np.full((48, 64, 3), i, dtype=np.uint8))
        images.append({"id": image_id, "file_name": f"{image_id}.jpg", "width": 64, "height": 48})
        anns.append({"id": i + 1, "image_id": image_id, "category_id": 18, "bbox": [4, 4, 30 + i % 20, 20],
                     "area": 600.0, "iscrowd": 0})
    ann = folder / "annotations.json"
    ann.write_text(json.dumps({"images": images, "annotations": anns, "categories": [{"id": 18, "name": "dog"}]}))
    return ann, folder / "images"


def submit_to(cluster, tmp_path, ann, img, *extra):
    out = run_cli("submit", "--broker", cluster["url"], "--annotations", str(ann), "--images", str(img),
                  "--run-dir", str(tmp_path / "runs"), "--store", str(tmp_path / "store"), "--timeout", "240",
                  *extra)
    (report_path,) = (tmp_path / "runs").glob("*/report.json")
    return out, json.loads(report_path.read_text())


@pytest.mark.slow
def test_two_sim_devices_share_shards_and_report_the_simulated_rate(shared_cluster, tmp_path):
    ann, img = write_boxes_set(tmp_path / "set", 64)
    out, report = submit_to(shared_cluster, tmp_path, ann, img, "--backend", "sim:113ms", "--batch", "4",
                            "--shard-size", "8", "--size-mode", "static", "--static-size", "320", "--warmup", "1")
    assert out.returncode == 0, out.stderr
    devices = report["metrics"]["devices"]
    assert len(devices) == 2 and all(len(d["shards"]) >= 2 for d in devices.values())
    assert sum(d["images"] for d in devices.values()) == 64
    expected = 4 / 0.113
    for name, d in devices.items():
        print(f"\n{name}: {d['fps']:.2f} FPS measured, {expected:.2f} expected, p50 {d['latency_ms']['p50']:.1f} ms")
        assert abs(d["fps"] - expected) / expected < 0.05
    assert report["ap"]["stats"]["AP"] == 1.0 and report["coverage"]["ok"]
    assert "device FPS" in out.stdout and "p99 ms" in out.stdout and "end-to-end FPS" in out.stdout


@pytest.mark.slow
def test_listed_but_absent_or_unreadable_images_are_reported_and_the_job_completes(shared_cluster, tmp_path,
                                                                                   selftest_set):
    ann, img = selftest_set
    broken = tmp_path / "images"
    shutil.copytree(img, broken)
    (broken / "000000000802.png").write_bytes(b"\x89PNG not really")
    (broken / "000000000872.jpg").unlink()
    out, report = submit_to(shared_cluster, tmp_path, ann, broken, "--backend", "groundtruth", "--batch", "4")
    assert out.returncode == 0, out.stderr
    assert report["status"] == "done" and report["errors"] == []
    assert set(report["coverage"]["unreadable"]) == {"802", "872"}
    assert "unreadable images (2)" in out.stdout
    assert "000000000802.png" in out.stdout and "000000000872.jpg" in out.stdout
    assert report["ap"]["stats"]["AP"] < 1.0  # their objects count as missed, never dropped


@pytest.mark.slow
def test_onnx_model_file_picks_the_onnxruntime_backend_and_fp16_on_cpu_fails_the_job(shared_cluster, tmp_path,
                                                                                    selftest_set, tiny_onnx):
    ann, img = selftest_set
    state = JobState.open(shared_cluster["url"])
    known = set(state.job_ids())
    # fp16 through submit on the cluster's cpu devices: the job fails with the backend's reason, nothing is counted
    fp16 = run_cli("submit", "--broker", shared_cluster["url"], "--annotations", str(ann), "--images", str(img),
                   "--model", str(tiny_onnx), "--precision", "fp16", "--batch", "4", "--size-mode", "mmdet",
                   "--run-dir", str(tmp_path / "fp16"), "--timeout", "120")
    assert fp16.returncode == 1, fp16.stderr[-2000:]
    (failed,) = set(state.job_ids()) - known
    reason = "fp16 needs a GPU; onnxruntime runs fp32 on cpu (--precision)"
    assert f"error: job {failed} failed: backend onnxruntime cannot run on" in fp16.stderr and reason in fp16.stderr
    assert state.status(failed) == "failed" and state.params(failed).precision == "fp16"
    assert state.result_count(failed) == 0 and not list((tmp_path / "fp16").glob("*/report.json"))
    # the same workers then run it in fp32, the precision named on the command line
    out, report = submit_to(shared_cluster, tmp_path, ann, img, "--model", str(tiny_onnx), "--batch", "4",
                            "--size-mode", "mmdet", "--precision", "fp32")
    assert out.returncode == 0, out.stderr
    assert report["params"]["backend"] == "onnxruntime" and report["coverage"]["ok"]
    assert report["params"]["precision"] == "fp32" and report["workers"]
    assert {(w["backend"]["backend"], w["backend"]["precision"]) for w in report["workers"]} == {("onnxruntime",
                                                                                                 "fp32")}
    (results_path,) = (tmp_path / "runs").glob("*/results.json")
    results = json.loads(results_path.read_text())
    assert len(results) == report["coverage"]["expected"] and {r["category_id"] for r in results} == {3}
    assert report["manifest"]["model_sha256"] and report["manifest"]["annotation_sha256"]


@pytest.mark.slow
def test_submit_exits_1_on_a_coverage_error(shared_cluster, tmp_path):
    """An annotation file that lists one image twice (two sets merged by hand): every copy is answered, the
    reducer's count finds the id twice, the job fails and submit exits 1 with the report saying why."""
    ann, img = write_boxes_set(tmp_path / "set", 8)
    data = json.loads(ann.read_text())
    twice = data["images"][3]
    data["images"].append(dict(twice))
    ann.write_text(json.dumps(data))
    out, report = submit_to(shared_cluster, tmp_path, ann, img, "--backend", "groundtruth", "--batch", "2",
                            "--static-size", "320")
    assert out.returncode == 1, out.stderr[-2000:]
    line = f"duplicated image ids (1): {twice['id']}"
    assert report["status"] == "failed" and report["errors"] == [line]
    coverage = report["coverage"]
    assert not coverage["ok"] and coverage["duplicated"] == [twice["id"]] and coverage["missing"] == []
    assert (coverage["expected"], coverage["counted"]) == (9, 9)
    assert line in out.stdout and "status failed" in out.stdout


STALL_S = 4.0  # long enough for the second copy to be taken, run and written while the first sleeps


def in_flight(state, job, device):
    """The shard `device` runs for `job` now (its lease record's {"job", "shard", ...}); None when it runs none."""
    for record in state.leases.records():
        shard = record.get("shard")
        if record["device"] == device and shard and shard["job"] == job:
            return shard
    return None


@pytest.mark.slow
def test_a_second_copy_delivered_while_the_first_runs_is_written_once_and_a_deleted_result_is_named(
        shared_cluster, tmp_path, processes):
    ann, img = write_boxes_set(tmp_path / "set", 24)
    url = shared_cluster["url"]
    state = JobState.open(url)
    job_flags = ["--batch", "2", "--shard-size", "2", "--static-size", "320"]  # one batch a shard: each copy writes
    out, undisturbed = submit_to(shared_cluster, tmp_path / "undisturbed", ann, img,
                                 "--backend", "sim:100ms,answers=detector", *job_flags)
    assert out.returncode == 0, out.stderr

    known = set(state.job_ids())
    # cpu:0's first call of the job sleeps STALL_S more: the first copy of its first shard is held there
    submit = processes.spawn("submit", ["-m", "orchestrator", "submit", "--broker", url, "--annotations", str(ann),
                                        "--images", str(img), "--backend",
                                        f"sim:100ms,answers=detector,stall={STALL_S:g}s@cpu:0#0", *job_flags,
                                        "--run-dir", str(tmp_path / "runs")], url)
    job = wait_for(lambda: set(state.job_ids()) - known, 60, what="the job").pop()
    shard = int(wait_for(lambda: in_flight(state, job, "cpu:0"), 60, poll_s=0.01, what="cpu:0's first shard")["shard"])
    # the test is the one redelivery of this shard: the straggler rule, which also gives a shard once, stays out
    assert state.mark_reissued(job, shard, {"from": "cpu:0", "why": "delivered again by the test"})
    state.tasks.infer(job, shard, 2, redelivered_from="test")
    assert submit.wait(120) == 0, processes.log(submit)[-2000:]
    # both outcomes: the second copy's write, then the first copy's write refused by HSETNX (not by the fence)
    wait_for(lambda: state.summary(job).get("refused_duplicate"), STALL_S + 10, what="the first copy's write")
    s = state.summary(job)
    assert (s.get("refused_duplicate"), s.get("refused_stale")) == (1, None)
    written = state.results(job)[shard]
    assert written["device"] == "cpu:1"  # the second copy won
    assert sorted(written["image_ids"]) == sorted(im["id"] for im in state.all_shards(job)[shard])
    copies = [r for r in state.batches(job) if r["shard"] == shard]
    assert sorted(r["device"] for r in copies) == ["cpu:0", "cpu:1"]  # each copy ran its batch
    first, second = sorted(copies, key=lambda r: r["device"])
    assert first["t_start"] < second["t_start"] and second["t_end"] < first["t_end"]  # the second inside the first
    assert (s["shards_done"], s["images_done"], s["n_shards"]) == (12, 24, 12)
    report = state.report(job)
    assert report["coverage"]["ok"] and report["coverage"]["counted"] == 24 and report["status"] == "done"
    assert report["coverage"]["duplicated"] == [] and report["coverage"]["missing"] == []
    assert 0 < report["ap"]["stats"]["AP"] < 1  # detector-like answers: 12 numbers worth comparing
    assert report["ap"]["stats"] == undisturbed["ap"]["stats"]
    status = run_cli("status", job, "--broker", url)
    assert f"{job}  done" in status.stdout and "shards 12/12" in status.stdout
    assert "shards without a result: none" in status.stdout and "cpu:0: held by" in status.stdout

    missing = sorted(im["id"] for im in state.all_shards(job)[2])
    state.r.hdel(state.keys.job_part(job, "results"), "2")
    out = run_cli("report", job, "--broker", url, "--reduce", "--run-dir", str(tmp_path / "runs"))
    assert out.returncode == 1
    assert f"missing image ids (2): {', '.join(map(str, missing))}; shards without a result: 2" in out.stdout


@pytest.mark.slow
def test_embedded_submit_without_data_runs_the_sample_under_a_banner(tmp_path):
    out = run_cli("submit", "--backend", "groundtruth", "--batch", "8", "--run-dir", str(tmp_path / "runs"),
                  cwd=tmp_path, timeout_s=300)
    assert out.returncode == 0, out.stderr
    assert "BUILT-IN SAMPLE" in out.stdout and "AP means nothing" in out.stdout and "BUILT-IN SAMPLE" in out.stderr
    assert "box AP 1.000" in out.stdout
    (run,) = [p for p in (tmp_path / "runs").iterdir() if (p / "report.json").is_file()]
    assert {"report.json", "report.txt", "results.json", "logs", "redis"} <= {p.name for p in run.iterdir()}
    assert json.loads((run / "report.json").read_text())["params"]["sample"] is True
    status = run_cli("status", "--run-dir", str(tmp_path / "runs"))
    assert run.name in status.stdout and "done" in status.stdout
    again = run_cli("report", run.name, "--run-dir", str(tmp_path / "runs"))
    assert again.returncode == 0 and "box AP 1.000" in again.stdout


@pytest.mark.slow
def test_sample_runs_a_random_weights_torch_model_when_the_model_package_is_there(tmp_path):
    import importlib.util
    for module in ("torch", "model.random_checkpoint", "workers.backends.torch_backend"):
        if importlib.util.find_spec(module) is None:
            pytest.skip(f"{module} is not installed here: the sample falls back to the groundtruth backend")
    # a small canvas keeps the CPU forward quick; the wiring is what is tested here
    out = run_cli("submit", "--batch", "8", "--static-size", "320", "--run-dir", str(tmp_path / "runs"),
                  cwd=tmp_path, timeout_s=600)
    assert out.returncode == 0, out.stderr[-3000:]
    assert "random-weights model (backend torch)" in out.stdout and "AP means nothing" in out.stdout
    (report_path,) = (tmp_path / "runs").glob("*/report.json")
    report = json.loads(report_path.read_text())
    assert report["params"]["backend"] == "torch" and report["params"]["sample"] is True
    assert report["coverage"]["ok"] and report["coverage"]["expected"] == 4
    assert report["manifest"]["model_sha256"]
