"""The shipper's ``Checkpointer``: every change to the checkpoints, and their file on disk.

Pure logic on the checkpoints held in memory, and real files in ``tmp_path`` for
saving (atomic, only when changed), reloading, and matching a file's first bytes.
"""

from __future__ import annotations

import os
from pathlib import Path

import orjson
import pytest

from shippers.checkpoint import Checkpointer, CheckpointStore, FileCheckpoint
from shippers.fingerprint import head_hash

NOW = 1_700_000_000.0
DAY = 86400.0


def _cp(source: str, offset: int = 0, *, released_at: float = 0.0) -> FileCheckpoint:
    return FileCheckpoint(source, f"/var/log/{source}.log", offset, released_at=released_at)


def _saved(state: Path) -> dict[str, FileCheckpoint]:
    return CheckpointStore(state).load()


# -- changes, in memory --------------------------------------------------------------


def test_a_new_checkpointer_over_an_empty_state_dir_holds_nothing_and_is_clean(tmp_path: Path) -> None:
    c = Checkpointer(tmp_path / "state")
    assert dict(c.view) == {} and not c.dirty


def test_update_sets_a_files_checkpoint_and_marks_it_to_save(tmp_path: Path) -> None:
    c = Checkpointer(tmp_path / "state")
    c.update("fp:a", _cp("a", 10))
    c.update("fp:a", _cp("a", 20))
    assert c.view == {"fp:a": _cp("a", 20)} and c.dirty


def test_the_view_follows_changes_but_cannot_make_them(tmp_path: Path) -> None:
    c = Checkpointer(tmp_path / "state")
    view = c.view
    c.update("fp:a", _cp("a"))
    assert "fp:a" in view
    with pytest.raises(TypeError):
        view["fp:b"] = _cp("b")  # type: ignore[index]  # writing is what the test checks is refused


def test_forget_drops_a_checkpoint_and_is_a_no_op_for_an_unknown_key(tmp_path: Path) -> None:
    c = Checkpointer(tmp_path / "state")
    c.update("ino:1:2", _cp("a"))
    c.save()
    c.forget("ino:9:9")
    assert not c.dirty
    c.forget("ino:1:2")
    assert dict(c.view) == {} and c.dirty


def test_rekey_moves_the_checkpoint_to_the_new_key(tmp_path: Path) -> None:
    c = Checkpointer(tmp_path / "state")
    c.update("ino:1:2", _cp("a", 6))
    c.save()
    c.rekey("ino:1:2", "fp:abc")
    assert c.view == {"fp:abc": _cp("a", 6)} and c.dirty


def test_rekey_of_an_unknown_key_changes_nothing(tmp_path: Path) -> None:
    c = Checkpointer(tmp_path / "state")
    c.update("fp:other", _cp("b"))
    c.save()
    c.rekey("ino:1:2", "fp:abc")
    assert c.view == {"fp:other": _cp("b")} and not c.dirty


def test_release_forgets_the_checkpoint_when_released_files_are_not_kept(tmp_path: Path) -> None:
    c = Checkpointer(tmp_path / "state")
    c.update("fp:a", _cp("a", 5))
    c.release("fp:a")
    c.release("fp:unknown")
    assert dict(c.view) == {}


def test_release_marks_the_checkpoint_released_once_when_kept(tmp_path: Path) -> None:
    c = Checkpointer(tmp_path / "state", keep_released=True)
    c.update("fp:a", _cp("a", 5))
    c.release("fp:a", now=NOW)
    assert c.view == {"fp:a": _cp("a", 5, released_at=NOW)}
    c.save()
    c.release("fp:a", now=NOW + 60)          # let go again: still released when first let go
    assert c.view["fp:a"].released_at == NOW and not c.dirty


def test_prune_releases_every_checkpoint_but_the_live_ones(tmp_path: Path) -> None:
    c = Checkpointer(tmp_path / "state")
    for key in ("fp:a", "fp:b", "fp:c"):
        c.update(key, _cp(key[3:]))
    c.prune({"fp:b"})
    assert list(c.view) == ["fp:b"]

    kept = Checkpointer(tmp_path / "kept", keep_released=True)
    for key in ("fp:a", "fp:b"):
        kept.update(key, _cp(key[3:]))
    kept.prune(["fp:b"])
    assert kept.view["fp:a"].released_at > 0 and kept.view["fp:b"].released_at == 0


def test_expire_forgets_released_checkpoints_older_than_the_keep_time(tmp_path: Path) -> None:
    c = Checkpointer(tmp_path / "state", keep_released=True, keep_s=7 * DAY)
    c.update("fp:old", _cp("old", released_at=NOW - 8 * DAY))
    c.update("fp:recent", _cp("recent", released_at=NOW - 6 * DAY))
    c.update("fp:read", _cp("read"))                                  # not released: never expires
    c.expire(set(), now=NOW)
    assert sorted(c.view) == ["fp:read", "fp:recent"]


def test_expire_keeps_only_the_newest_released_checkpoints(tmp_path: Path) -> None:
    c = Checkpointer(tmp_path / "state", keep_released=True, keep_max=2)
    for i in range(5):
        c.update(f"fp:{i}", _cp(str(i), released_at=NOW - i))
    c.expire(set(), now=NOW)
    assert sorted(c.view) == ["fp:0", "fp:1"]


