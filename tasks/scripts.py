"""The atomic Redis steps, one Lua file each in tasks/lua/, registered once per client (dramatiq-style)."""
from __future__ import annotations

from functools import lru_cache
from pathlib import Path

import redis

LUA = Path(__file__).with_name("lua")


@lru_cache(maxsize=None)
def source(name: str) -> str:
    return (LUA / f"{name}.lua").read_text()


class Scripts:
    """`Scripts(client).write_result(keys=[...], args=[...])`: each script registered on first use, then reused."""

    def __init__(self, client: redis.Redis):
        self._client = client
        self._registered: dict = {}

    def __getattr__(self, name: str):
        if name.startswith("_"):
            raise AttributeError(name)
        if name not in self._registered:
            if not (LUA / f"{name}.lua").is_file():
                raise AttributeError(f"no Lua script {name} in {LUA}")
            self._registered[name] = self._client.register_script(source(name))
        return self._registered[name]
