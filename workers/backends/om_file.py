"""The om file as ais_bench (2024+) will accept it, checked before a session is made.

ais_bench's `InferSession` refuses a model path unless (`infer/interface_check.py`
`check_model_path_legality` -> `common/path_security_check.py` `check_path_legality`): the path holds
only `A-Z a-z 0-9 _ - / .`, it is no symbolic link, the file is owned by the process's user or one of
its groups, it is neither group- nor other-writable, it is readable, and it ends in `.om`. In a
container running as root over `./models` owned by a host user, the ownership rule alone refuses it.
`usable_om` says what is wrong in one line and, when the file is readable, gives ais_bench a private
copy that passes (owned by this process, mode 0640, under EVALUATOR_OM_CACHE).
"""
from __future__ import annotations

import hashlib
import logging
import os
import re
import shutil
import stat
from pathlib import Path

log = logging.getLogger("workers.backends.om_file")
CACHE_ENV = "EVALUATOR_OM_CACHE"
PATH_CHARS = re.compile(r"[^_A-Za-z0-9/.-]")  # path_security_check.PATH_WHITE_LIST_REGEX
MAX_PATH, MAX_NAME = 4096, 255  # MAX_LINUX_ABS_PATH_LENGTH, MAX_LINUX_BASE_NAME_LENGTH


def path_problems(path: str | os.PathLike) -> list[str]:
    """What ais_bench's path check would refuse about `path`, in words (empty when it passes)."""
    p = os.path.abspath(path)
    if not os.path.exists(p):
        return ["it does not exist"]
    problems = []
    if PATH_CHARS.search(p):
        problems.append("its path has characters other than A-Z a-z 0-9 _ - / .")
    if len(p) > MAX_PATH or any(len(part) > MAX_NAME for part in p.split("/")):
        problems.append("its path is too long")
    if os.path.islink(p):
        problems.append("it is a symbolic link")
    st = os.stat(p)
    if not stat.S_ISREG(st.st_mode):
        return problems + ["it is not a file"]
    if st.st_uid != os.geteuid() and st.st_gid not in os.getgroups():
        problems.append(f"it is owned by uid {st.st_uid} gid {st.st_gid}, not by this process's user "
                        f"(uid {os.geteuid()}) or one of its groups")
    if st.st_mode & (stat.S_IWGRP | stat.S_IWOTH):
        problems.append(f"it is group- or other-writable (mode {stat.S_IMODE(st.st_mode):o})")
    if not os.access(p, os.R_OK) or not st.st_mode & stat.S_IRUSR:
        problems.append("it is not readable")
    if not p.endswith(".om"):
        problems.append("its name does not end in .om")
    return problems


def cache_dir() -> Path:
    return Path(os.environ.get(CACHE_ENV) or Path.home() / ".cache" / "dcn-evaluator" / "om")


def usable_om(path: str | os.PathLike) -> str:
    """`path` when ais_bench accepts it; else a private copy that it accepts (logged in one line); else ValueError."""
    problems = path_problems(path)
    if not problems:
        return os.path.abspath(path)
    if not os.access(path, os.R_OK) or not os.path.isfile(path):
        raise ValueError(f"ais_bench cannot load the om: {'; '.join(problems)} ({path})")
    folder = cache_dir()
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    copy = folder / f"{digest.hexdigest()[:24]}.om"
    if not copy.exists():
        folder.mkdir(parents=True, exist_ok=True, mode=0o750)
        tmp = copy.with_suffix(f".{os.getpid()}.tmp")
        shutil.copyfile(path, tmp)
        os.chmod(tmp, 0o640)
        os.replace(tmp, copy)
    left = path_problems(copy)
    if left:
        raise ValueError(f"ais_bench cannot load the om ({'; '.join(problems)}) nor its copy {copy} "
                         f"({'; '.join(left)}): set {CACHE_ENV} to a plain folder of this user ({path})")
    log.warning("ais_bench would refuse %s (%s): using a private copy %s (to load it in place: chown it to this "
                "process's user, chmod 640, no symlink, a name ending in .om)", path, "; ".join(problems), copy)
    return str(copy)
