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
