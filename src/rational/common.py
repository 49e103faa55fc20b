"""Small helpers shared by several stages: atomic files, JSONL, seeded samplers, library versions.

Nothing here imports a heavy library at module level, so every stage (and `rational --help`) can use it.
"""

from __future__ import annotations

import fcntl
import hashlib
import json
import os
import random
import shutil
from collections.abc import Callable, Iterable, Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any, TypeVar

from .errors import UserError

T = TypeVar("T")

# ---------------------------------------------------------------------------------------------- files


def write_text_atomic(path: str | Path, text: str) -> Path:
    """Write a whole file atomically (temp file + rename): readers never see half of it."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    try:
        tmp.write_text(text, encoding="utf-8")
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)  # after a failed write or rename (disk full, PATH is a folder): no debris
    return path


def write_json(path: str | Path, obj: Any) -> Path:
    """Write one JSON document atomically (stats.json, metrics.json, train_metrics.json, ...)."""
    return write_text_atomic(path, json.dumps(obj, indent=2, ensure_ascii=False, default=str) + "\n")


def write_jsonl(path: str | Path, records: Iterable[Any]) -> Path:
    """Write records (objects with `to_dict`, or dicts) atomically: temp file + rename."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    try:
        with tmp.open("w", encoding="utf-8") as f:
            for r in records:
                d = r.to_dict() if hasattr(r, "to_dict") else r
                f.write(json.dumps(d, ensure_ascii=False) + "\n")
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)
    return path


def read_jsonl(path: str | Path, partial_last_line_ok: bool = False) -> list[dict]:
    """Read a JSONL file of objects. A bad line is a UserError naming file and line.

    partial_last_line_ok: for the project's own append-only logs (candidates.jsonl, generations.jsonl) a truncated
    LAST line means a run was killed mid-write and is skipped; in any other file (a user's prompts, a dataset) it
    is an error like any other bad line, never silently dropped.
    """
    path = Path(path)
    if not path.is_file():
        raise UserError(f"{path}: file not found")
    text = read_text(path)
    lines = text.splitlines()
    out = []
    for i, line in enumerate(lines, 1):
        if not line.strip():
            continue
        try:
            d = json.loads(line)
        except json.JSONDecodeError:
            if partial_last_line_ok and i == len(lines) and not text.endswith("\n"):  # killed while writing it
                break
            raise UserError(f"{path}:{i}: not valid JSON; fix or remove that line") from None
        if not isinstance(d, dict):
            raise UserError(f"{path}:{i}: each line must be a JSON object")
        check_text(d, f"{path}:{i}")
        out.append(d)
    return out


def numbered_json_lines(path: Path) -> Iterator[tuple[str, Any]]:
    """("file:line", parsed value) for each non-empty line of a training data file (sft, pairs, circuit-breaker
    JSONL): a line that is not JSON, or holds text that cannot be written back as UTF-8, is a UserError naming it.
    The callers check each value's shape with their own messages."""
    for lineno, line in enumerate(read_text(path).splitlines(), 1):
        if not line.strip():
            continue
        where = f"{path}:{lineno}"
        try:
            row = json.loads(line)
        except json.JSONDecodeError as e:
            raise UserError(f"{where}: not valid JSON ({e.msg}); each line must be one JSON object") from None
        check_text(row, where)
        yield where, row


def append_jsonl(path: str | Path, records: Iterable[dict]) -> None:
    """Append records to a JSONL log with a flush + fsync, so an interruption never loses a written line.

    A run killed mid-line leaves a partial last line; it is cut off before anything is appended.
    """
    path = Path(path)
    if path.exists():
        data = path.read_bytes()
        if data and not data.endswith(b"\n"):
            path.write_bytes(data[: data.rfind(b"\n") + 1])
    with path.open("a", encoding="utf-8") as f:
        for r in records:
            f.write(json.dumps(r, ensure_ascii=False) + "\n")
        f.flush()
        os.fsync(f.fileno())


def as_messages(value: Any, role: str) -> list[dict[str, str]] | None:
    """A chat (list of {role, content}) as is, or a plain string wrapped as one `role` message; None if neither."""
    if isinstance(value, str):
        return [{"role": role, "content": value}]
    if isinstance(value, list) and value and all(
        isinstance(m, dict) and isinstance(m.get("role"), str) and isinstance(m.get("content"), str) for m in value
    ):
        return [{"role": m["role"], "content": m["content"]} for m in value]
    return None


def read_text(path: str | Path) -> str:
    """A UTF-8 text file; anything else (binary, Latin-1) is a one-line error naming the file."""
    try:
        return Path(path).read_text(encoding="utf-8")
    except UnicodeDecodeError as e:
        raise UserError(f"{path}: not UTF-8 text (byte {e.start}: {e.reason}); convert it to UTF-8") from None


def check_text(value: Any, where: str) -> None:
    """Reject strings that cannot be written back as UTF-8 (lone surrogates such as "\\ud800" in JSON)."""
    try:
        json.dumps(value, ensure_ascii=False).encode("utf-8")
    except UnicodeEncodeError:
        raise UserError(f"{where}: contains an invalid character (a lone UTF-16 surrogate); fix that text") from None


# ------------------------------------------------------------------------------------------- sampling


