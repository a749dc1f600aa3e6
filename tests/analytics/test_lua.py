"""The Lua scripts Redis runs live in ``analytics/lua/*.lua``, one file per
script (or shared helper), loaded with :func:`analytics.lua_scripts.lua_source`:
none is written inline in a Python module, and none is left unused."""

from __future__ import annotations

import ast
import re
from pathlib import Path

import pytest
import redis

from analytics.lua_scripts import lua_source

PACKAGE = Path(__file__).resolve().parents[2] / "analytics"
LUA_DIR = PACKAGE / "lua"
MODULES = sorted(PACKAGE.rglob("*.py"))
LUA_FILES = sorted(p.name for p in LUA_DIR.glob("*.lua"))

#: What only Lua run by Redis contains.
INLINE_LUA = re.compile(r"redis\.p?call\s*\(|\b(?:KEYS|ARGV)\[\d+\]\s*[=~]=|\bunpack\(ARGV")
#: The calls that take a script's text.
SCRIPT_TAKERS = ("register_script", "Script", "eval", "script_load")


def _called(node: ast.AST) -> str | None:
    """The name of the function ``node`` calls, if it is a call."""
    if not isinstance(node, ast.Call):
        return None
    func = node.func
    return func.id if isinstance(func, ast.Name) else func.attr if isinstance(func, ast.Attribute) else None


def _file_names(call: ast.Call, module: Path) -> tuple[str, ...]:
    names = tuple(a.value for a in call.args if isinstance(a, ast.Constant) and isinstance(a.value, str))
    assert len(names) == len(call.args), f"{module}:{call.lineno}: lua_source takes file names as literals"
    return names


def _lua_source_calls() -> list[tuple[Path, tuple[str, ...]]]:
    """Each ``lua_source(...)`` call under analytics/: (module, file names)."""
    return [
        (module, _file_names(node, module))
        for module in MODULES
        for node in ast.walk(ast.parse(module.read_text(), str(module)))
        if isinstance(node, ast.Call) and _called(node) == "lua_source"
    ]


def test_there_are_scripts() -> None:
    assert MODULES and LUA_FILES
    assert _lua_source_calls()


def test_every_lua_file_is_loaded() -> None:
    loaded = {name for _, names in _lua_source_calls() for name in names}
    assert sorted(set(LUA_FILES) - loaded) == [], "Lua files no module loads"
    assert sorted(loaded - set(LUA_FILES)) == [], "Lua files loaded but missing"


@pytest.mark.parametrize("module", MODULES, ids=lambda p: str(p.relative_to(PACKAGE.parent)))
def test_no_inline_lua(module: Path) -> None:
    text = module.read_text()
    found = [f"{module.name}:{text.count(chr(10), 0, m.start()) + 1}: {m.group(0)}" for m in INLINE_LUA.finditer(text)]
    assert found == [], "inline Lua: move it to a file of analytics/lua (lua_source)"


@pytest.mark.parametrize("module", MODULES, ids=lambda p: str(p.relative_to(PACKAGE.parent)))
def test_scripts_come_from_lua_files(module: Path) -> None:
    """What ``register_script``, ``Script``, ``eval`` and ``script_load``
    get is ``lua_source(...)``, at most behind a ``#!`` line (the script's
    flags): no Lua text beside it."""
    for node in ast.walk(ast.parse(module.read_text(), str(module))):
        name = _called(node)
        if not isinstance(node, ast.Call) or name not in SCRIPT_TAKERS or not node.args:
            continue
        source = node.args[-1] if name == "Script" else node.args[0]
        where = f"{module}:{node.lineno}"
        loads = [n for n in ast.walk(source) if isinstance(n, ast.Call) and _called(n) == "lua_source"]
        assert loads, f"{where}: not loaded with lua_source"
        file_names = {id(a) for call in loads for a in call.args}
        for const in ast.walk(source):
            if isinstance(const, ast.Constant) and isinstance(const.value, str) and id(const) not in file_names:
                assert re.fullmatch(r"#![^\n]*\n", const.value), f"{where}: Lua text beside lua_source: {const.value!r}"


def test_the_scripts_compile(data: redis.Redis) -> None:
    """Every script as loaded (helpers in front) compiles in Redis."""
    for module, names in _lua_source_calls():
        try:
            data.script_load(lua_source(*names))
        except redis.ResponseError as e:
            pytest.fail(f"{module.name}: lua_source{names}: {e}")
