"""Tensor store: fingerprint, atomic writes, bit-exact inputs on load, corruption detected and recomputed."""
from __future__ import annotations

import errno
import logging
import os
import shutil
import subprocess
import sys
import threading

import cv2
import numpy as np
import pytest

from model.preprocess import ImageReadError, load_image, preprocess, resize_image
from tasks import store as store_module
from tasks.store import TensorStore, fingerprint


@pytest.fixture
def image(tmp_path):
    rng = np.random.default_rng(7)
    path = tmp_path / "img.jpg"
    cv2.imwrite(str(path), rng.integers(0, 256, (123, 171, 3), dtype=np.uint8))
    return path


def entries(root):
    return sorted(p for p in root.rglob("*") if p.is_file())


@pytest.mark.parametrize("size_mode,static_size", [("mmdet", 1216), ("static", 1216), ("static", 320)])
def test_input_built_on_load_equals_preprocessing_in_one_go(tmp_path, image, size_mode, static_size):
    expected, expected_meta = preprocess(load_image(image), size_mode, static_size)
    store = TensorStore(tmp_path / "store")
    miss = store.load(image, size_mode, static_size)
    hit = TensorStore(tmp_path / "store").load(image, size_mode, static_size)
    for entry in (miss, hit):
        assert entry.meta == expected_meta
        got = entry.network_input()
        assert got.dtype == np.float32 and got.shape == expected.shape
        assert np.array_equal(got.view(np.uint32), expected.view(np.uint32))  # bit for bit


def test_stores_uint8_resized_image_not_float(tmp_path, image):
    store = TensorStore(tmp_path / "store")
    entry = store.load(image, "static", 1216)
    (path,) = entries(tmp_path / "store")
    assert entry.resized.dtype == np.uint8
    assert path.stat().st_size < entry.resized.nbytes + 4096  # 1 byte per value, small header
    assert path.stat().st_size * 3 < entry.network_input().nbytes


def test_same_image_and_settings_reused_across_jobs(tmp_path, image):
    first = TensorStore(tmp_path / "store")
    first.load(image, "mmdet", 1216)
    copy = tmp_path / "elsewhere" / "copy.jpg"
    copy.parent.mkdir()
    shutil.copy(image, copy)
    second = TensorStore(tmp_path / "store")  # another job, another process
    second.load(copy, "mmdet", 1216)
    assert (first.misses, second.hits, second.misses) == (1, 1, 0)
    assert len(entries(tmp_path / "store")) == 1


def test_any_setting_change_gives_a_new_key(image, monkeypatch):
    data = image.read_bytes()
    keys = {fingerprint(data, "mmdet", 1216), fingerprint(data, "static", 1216), fingerprint(data, "static", 800),
            fingerprint(data + b"\0", "static", 1216)}
    assert len(keys) == 4
    assert fingerprint(data, "mmdet", 1216) == fingerprint(data, "mmdet", 800)  # S does not apply to mmdet mode
    monkeypatch.setattr(store_module, "preprocessing_version", lambda: "another-code-version")
    assert fingerprint(data, "static", 1216) not in keys


def test_a_failed_write_leaves_no_temp_file_and_the_store_steps_aside(tmp_path, image, monkeypatch, caplog):
    store = TensorStore(tmp_path / "store")
    reference = TensorStore(None).load(image, "static", 1216).network_input()

    def crash(src, dst):
        raise OSError(errno.ENOSPC, "No space left on device")
    monkeypatch.setattr(os, "replace", crash)
    with caplog.at_level(logging.WARNING, logger="tasks.store"):
        first = store.load(image, "static", 1216)
        second = TensorStore(tmp_path / "store").load(image, "static", 1216)  # the next shard's store
    assert np.array_equal(first.network_input(), reference) and np.array_equal(second.network_input(), reference)
    assert entries(tmp_path / "store") == []  # no partial entry, no temp file left
    warnings = [r.getMessage() for r in caplog.records if r.name == "tasks.store"]
    assert len(warnings) == 1 and "No space left on device" in warnings[0] and "steps aside" in warnings[0]
    monkeypatch.undo()
    TensorStore(tmp_path / "store").load(image, "static", 1216)
    assert entries(tmp_path / "store") == []  # aside for a minute: nothing written yet
    monkeypatch.setattr(store_module, "UNWRITABLE_RETRY_S", 0.0)
    TensorStore(tmp_path / "store").load(image, "static", 1216)
    assert [p.suffix for p in entries(tmp_path / "store")] == [".img"]  # written again once the minute is over