def hash_take(items: Sequence[T], n: int, seed: int, key: Callable[[T], str] = lambda r: r.id) -> list[T]:
    """A deterministic sample of `n` items: ranked by a seeded hash of their key, independent of input order."""
    ranked = sorted(items, key=lambda r: hashlib.sha256(f"{seed}:{key(r)}".encode()).hexdigest())
    return ranked[: max(0, n)]


def round_robin(groups: dict[str, list[T]], limit: int | None) -> list[T]:
    """Up to `limit` items taken in turn from each group (groups in the given order), so every group is seen."""
    flat = [x for g in groups.values() for x in g]
    if limit is None or limit >= len(flat):
        return flat
    out, i = [], 0
    while len(out) < limit:
        for g in groups.values():
            if i < len(g) and len(out) < limit:
                out.append(g[i])
        i += 1
    return out


def balanced_take(records: Sequence[T], limit: int | None, key: Callable[[T], str] = lambda r: r.kind) -> list[T]:
    """The first `limit` records, taken round-robin across `key` (default: kind) in order of first appearance."""
    if limit is None or limit >= len(records):
        return list(records)
    groups: dict[str, list[T]] = {}
    for r in records:
        groups.setdefault(key(r), []).append(r)
    return round_robin(groups, limit)


def seeded_sample(items: Sequence[dict], limit: int | None, seed: int, key: str = "source") -> list[dict]:
    """A seeded sample of at most `limit` items, shuffled within each `key` group and taken round-robin over the
    groups in sorted order, so a small limit still covers every group."""
    if limit is None or limit >= len(items):
        return list(items)
    rng = random.Random(seed)
    groups: dict[str, list[dict]] = {}
    for it in items:
        groups.setdefault(str(it.get(key)), []).append(it)
    for g in groups.values():
        rng.shuffle(g)
    return round_robin({k: groups[k] for k in sorted(groups)}, limit)


# ------------------------------------------------------------------------------------------ provenance


def library_versions() -> dict[str, str]:
    """Python, platform and the versions of the libraries a result depends on (recorded next to every run)."""
    import platform
    from importlib.metadata import PackageNotFoundError, version

    out = {"python": platform.python_version(), "platform": platform.platform(), "processor": platform.processor()}
    for pkg in ("rational", "torch", "transformers", "trl", "peft", "accelerate", "datasets"):
        try:
            out[pkg] = version(pkg)
        except PackageNotFoundError:
            out[pkg] = "not installed"
    return out


def quiet_transformers() -> None:
    """Silence per-load progress bars ("Loading weights", "Writing model shards"); ours show progress instead."""
    from transformers.utils import logging as hf_logging

    hf_logging.disable_progress_bar()
    hf_logging.set_verbosity_error()


# ------------------------------------------------------------------------------------------ output folders


def sha256_file(path: str | Path, chunk: int = 1 << 22) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(chunk):
            h.update(block)
    return h.hexdigest()


def input_hashes(paths: Iterable[str | Path | None]) -> dict[str, str]:
    """sha256 of each input file that exists (named pools and built-in suites are versioned with the package)."""
    return {str(p): sha256_file(p) for p in paths if p and Path(p).is_file()}


@contextmanager
def output_lock(out: str | Path):
    """Hold OUT/.lock exclusively while a stage writes into OUT; a second process is refused with one line.

    flock, not a pid file: the kernel releases it when the holder dies, so a killed run never leaves a stale lock.
    """
    out = Path(out)
    try:
        out.mkdir(parents=True, exist_ok=True)
        f = open(out / ".lock", "a+", encoding="utf-8")
    except OSError as e:
        raise UserError(f"{out}: cannot write there ({e.strerror}); choose another output folder") from None
    try:
        try:
            fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            f.seek(0)
            holder = f.read().strip() or "?"
            raise UserError(f"{out}: another rational process (pid {holder}) is writing here; wait for it to "
                            "finish or use another output folder") from None
        f.seek(0)
        f.truncate()
        f.write(str(os.getpid()))
        f.flush()
        yield out
    finally:
        f.close()  # closing the file releases the lock


def clear_outputs(out: str | Path, names: Iterable[str]) -> None:
    """Remove a stage's outputs (files or folders) from OUT, e.g. before starting over with --overwrite."""
    for name in names:
        p = Path(out) / name
        if p.is_dir() and not p.is_symlink():
            shutil.rmtree(p)
        else:
            p.unlink(missing_ok=True)


class PeakMemory:
    """Peak resident memory (GB) of this process while a `with` block runs, sampled every 0.1 s from
    /proc/self/statm (Linux); elsewhere the process-wide peak so far (ru_maxrss), which cannot go down."""

    def __init__(self, interval: float = 0.1):
        import threading

        self.interval, self.peak_gb, self.start_gb = interval, 0.0, 0.0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._sample, daemon=True)

    @staticmethod
    def current_gb() -> float:
        try:
            with open("/proc/self/statm") as f:
                return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 1e9
        except (OSError, ValueError, IndexError):
            import resource
            import sys

            peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss  # KiB on Linux, bytes on macOS
            return peak / 1e9 if sys.platform == "darwin" else peak * 1024 / 1e9

    def _sample(self) -> None:
        while not self._stop.wait(self.interval):
            self.peak_gb = max(self.peak_gb, self.current_gb())

    def __enter__(self) -> "PeakMemory":
        self.start_gb = self.peak_gb = self.current_gb()
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._thread.join()
        self.peak_gb = max(self.peak_gb, self.current_gb())
