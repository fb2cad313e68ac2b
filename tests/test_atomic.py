"""astra_gym.utils.atomic.atomic_write: readers see the old file or the new one, never a partial one."""

import pytest

from astra_gym.utils.atomic import atomic_write, atomic_write_text


def test_atomic_write_replaces_and_a_failed_write_keeps_the_old_file(tmp_path):
    path = atomic_write_text(tmp_path / "sub" / "a.json", "old")
    assert path.read_text() == "old"

    def crash(tmp):
        tmp.write_text("half")
        raise RuntimeError("disk full")

    with pytest.raises(RuntimeError, match="disk full"):
        atomic_write(path, crash)
    assert path.read_text() == "old" and sorted(p.name for p in path.parent.iterdir()) == ["a.json"]
    atomic_write(path, lambda tmp: tmp.write_bytes(b"new"))
    assert path.read_bytes() == b"new" and sorted(p.name for p in path.parent.iterdir()) == ["a.json"]


def test_atomic_write_gives_the_permissions_a_plain_open_would(tmp_path):
    import os
    import stat

    from astra_gym.utils.atomic import atomic_write_text

    old = os.umask(0o022)
    try:
        atomic_write_text(tmp_path / "a.json", "{}")
        (tmp_path / "b.json").write_text("{}")
    finally:
        os.umask(old)
    mode = stat.S_IMODE((tmp_path / "a.json").stat().st_mode)
    assert mode == stat.S_IMODE((tmp_path / "b.json").stat().st_mode) == 0o644
