"""The digits world's cache is per user (like Hugging Face's), whatever the current folder."""

from __future__ import annotations

from senseflow.worlds.digits.config import cache_root


def test_cache_root_order(tmp_path, monkeypatch):
    monkeypatch.delenv("SENSEFLOW_CACHE", raising=False)
    monkeypatch.delenv("XDG_CACHE_HOME", raising=False)
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    monkeypatch.chdir(tmp_path)
    assert cache_root() == tmp_path / "home" / ".cache" / "senseflow"
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    assert cache_root() == tmp_path / "xdg" / "senseflow"
    monkeypatch.setenv("SENSEFLOW_CACHE", str(tmp_path / "env"))
    assert cache_root() == tmp_path / "env"
    assert cache_root(tmp_path / "flag") == tmp_path / "flag"
    assert cache_root().is_absolute()
