"""Stage store: atomic files, truncated-line recovery, skip / resume / refuse decisions."""

from __future__ import annotations

import json

import pytest
from hypothesis import given, settings, strategies as st

from selfguide.errors import SelfGuideError, StageStateError
from selfguide.store import Stage, append_records, atomic_write_json, read_records

records_st = st.lists(st.dictionaries(st.text(min_size=1, max_size=8), st.one_of(st.text(), st.integers(), st.none()), max_size=4), max_size=6)


@settings(max_examples=60, deadline=None)
@given(records_st)
def test_roundtrip_and_truncation_at_every_byte(tmp_path_factory, records):
    path = tmp_path_factory.mktemp("s") / "r.jsonl"
    append_records(path, records)
    assert read_records(path) == records
    if not records:
        assert not path.exists()  # nothing to write: no empty file either
        return
    data = path.read_bytes()
    for cut in range(len(data) + 1):
        path.write_bytes(data[:cut])
        got = read_records(path)
        assert got == records[: len(got)]  # a prefix: never a corrupt or partial record


def test_truncated_line_repaired(tmp_path):
    path = tmp_path / "r.jsonl"
    append_records(path, [{"id": 1}, {"id": 2}])
    with open(path, "ab") as fh:
        fh.write(b'{"id": 3, "te')
    assert read_records(path, repair=True) == [{"id": 1}, {"id": 2}]
    append_records(path, [{"id": 3}])
    assert [r["id"] for r in read_records(path)] == [1, 2, 3]


def test_corrupt_middle_line_is_an_error(tmp_path):
    path = tmp_path / "r.jsonl"
    path.write_text('{"id": 1}\nnot json\n{"id": 3}\n')
    with pytest.raises(SelfGuideError, match="r.jsonl:2"):
        read_records(path)


def test_stage_begin_done_resume_refuse(tmp_path):
    s = Stage(tmp_path / "gen", "generate", {"t": 0.6}, {"model": "m"})
    assert s.begin() == "fresh"
    assert s.begin() == "resume"
    s.finish({"n": 1}, started=0.0)
    assert s.begin() == "done"
    changed = Stage(tmp_path / "gen", "generate", {"t": 0.9}, {"model": "m"})
    with pytest.raises(StageStateError, match=r"t: 0.6 -> 0.9"):
        changed.begin()
    assert changed.begin(force=True) == "fresh" and not changed.manifest_path.exists()
    changed.finish({"n": 2}, started=0.0)
    assert changed.begin(force=True) == "done"  # --force redoes changed stages only


def test_atomic_write_leaves_no_temp_files(tmp_path):
    atomic_write_json(tmp_path / "m.json", {"a": 1})
    assert json.loads((tmp_path / "m.json").read_text()) == {"a": 1}
    assert [p.name for p in tmp_path.iterdir()] == ["m.json"]


def test_stage_adopts_a_finished_stage_with_the_same_identity_only(tmp_path):
    def finished(run, stage, config, manifest_extra=None):
        s = Stage(tmp_path / run / "task" / stage, stage, config, {"task": "t"})
        assert s.begin() == "fresh"
        (s.dir / "records.jsonl").write_text('{"a": 1}\n')
        s.finish({"n": 1}, 0.0, **(manifest_extra or {}))
        return s

    src = finished("a", "generate", {"x": 1})
    copy = Stage(tmp_path / "b" / "task" / "generate", "generate", {"x": 1}, {"task": "t"}, src.dir)
    assert copy.begin() == "done" and (copy.dir / "records.jsonl").read_text() == '{"a": 1}\n'
    assert copy.manifest()["counts"] == {"n": 1}
    other = Stage(tmp_path / "c" / "task" / "generate", "generate", {"x": 2}, {"task": "t"}, src.dir)
    assert other.begin() == "fresh" and not (other.dir / "records.jsonl").exists()  # other settings: computed anew
    # a stage whose records point into its own run (a trained model's path) is never copied
    trained = finished("a", "train", {"x": 1}, {"model_dir": str(tmp_path / "a" / "task" / "train" / "model")})
    moved = Stage(tmp_path / "b" / "task" / "train", "train", {"x": 1}, {"task": "t"}, trained.dir)
    assert moved.begin() == "fresh"
    # an unfinished stage (no manifest) is not copied either
    half = Stage(tmp_path / "a" / "task" / "annotate", "annotate", {"x": 1}, {"task": "t"})
    half.begin()
    assert Stage(tmp_path / "b" / "task" / "annotate", "annotate", {"x": 1}, {"task": "t"}, half.dir).begin() == "fresh"
    assert not list((tmp_path / "b" / "task").glob("*.adopting"))