@pytest.mark.parametrize("damage", ["truncate", "flip_pixel", "garbage_header"])
def test_corrupt_entry_detected_and_recomputed(tmp_path, image, damage):
    store = TensorStore(tmp_path / "store")
    good = store.load(image, "mmdet", 1216).network_input()
    (path,) = entries(tmp_path / "store")
    raw = bytearray(path.read_bytes())
    if damage == "truncate":
        raw = raw[:len(raw) // 2]
    elif damage == "flip_pixel":
        raw[-10] ^= 0xFF
    else:
        raw[12:20] = b"{{{{{{{{"
    path.write_bytes(bytes(raw))
    again = TensorStore(tmp_path / "store")
    entry = again.load(image, "mmdet", 1216)
    assert (again.recomputed, again.misses, again.hits) == (1, 1, 0)
    assert np.array_equal(entry.network_input(), good)
    assert TensorStore(tmp_path / "store").get(path.stem) is not None  # the rewritten entry is sound


def test_meta_only_load_reads_no_pixels(tmp_path, image):
    store = TensorStore(tmp_path / "store")
    full = store.load(image, "static", 1216)
    meta_only = store.load(image, "static", 1216, pixels=False)
    assert meta_only.resized is None and meta_only.meta == full.meta


def test_disabled_store_still_preprocesses(tmp_path, image):
    store = TensorStore(None)
    entry = store.load(image, "static", 1216)
    assert entry.meta.input_h == 1216 and store.misses == 1 and not list(tmp_path.rglob("*.img"))


@pytest.mark.parametrize("content", [None, b"not an image at all"])
def test_absent_or_undecodable_image_raises(tmp_path, content):
    path = tmp_path / "broken.jpg"
    if content is not None:
        path.write_bytes(content)
    with pytest.raises(ImageReadError, match="broken.jpg"):
        TensorStore(tmp_path / "store").load(path, "static", 1216)


def test_a_second_loader_waits_for_the_entry_being_made_instead_of_making_it_again(tmp_path, image):
    maker, waiter = TensorStore(tmp_path / "store"), TensorStore(tmp_path / "store")
    key = fingerprint(image.read_bytes(), "static", 320)
    done = []
    with maker._claim(key):  # the maker has missed and is preprocessing the image
        thread = threading.Thread(target=lambda: done.append(waiter.load(image, "static", 320)))
        thread.start()
        thread.join(0.5)
        assert thread.is_alive() and not done  # the waiter missed too, and waits rather than preprocessing
        resized, meta = resize_image(load_image(image), "static", 320)
        maker.put(key, resized, meta)
    thread.join(10)
    assert (waiter.hits, waiter.misses) == (1, 0) and np.array_equal(done[0].resized, resized)
    assert [p.suffix for p in entries(tmp_path / "store")] == [".img"]  # the lock file is gone


def test_a_claim_held_by_a_killed_process_is_released(tmp_path, image):
    store = TensorStore(tmp_path / "store")
    key = fingerprint(image.read_bytes(), "static", 320)
    lock = store.path(key).with_name(f".{key}.lock")
    lock.parent.mkdir(parents=True)
    holder = subprocess.Popen([sys.executable, "-c", HOLD_LOCK, str(lock)], stdout=subprocess.PIPE, text=True)
    assert holder.stdout.readline().strip() == "locked"
    holder.kill()  # dies mid-preprocessing: no entry, a stale lock file
    holder.wait()
    entry = store.load(image, "static", 320)
    assert (store.hits, store.misses) == (0, 1) and entry.meta.input_h == 320
    assert [p.suffix for p in entries(tmp_path / "store")] == [".img"]



def test_a_filesystem_without_locks_still_gets_its_entry(tmp_path, image, monkeypatch):
    def no_locks(fd, op):
        raise OSError(errno.ENOLCK, "No locks available")
    monkeypatch.setattr(store_module.fcntl, "flock", no_locks)
    store = TensorStore(tmp_path / "store")
    store.load(image, "static", 320)
    assert store.load(image, "static", 320).meta.input_h == 320 and (store.hits, store.misses) == (1, 1)
    assert [p.suffix for p in entries(tmp_path / "store")] == [".img"]

HOLD_LOCK = """
import fcntl, os, sys, time
fd = os.open(sys.argv[1], os.O_CREAT | os.O_RDWR)
fcntl.flock(fd, fcntl.LOCK_EX)
print("locked", flush=True)
time.sleep(60)
"""

