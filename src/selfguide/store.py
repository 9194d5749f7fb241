"""The stage store: JSONL records, atomic files and the write-last manifest.

Layout: runs/<name>/<task>/<stage>/ with `stage.json` (config + input hash, written first),
record files appended in whole units (one write + fsync per round or chunk), derived outputs,
and `MANIFEST.json`, written last and atomically: its existence means the stage is complete.
"""

from __future__ import annotations

import errno
import json
import logging
import os
import platform
import shutil
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable, Iterator, Optional, Sequence

from selfguide.config import diff_keys
from selfguide.errors import SelfGuideError, StageStateError

log = logging.getLogger(__name__)

SCHEMA = 1
MANIFEST = "MANIFEST.json"
STAGE_FILE = "stage.json"
ELAPSED = "elapsed.json"  # work time of earlier, interrupted invocations that is kept on disk


def atomic_write_text(path: Path, text: str) -> None:
    """Write via a temp file in the same folder, fsync, then rename: never a half file."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as fh:
            fh.write(text)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise


def atomic_write_json(path: Path, data: Any) -> None:
    atomic_write_text(path, json.dumps(data, indent=2, ensure_ascii=False, sort_keys=True) + "\n")


def dumps_record(record: dict[str, Any]) -> str:
    # ensure_ascii keeps every record on one line whatever the model wrote (U+2028, lone surrogates)
    return json.dumps(record, ensure_ascii=True, sort_keys=True)


def append_records(path: Path, records: Iterable[dict[str, Any]]) -> None:
    """Append records as one write, then fsync, so a unit of work lands whole or is cut at the end."""
    blob = "".join(dumps_record(r) + "\n" for r in records)
    if not blob:
        return
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "a", encoding="utf-8") as fh:
        fh.write(blob)
        fh.flush()
        os.fsync(fh.fileno())


def write_records(path: Path, records: Iterable[dict[str, Any]]) -> None:
    atomic_write_text(path, "".join(dumps_record(r) + "\n" for r in records))


def read_records(path: Path, *, repair: bool = False) -> list[dict[str, Any]]:
    """Read a JSONL file. A truncated last line (a crash mid-write) is dropped with a warning,
    and with `repair=True` cut from the file; a bad line elsewhere is an error naming path:line."""
    if not path.exists():
        return []
    data = path.read_bytes()
    lines = data.split(b"\n")
    out: list[dict[str, Any]] = []
    good_bytes = 0
    for i, line in enumerate(lines):
        is_last = i == len(lines) - 1
        if not line.strip():
            good_bytes += len(line) + (0 if is_last else 1)
            continue
        try:
            if is_last:
                raise ValueError("no newline at end: truncated")
            record = json.loads(line.decode("utf-8"))
            if not isinstance(record, dict):
                raise ValueError("not an object")
        except (ValueError, UnicodeDecodeError) as exc:
            if is_last:
                log.warning("%s: dropping a truncated last line (%d bytes) left by an interrupted write", path, len(line))
                if repair:
                    with open(path, "r+b") as fh:
                        fh.truncate(good_bytes)
                break
            raise SelfGuideError(f"{path}:{i + 1}: corrupt record ({exc}); delete the stage folder or run with --force") from None
        out.append(record)
        good_bytes += len(line) + 1
    return out


def file_hash(path: Path) -> str:
    """sha256 prefix of a file's bytes: the identity of an upstream stage's output."""
    import hashlib

    h = hashlib.sha256()
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()[:16]


def versions() -> dict[str, str]:
    """Versions of what produced a result (read from metadata: imports nothing heavy)."""
    from importlib import metadata

    out = {"python": platform.python_version()}
    for pkg in ("selfguide", "torch", "transformers", "peft", "datasets", "vllm"):
        try:
            out[pkg] = metadata.version(pkg)
        except metadata.PackageNotFoundError:
            pass
    return out


VECTOR_FLAGS = ("avx2", "fma", "avx512f", "avx512_bf16", "amx_bf16", "amx_int8")


def cpu_vector_flags() -> list[str]:
    """The CPU's vector extensions that decide engine speed and bf16 (empty where unreadable)."""
    try:
        text = Path("/proc/cpuinfo").read_text()
    except OSError:
        return []
    line = next((ln for ln in text.splitlines() if ln.startswith("flags")), "")
    have = set(line.split(":", 1)[-1].split())
    return [f for f in VECTOR_FLAGS if f in have]


# Stage folders this process is writing -> their open, flock-ed lock files.
_HELD_LOCKS: dict[str, Any] = {}


