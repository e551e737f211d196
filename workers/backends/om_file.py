"""The om file as ais_bench (2024+) will accept it, checked before a session is made, with the fix in one line.

ais_bench's `InferSession` refuses a model path unless (`infer/interface_check.py`
`check_model_path_legality` -> `common/path_security_check.py` `check_path_legality`): the path holds
only `A-Z a-z 0-9 _ - / .`, it is no symbolic link, the file is owned by the process's user or one of
its groups, it is neither group- nor other-writable, it is readable, at most 10 GiB, and it ends in
`.om`. These are Huawei's own guards against a model that someone else could have changed, so they are
kept, not worked around: `check_om` names what is wrong and what to change, before any session (and
`submit` calls it before anything starts). In the compose file the device services join the models'
group (`MODELS_GID`), which passes the ownership rule for a file owned by a host user.
"""
from __future__ import annotations

import os
import re
import stat

PATH_CHARS = re.compile(r"[^_A-Za-z0-9/.-]")  # path_security_check.PATH_WHITE_LIST_REGEX
MAX_PATH, MAX_NAME = 4096, 255  # MAX_LINUX_ABS_PATH_LENGTH, MAX_LINUX_BASE_NAME_LENGTH
MAX_SIZE = 10 * 1024 ** 3  # interface_check: OM_MODEL_MAX_SIZE


def path_problems(path: str | os.PathLike) -> list[str]:
    """What ais_bench's path check would refuse about `path`, each with its fix (empty when it passes)."""
    p = os.path.abspath(path)
    if not os.path.exists(p):
        return ["it does not exist"]
    problems = []
    if PATH_CHARS.search(p):
        problems.append("its path has characters other than A-Z a-z 0-9 _ - / . (rename it)")
    if len(p) > MAX_PATH or any(len(part) > MAX_NAME for part in p.split("/")):
        problems.append("its path is too long")
    if os.path.islink(p):
        problems.append(f"it is a symbolic link (give the file itself: {os.path.realpath(p)})")
    st = os.stat(p)
    if not stat.S_ISREG(st.st_mode):
        return problems + ["it is not a file"]
    if st.st_uid != os.geteuid() and st.st_gid not in os.getgroups():
        problems.append(f"it is owned by uid {st.st_uid} gid {st.st_gid}, neither this process's user (uid "
                        f"{os.geteuid()}) nor one of its groups (chown it, or run the worker in group {st.st_gid}: "
                        "MODELS_GID in the compose .env)")
    if st.st_mode & (stat.S_IWGRP | stat.S_IWOTH):
        problems.append(f"it is group- or other-writable, mode {stat.S_IMODE(st.st_mode):o} (chmod go-w)")
    if not os.access(p, os.R_OK) or not st.st_mode & stat.S_IRUSR:
        problems.append("it is not readable (chmod u+r)")
    if st.st_size > MAX_SIZE:
        problems.append(f"it is larger than {MAX_SIZE >> 30} GiB")
    if not p.endswith(".om"):
        problems.append("its name does not end in .om")
    return problems


def check_om(path: str | os.PathLike) -> str:
    """The absolute path when ais_bench will load it; else ValueError, one line naming the file and the fixes."""
    problems = path_problems(path)
    if problems:
        raise ValueError(f"ais_bench refuses this om: {'; '.join(problems)} ({path})")
    return os.path.abspath(path)
