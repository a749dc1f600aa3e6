"""The Lua scripts Redis runs for us (``analytics/lua``), read as text.

Helpers shared by several scripts live in files of their own
(``token_bucket.lua``, ``rollup_lib.lua``) and are put in front of the
script that uses them: Redis has no ``require``.
"""

from __future__ import annotations

from importlib import resources


def lua_source(*names: str) -> str:
    """The Lua files ``names`` of ``analytics/lua``, joined into one script."""
    lua = resources.files("analytics").joinpath("lua")
    return "\n".join(lua.joinpath(name).read_text() for name in names)