def hold_stage_lock(stage_dir: Path) -> None:
    """Refuse to write a stage that another live process is writing (two commands on one run folder).

    An advisory flock on `<stage>.lock` beside the folder (`--force` wipes the folder, not the lock).
    The kernel drops it when its process dies, so a crash never leaves a stale lock. A stage begun
    again in the same process (a retry after an exception) takes its own lock over.
    """
    try:
        import fcntl
    except ImportError:  # no advisory locks on this platform
        return
    path = stage_dir.with_name(stage_dir.name + ".lock")
    key = str(path.resolve())
    if key in _HELD_LOCKS:
        return
    path.parent.mkdir(parents=True, exist_ok=True)
    fh = open(path, "a+", encoding="utf-8")
    try:
        fcntl.flock(fh, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError:
        fh.seek(0)
        holder = fh.read().strip()
        fh.close()
        raise StageStateError(
            f"{stage_dir}: another selfguide process{f' (pid {holder})' if holder else ''} is writing this stage; "
            "wait for it to finish or stop it, then run the same command again"
        ) from None
    fh.seek(0)
    fh.truncate()
    fh.write(str(os.getpid()))
    fh.flush()
    _HELD_LOCKS[key] = fh


def release_stage_lock(stage_dir: Path) -> None:
    fh = _HELD_LOCKS.pop(str(stage_dir.with_name(stage_dir.name + ".lock").resolve()), None)
    if fh is not None:
        fh.close()


@dataclass
class Stage:
    """One stage of one task in a run directory."""

    dir: Path
    name: str
    config: dict[str, Any]  # the settings that determine this stage's output
    inputs: dict[str, Any]  # identities of what it reads (task fingerprint, model, upstream hashes)
    reuse_from: Optional[Path] = None  # the same stage in another run: adopted when its identity matches
    earlier_seconds: float = field(default=0.0, init=False)  # kept work of interrupted invocations
    clock_start: float = field(default=0.0, init=False)

    @property
    def manifest_path(self) -> Path:
        return self.dir / MANIFEST

    def manifest(self) -> Optional[dict[str, Any]]:
        if not self.manifest_path.exists():
            return None
        return json.loads(self.manifest_path.read_text(encoding="utf-8"))

    def begin(self, force: bool = False, keep: tuple[str, ...] = ()) -> str:
        """Decide what to do: 'done' (up to date), 'resume' or 'fresh'. Refuses stale results.

        A changed config or input raises StageStateError with the changed keys, unless `force`,
        which wipes the stage folder (except the files named in `keep`, which the stage checks
        itself) and redoes it. Stages whose settings did not change are kept.
        """
        wanted = {"config": self.config, "inputs": self.inputs}
        stage_file = self.dir / STAGE_FILE
        hold_stage_lock(self.dir)
        if not stage_file.exists() and self.reuse_from is not None and self._adopt(wanted):
            release_stage_lock(self.dir)
            return "done"
        if stage_file.exists():
            try:
                have = json.loads(stage_file.read_text(encoding="utf-8"))
            except ValueError:
                have = {}
            if {"config": have.get("config"), "inputs": have.get("inputs")} != wanted:
                if not force:
                    changes = diff_keys(have.get("config") or {}, self.config)
                    changes += diff_keys(have.get("inputs") or {}, self.inputs, "input ")
                    shown = "; ".join(changes[:4]) + (f"; +{len(changes) - 4} more" if len(changes) > 4 else "")
                    raise StageStateError(
                        f"{self.dir}: made with other settings ({shown}); use --force to redo it or a new --name"
                    )
                for child in self.dir.iterdir():
                    if child.name in keep:
                        continue
                    shutil.rmtree(child) if child.is_dir() else child.unlink()
            elif self.manifest_path.exists():
                release_stage_lock(self.dir)
                return "done"
            else:
                self.clock_start = time.time()
                self.earlier_seconds = self._read_elapsed()
                return "resume"
        self.dir.mkdir(parents=True, exist_ok=True)
        atomic_write_json(stage_file, {"schema": SCHEMA, "stage": self.name, **wanted})
        self.clock_start, self.earlier_seconds = time.time(), 0.0
        return "fresh"

    def _read_elapsed(self) -> float:
        try:
            return float(json.loads((self.dir / ELAPSED).read_text(encoding="utf-8"))["seconds"])
        except (OSError, ValueError, KeyError, TypeError):
            return 0.0

    def landed(self) -> None:
        """Note that a unit of work is on disk, so a resumed stage's manifest counts the time it took.

        Without this a stage resumed near its end would report only the last invocation's minutes.
        Work cut off by a crash after the last call is redone, so it is rightly not counted.
        """
        atomic_write_json(self.dir / ELAPSED, {"seconds": round(self.earlier_seconds + time.time() - self.clock_start, 2)})

    def _adopt(self, wanted: dict[str, Any]) -> bool:
        """Copy the finished stage of another run when it was made with the same settings and inputs.

        Saves recomputing what an ablation does not change (the inputs, when only annotation
        settings differ). A stage whose records name its own run folder (a trained model's path)
        is not adopted: the copy would point into the other run.
        """
        src = self.reuse_from
        assert src is not None
        try:
            have = json.loads((src / STAGE_FILE).read_text(encoding="utf-8"))
            finished = (src / MANIFEST).exists()
        except (OSError, ValueError):
            return False
        if not finished or {"config": have.get("config"), "inputs": have.get("inputs")} != wanted:
            return False
        # Stages sit one or two levels below the task folder: this covers the source task at least.
        source_folder = str(src.parent.parent)
        for f in src.rglob("*.json"):
            if source_folder in f.read_text(encoding="utf-8", errors="replace"):
                return False
        staging = self.dir.with_name(self.dir.name + ".adopting")
        shutil.rmtree(staging, ignore_errors=True)
        self.dir.parent.mkdir(parents=True, exist_ok=True)
        size = sum(f.stat().st_size for f in src.rglob("*") if f.is_file())
        if size > shutil.disk_usage(self.dir.parent).free:
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), str(self.dir))
        try:
            shutil.copytree(src, staging)
        except OSError:  # shutil.Error (an OSError) gathers the per-file errors and drops their errno
            shutil.rmtree(staging, ignore_errors=True)
            raise
        os.replace(staging, self.dir)
        log.info("%s: adopted from %s (same settings and inputs)", self.name, src)
        return True

    def skip(self, task_id: str) -> dict[str, Any]:
        """The manifest of a stage that is up to date, saying how to redo it (--force redoes only
        stages whose identity changed, so the way to redo an unchanged one is to delete it)."""
        log.info("%s[%s]: up to date, skipping (delete %s to redo it)", self.name, task_id, self.dir)
        return self.manifest()  # type: ignore[return-value]

    def units(self, filename: str, units: Sequence[Sequence[str]], key: str = "id") -> "UnitLog":
        """The stage's records file, worked in units (a round, a chunk, a batch); see UnitLog."""
        return UnitLog(self, self.dir / filename, units, key)

    def finish(self, counts: dict[str, Any], started: float, **extra: Any) -> dict[str, Any]:
        manifest = {
            "schema": SCHEMA,
            "stage": self.name,
            "config": self.config,
            "inputs": self.inputs,
            "counts": counts,
            "seconds": round(self.earlier_seconds + time.time() - started, 2),
            "seconds_this_invocation": round(time.time() - started, 2),
            "finished_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
            "versions": versions(),
            **extra,
        }
        atomic_write_json(self.manifest_path, manifest)
        release_stage_lock(self.dir)
        return manifest