def test_expire_spares_held_keys(tmp_path: Path) -> None:
    c = Checkpointer(tmp_path / "state", keep_released=True, keep_s=DAY, keep_max=1)
    c.update("fp:held", _cp("held", released_at=NOW - 30 * DAY))      # its .gz file is still there
    c.update("fp:new", _cp("new", released_at=NOW))
    c.update("fp:newer", _cp("newer", released_at=NOW + 1))
    c.expire({"fp:held"}, now=NOW)
    assert sorted(c.view) == ["fp:held", "fp:newer"]


def test_expire_does_nothing_when_released_files_are_not_kept(tmp_path: Path) -> None:
    c = Checkpointer(tmp_path / "state", keep_released=False, keep_s=0)
    c.update("fp:a", _cp("a", released_at=NOW - DAY))     # from a run that kept them
    c.save()
    c.expire(set(), now=NOW)
    assert "fp:a" in c.view and not c.dirty


# -- the file on disk ----------------------------------------------------------------


def test_save_writes_only_when_changed(tmp_path: Path) -> None:
    state = tmp_path / "state"
    c = Checkpointer(state)
    c.save()
    assert not (state / "checkpoints.json").exists(), "nothing changed, nothing written"
    c.update("fp:a", _cp("a", 3))
    c.save()
    assert not c.dirty and _saved(state) == {"fp:a": _cp("a", 3)}
    mtime = (state / "checkpoints.json").stat().st_mtime_ns
    c.save()
    assert (state / "checkpoints.json").stat().st_mtime_ns == mtime


def test_save_replaces_the_file_atomically_and_leaves_no_temp_file(tmp_path: Path) -> None:
    state = tmp_path / "state"
    c = Checkpointer(state)
    c.update("fp:a", _cp("a", 1))
    c.save()
    before = (state / "checkpoints.json").stat().st_ino
    c.update("fp:a", _cp("a", 2))
    c.save()
    # A new file renamed over the old: a reader (or a crash) sees the old one whole or the new one.
    assert (state / "checkpoints.json").stat().st_ino != before
    assert sorted(p.name for p in state.iterdir()) == ["checkpoints.json"]


def test_a_crash_before_the_rename_leaves_the_last_saved_checkpoints(tmp_path: Path) -> None:
    state = tmp_path / "state"
    c = Checkpointer(state)
    c.update("fp:a", _cp("a", 1))
    c.save()
    (state / ".checkpoints.json.tmp").write_bytes(b'{"version": 3, "files": {"fp:a": ')   # cut short
    assert Checkpointer(state).view == {"fp:a": _cp("a", 1)}


def test_a_reloaded_checkpointer_has_what_was_saved_and_is_clean(tmp_path: Path) -> None:
    state = tmp_path / "state"
    c = Checkpointer(state, keep_released=True)
    c.update("fp:a", FileCheckpoint("host:fp:a:1", "/var/log/é.log", 123, "abc", 32))
    c.update("ino:1:2", _cp("b"))
    c.release("ino:1:2", now=NOW)
    c.update("fp:unsaved", _cp("c"))
    c.forget("fp:unsaved")
    c.save()
    c.update("fp:after", _cp("d"))           # changed after the save: not on disk
    again = Checkpointer(state, keep_released=True)
    assert again.view == {"fp:a": FileCheckpoint("host:fp:a:1", "/var/log/é.log", 123, "abc", 32),
                          "ino:1:2": _cp("b", released_at=NOW)}
    assert not again.dirty


def test_a_checkpoint_file_of_another_version_is_refused(tmp_path: Path) -> None:
    state = tmp_path / "state"
    state.mkdir()
    (state / "checkpoints.json").write_bytes(orjson.dumps({"version": 2, "files": {}}))
    with pytest.raises(ValueError, match="version"):
        Checkpointer(state)


# -- matching content too short to fingerprint ---------------------------------------


def _open(tmp_path: Path, name: str, data: bytes) -> int:
    path = tmp_path / name
    path.write_bytes(data)
    return os.open(path, os.O_RDONLY)


def test_head_match_finds_the_longest_sent_head_the_content_begins_with(tmp_path: Path) -> None:
    c = Checkpointer(tmp_path / "state")
    data = b"first line\nsecond line\n"
    probe = _open(tmp_path, "copy", data)
    try:
        c.update("short", FileCheckpoint("s1", "/a", 0, head_hash(probe, 11), 11))
        c.update("longer", FileCheckpoint("s2", "/b", 0, head_hash(probe, 23), 23))
        c.update("other", FileCheckpoint("s3", "/c", 0, "0" * 24, 5))
        c.update("too-long", FileCheckpoint("s4", "/d", 0, "0" * 24, 100))
        c.update("nothing-sent", FileCheckpoint("s5", "/e", 0, "", 0))
        assert c.head_match(probe, len(data)) == "longer"
        assert c.head_match(probe, 20) == "short", "a head longer than the content cannot match"
    finally:
        os.close(probe)


def test_head_match_is_none_without_a_matching_checkpoint(tmp_path: Path) -> None:
    c = Checkpointer(tmp_path / "state")
    c.update("fp:a", FileCheckpoint("s", "/a", 0, "0" * 24, 4))
    probe = _open(tmp_path, "copy", b"abcdef\n")
    try:
        assert c.head_match(probe, 7) is None
    finally:
        os.close(probe)
