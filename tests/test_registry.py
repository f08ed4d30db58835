"""Registries: short names, one-line errors, third-party components through entry points."""

import sys
from dataclasses import dataclass

import pytest

from worldmodels.errors import UserError
from worldmodels.registry import AGENTS, Registry


def test_builtin_agents_are_registered():
    assert "random" in AGENTS.names()
    assert AGENTS.get("random").registry_name == "random"


def test_unknown_name_lists_valid_ones():
    with pytest.raises(UserError, match=r"unknown agent 'nope' \(valid: .*random"):
        AGENTS.get("nope")


def test_register_requires_a_config_and_a_free_name():
    reg = Registry("thing", "worldmodels.test_things")

    @reg.register("a")
    class A:
        @dataclass(frozen=True)
        class Config:
            pass

    with pytest.raises(TypeError, match="needs a `Config`"):
        reg.register("b")(type("B", (), {}))
    with pytest.raises(ValueError, match="already taken"):
        reg.register("a")(type("C", (), {"Config": A.Config}))
    assert reg.names() == ["a"]


def _install_plugin(tmp_path, group, body):
    """A minimal installed distribution: a module plus a dist-info with entry_points.txt."""
    (tmp_path / "my_plugin.py").write_text(body)
    info = tmp_path / "my_plugin-1.0.dist-info"
    info.mkdir()
    (info / "METADATA").write_text("Metadata-Version: 2.1\nName: my-plugin\nVersion: 1.0\n")
    (info / "entry_points.txt").write_text(f"[{group}]\nmine = my_plugin:Mine\n")
    sys.path.insert(0, str(tmp_path))


def test_entry_point_plugins_are_discovered(tmp_path, monkeypatch):
    body = (
        "from dataclasses import dataclass\n"
        "class Mine:\n"
        "    @dataclass(frozen=True)\n"
        "    class Config:\n"
        "        width: int = 3\n"
    )
    _install_plugin(tmp_path, "worldmodels.test_plugins", body)
    monkeypatch.setattr(sys, "path", list(sys.path))
    reg = Registry("plugin", "worldmodels.test_plugins")
    assert reg.names() == ["mine"]
    assert reg.get("mine").Config().width == 3
    sys.modules.pop("my_plugin", None)


def test_broken_plugin_is_a_user_error(tmp_path, monkeypatch):
    _install_plugin(
        tmp_path, "worldmodels.test_broken", "raise ImportError('missing dependency')\n"
    )
    monkeypatch.setattr(sys, "path", list(sys.path))
    reg = Registry("plugin", "worldmodels.test_broken")
    with pytest.raises(UserError, match="could not load plugin 'mine'.*missing dependency"):
        reg.names()
    sys.modules.pop("my_plugin", None)