class UnitLog:
    """A records file written in whole units, each the records of known keys (unit i: `units[i]`).

    Opening it keeps the records of complete units only (a unit cut short by a crash is dropped
    and redone), iterating yields the indexes of the units still to do, in order, and `land`
    appends one unit's records in one write and notes the time on disk. A resumed stage thus
    writes exactly what an uninterrupted one would, without redoing or duplicating a unit.
    """

    def __init__(self, stage: Stage, path: Path, units: Sequence[Sequence[str]], key: str):
        self.stage, self.path, self.key = stage, path, key
        self.unit_keys = [list(u) for u in units]
        existing = read_records(path, repair=True)
        seen: dict[str, dict[str, Any]] = {}
        for r in existing:
            seen.setdefault(r[key], r)
        self.complete = [all(k in seen for k in keys) for keys in self.unit_keys]
        wanted = {k for keys, ok in zip(self.unit_keys, self.complete) if ok for k in keys}
        self.records = [r for k, r in seen.items() if k in wanted]
        if len(self.records) != len(existing):
            log.warning("%s: dropping %d records of unfinished units", path, len(existing) - len(self.records))
            write_records(path, self.records)

    @property
    def done_count(self) -> int:
        return sum(len(keys) for keys, ok in zip(self.unit_keys, self.complete) if ok)

    def __iter__(self) -> Iterator[int]:
        for i, ok in enumerate(self.complete):
            if not ok:
                yield i

    def land(self, index: int, records: list[dict[str, Any]]) -> None:
        got = sorted(r[self.key] for r in records)
        if got != sorted(self.unit_keys[index]):
            raise SelfGuideError(f"{self.path}: unit {index} produced records {got[:3]}..., expected {self.unit_keys[index][:3]}...")
        append_records(self.path, records)
        self.stage.landed()
        self.records.extend(records)
        self.complete[index] = True