def test_adopting_a_stage_onto_a_full_disk_says_so_and_leaves_no_partial_copy(tmp_path, monkeypatch):
    import errno
    import shutil
    from types import SimpleNamespace

    src = Stage(tmp_path / "a" / "task" / "generate", "generate", {"x": 1}, {"task": "t"})
    src.begin()
    (src.dir / "records.jsonl").write_text('{"a": 1}\n')
    src.finish({"n": 1}, 0.0)
    monkeypatch.setattr(shutil, "disk_usage", lambda path: SimpleNamespace(total=100, used=100, free=0))
    copy = Stage(tmp_path / "b" / "task" / "generate", "generate", {"x": 1}, {"task": "t"}, src.dir)
    with pytest.raises(OSError) as caught:
        copy.begin()
    assert caught.value.errno == errno.ENOSPC  # the CLI turns this errno into "disk full ... run again to resume"
    assert not copy.dir.exists() and not list((tmp_path / "b" / "task").glob("*.adopting"))


def test_a_stage_being_written_by_another_process_is_refused(tmp_path):
    import subprocess
    import sys
    import time

    stage_dir = tmp_path / "run" / "task" / "generate"
    holder = subprocess.Popen([sys.executable, "-c", (
        "import sys, time; from pathlib import Path; from selfguide.store import hold_stage_lock; "
        f"hold_stage_lock(Path({str(stage_dir)!r})); print('held', flush=True); time.sleep(60)")],
        stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "held"
        with pytest.raises(StageStateError, match=rf"another selfguide process \(pid {holder.pid}\) is writing"):
            Stage(stage_dir, "generate", {"x": 1}, {"task": "t"}).begin()
        assert not stage_dir.exists()  # nothing written
    finally:
        holder.kill()
        holder.wait()
    time.sleep(0.1)
    s = Stage(stage_dir, "generate", {"x": 1}, {"task": "t"})
    assert s.begin() == "fresh"  # the holder died: its lock went with it
    again = Stage(stage_dir, "generate", {"x": 1}, {"task": "t"})
    assert again.begin() == "resume"  # the same process may begin its own stage again (a retry)
    again.finish({"n": 1}, 0.0)
    child = subprocess.run([sys.executable, "-c", (
        "from pathlib import Path; from selfguide.store import hold_stage_lock; "
        f"hold_stage_lock(Path({str(stage_dir)!r})); print('ok')")], capture_output=True, text=True)
    assert child.stdout.strip() == "ok"  # released after finish


def test_resumed_stage_counts_the_kept_work_of_earlier_invocations(tmp_path, monkeypatch):
    import selfguide.store as store

    now = [1000.0]
    monkeypatch.setattr(store.time, "time", lambda: now[0])
    st_dir = tmp_path / "run" / "t" / "generate"
    first = Stage(st_dir, "generate", {"a": 1}, {})
    assert first.begin() == "fresh"
    now[0] += 30  # one unit of work lands
    first.landed()
    now[0] += 7  # work after the last unit is lost in a crash: redone, so not counted
    store.release_stage_lock(st_dir)

    now[0] += 3600  # resumed an hour later
    second = Stage(st_dir, "generate", {"a": 1}, {})
    assert second.begin() == "resume"
    started = now[0]
    now[0] += 12
    manifest = second.finish({}, started)
    assert manifest["seconds"] == pytest.approx(42)
    assert manifest["seconds_this_invocation"] == pytest.approx(12)

    # a stage redone from scratch after a settings change starts its clock at zero
    third = Stage(st_dir, "generate", {"a": 2}, {})
    assert third.begin(force=True) == "fresh"
    manifest = third.finish({}, now[0] - 5)
    assert manifest["seconds"] == pytest.approx(5)


def test_unit_log_keeps_complete_units_only(tmp_path):
    s = Stage(tmp_path / "ev", "evaluate", {}, {})
    assert s.begin() == "fresh"
    units = [["a", "b"], ["c", "d"], ["e"]]
    log = s.units("records.jsonl", units)
    assert list(log) == [0, 1, 2] and log.done_count == 0
    log.land(0, [{"id": "a"}, {"id": "b"}])
    with pytest.raises(SelfGuideError, match="unit 1 produced records"):
        log.land(1, [{"id": "c"}])
    # a crash mid-unit: the file holds unit 0, half of unit 1 and a cut line
    with open(log.path, "a") as fh:
        fh.write('{"id": "c"}\n{"id": "e"}\n{"id": "d", "tr')
    again = s.units("records.jsonl", units)
    assert list(again) == [1] and again.done_count == 3  # "e" alone is unit 2, complete
    assert [r["id"] for r in read_records(again.path)] == ["a", "b", "e"]
    again.land(1, [{"id": "c"}, {"id": "d"}])
    assert list(s.units("records.jsonl", units)) == []
