"""scripts/evaluate and scripts/test on a machine without redis-server: installed with apt-get when root or
password-less sudo allows it, else one line with the command to run, exit 2, nothing started. And
scripts/evaluate for real, on this machine, on the built-in sample.

The machine without redis-server is simulated on PATH: redis-server hidden, and fake `id`, `sudo` and `apt-get` that record their
arguments (the fake apt-get "installs" a redis-server stub), so nothing is really installed.
"""
from __future__ import annotations

import json
import os
import shutil
import subprocess
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
FAKES = ("redis-server", "apt-get", "sudo", "id")
INSTRUCTION = "sudo apt-get update && sudo apt-get install -y redis-server"

if not (REPO / ".venv" / "bin" / "python").exists():
    pytest.skip("no .venv at the repo root: the scripts would build one first", allow_module_level=True)


def machine(tmp_path: Path, uid: int, sudo: str | None, apt: str | None) -> tuple[dict, Path]:
    """A PATH with every command of this one except FAKES, plus fake `id -u` = uid, a fake `sudo` ('nopasswd'
    runs the command, 'password' refuses -n) and a fake `apt-get` ('ok' installs a redis-server stub, 'fails')."""
    bin_dir, log = tmp_path / "bin", tmp_path / "calls.log"
    bin_dir.mkdir()
    for folder in os.environ["PATH"].split(os.pathsep):
        for exe in Path(folder).glob("*") if Path(folder).is_dir() else ():
            target = bin_dir / exe.name
            if exe.name not in FAKES and not target.exists() and os.access(exe, os.X_OK) and exe.is_file():
                target.symlink_to(exe)

    def fake(name: str, body: str) -> None:
        (bin_dir / name).write_text(f"#!/bin/sh\necho \"{name} $*\" >> {log}\n{body}\n")
        (bin_dir / name).chmod(0o755)

    fake("id", f"echo {uid}")
    if sudo == "nopasswd":
        fake("sudo", '[ "$1" = -n ] && shift\nexec "$@"')
    elif sudo == "password":
        fake("sudo", 'echo "sudo: a password is required" >&2\nexit 1')
    if apt == "ok":
        stub = bin_dir / "redis-server"
        fake("apt-get", f'case "$*" in *install*redis-server*) printf "#!/bin/sh\\n" > {stub}; chmod +x {stub};; esac')
    elif apt == "fails":
        fake("apt-get", 'echo "E: Unable to locate package" >&2\nexit 100')
    log.touch()
    return {**os.environ, "PATH": str(bin_dir)}, log


def run(script: str, env: dict, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run([str(REPO / "scripts" / script), *args], env=env, capture_output=True, text=True,
                          timeout=120)


@pytest.mark.parametrize("uid,sudo", [(0, None), (1000, "nopasswd")])
def test_evaluate_installs_redis_server_as_root_or_with_passwordless_sudo(tmp_path, uid, sudo):
    env, log = machine(tmp_path, uid, sudo, apt="ok")
    proc = run("evaluate", env, "--help")
    assert proc.returncode == 0 and "usage:" in proc.stdout, proc.stderr
    calls = log.read_text().splitlines()
    assert [c for c in calls if c.startswith("apt-get")] == ["apt-get update -qq", "apt-get install -y -qq redis-server"]
    sudo_calls = [c for c in calls if c.startswith("sudo")]
    if sudo:
        assert sudo_calls == ["sudo -n true", "sudo env DEBIAN_FRONTEND=noninteractive apt-get update -qq",
                              "sudo env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq redis-server"]
    else:
        assert sudo_calls == []
    assert "Traceback" not in proc.stderr


@pytest.mark.parametrize("script", ["evaluate", "test"])
@pytest.mark.parametrize("sudo", [None, "password"])
def test_without_root_or_passwordless_sudo_one_line_gives_the_command(tmp_path, script, sudo):
    env, log = machine(tmp_path, 1000, sudo, apt="ok")
    proc = run(script, env)
    assert proc.returncode == 2 and proc.stdout == ""
    assert proc.stderr.splitlines() == [f"error: redis-server not found, and installing it needs root: "
                                        f"run `{INSTRUCTION}` (PATH)"]
    assert "apt-get" not in log.read_text()  # nothing installed, nothing started


def test_a_failed_install_ends_in_one_line_with_the_command(tmp_path):
    env, _ = machine(tmp_path, 0, None, apt="fails")
    proc = run("evaluate", env)
    assert proc.returncode == 2 and proc.stdout == "" and "Traceback" not in proc.stderr
    assert proc.stderr.splitlines()[-1] == f"error: apt-get could not install redis-server: run `{INSTRUCTION}` " \
                                           "to see why (PATH)"


def test_without_apt_get_one_line_says_what_to_install(tmp_path):
    env, _ = machine(tmp_path, 0, None, apt=None)
    proc = run("evaluate", env)
    assert proc.returncode == 2 and proc.stdout == ""
    assert proc.stderr.splitlines() == ["error: redis-server not found and this system has no apt-get: install "
                                        "redis-server with its package manager (PATH)"]


def test_evaluate_on_a_cluster_elsewhere_needs_no_local_redis_server(tmp_path):
    env, log = machine(tmp_path, 1000, None, apt="ok")
    proc = run("evaluate", env, "--broker", "redis://127.0.0.1:1/0", "--help")
    assert proc.returncode == 0 and "usage:" in proc.stdout, proc.stderr
    assert log.read_text() == ""


@pytest.mark.slow
def test_evaluate_runs_the_built_in_sample_under_its_banner_into_a_run_folder(tmp_path):
    if (REPO / "data" / "coco" / "annotations" / "instances_val2017.json").is_file():
        pytest.skip("data/coco is in this checkout: scripts/evaluate would evaluate it, not the sample")
    if shutil.which("redis-server") is None:
        pytest.skip("redis-server is not installed: scripts/evaluate would install it")
    runs = tmp_path / "runs"
    # the sample with the groundtruth backend on one device: the script's own path at the smallest cost
    proc = subprocess.run([str(REPO / "scripts" / "evaluate"), "--backend", "groundtruth", "--devices", "cpu:0",
                           "--run-dir", str(runs)], capture_output=True, text=True, cwd=tmp_path, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "Traceback" not in proc.stderr
    banner = "BUILT-IN SAMPLE: no COCO data was found, so this ran the generated selftest set with the groundtruth " \
             "backend. Its AP means nothing."
    assert proc.stderr.startswith(banner) and proc.stdout.startswith(banner)  # before the job, and atop its table
    (run,) = [p for p in runs.iterdir() if (p / "report.json").is_file()]
    assert f"run folder: {run}" in proc.stderr
    report = json.loads((run / "report.json").read_text())
    params = report["params"]
    assert (params["sample"], params["backend"], params["batch"]) == (True, "groundtruth", 8)  # the script's --batch 8
    n_images = len(json.loads(Path(params["annotation"]).read_text())["images"])
    assert report["status"] == "done" and report["coverage"]["ok"] and report["coverage"]["counted"] == n_images
    assert report["ap"]["stats"]["AP"] == 1.0 and "box AP 1.000" in proc.stdout
    assert {"report.json", "report.txt", "results.json", "logs", "redis"} <= {p.name for p in run.iterdir()}
    assert banner in (run / "report.txt").read_text()
    assert [p.name for p in tmp_path.iterdir()] == ["runs"]  # nothing written where it was started from
