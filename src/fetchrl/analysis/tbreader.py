"""Read scalar curves back from a run's TensorBoard event files, with TensorBoard's own reader.

A run directory (``RunPaths.tb_dir``, e.g. ``runs/ppo/FetchReachDense-v4/seed0/``) holds one event
file per training process: a resumed run appends a second file. :func:`read_scalars` reads every
``events.out.tfevents.*`` file in the directory (not its sub-directories), merges them per tag,
sorts by step and keeps the *last written* value of any step logged twice, so a resumed run reads
as one curve.
"""

from __future__ import annotations

import struct
from collections.abc import Sequence
from pathlib import Path
from typing import NamedTuple

import numpy as np
from tensorboard.backend.event_processing.event_accumulator import SCALARS, EventAccumulator
from tensorboard.compat.tensorflow_stub.pywrap_tensorflow import masked_crc32c

from fetchrl import metrics
from fetchrl.errors import FetchRLError

#: Prefix of every TensorBoard event file name.
EVENT_FILE_PREFIX = "events.out.tfevents."


class Series(NamedTuple):
    """One scalar curve.

    steps: [n] int64, strictly increasing environment steps (SB3 logs ``num_timesteps``).
    values: [n] float64, the logged value at each step (may be NaN/inf if training logged them).
    """

    steps: np.ndarray
    values: np.ndarray


def event_files(logdir: Path) -> list[Path]:
    """The event files directly inside ``logdir``, sorted by name (creation time, then writer)."""
    return sorted(p for p in Path(logdir).glob(f"{EVENT_FILE_PREFIX}*") if p.is_file())


def _runs_below(logdir: Path, limit: int = 5) -> list[str]:
    """Sub-directories of ``logdir`` that hold event files (for a helpful error message)."""
    found = sorted({str(p.parent.relative_to(logdir)) for p in logdir.rglob(f"{EVENT_FILE_PREFIX}*")})
    return found[:limit]


def check_event_file(path: Path) -> int:
    """Walk the TFRecord framing of one event file and return its record count.

    Each record is ``uint64 length | uint32 masked_crc32c(length) | data | uint32 masked_crc32c(data)``.
    TensorBoard's reader stops silently at the first bad record, so a file cut short or overwritten
    would read as a shorter (or empty) run and be judged healthy; here it is named instead.

    Raises:
        FetchRLError (exit code 2): the file is truncated or a checksum does not match; the message
        names the file, the byte offset and how much of the file is readable.
    """
    data = Path(path).read_bytes()
    size, offset, records = len(data), 0, 0
    while offset < size:
        problem = None
        if size - offset < 12:
            problem = f"truncated record header at byte {offset}"
        else:
            header = data[offset:offset + 8]
            (length,) = struct.unpack("<Q", header)
            if struct.unpack("<I", data[offset + 8:offset + 12])[0] != masked_crc32c(header):
                problem = f"bad record header checksum at byte {offset} (not an event file, or overwritten)"
            elif offset + 12 + length + 4 > size:
                problem = f"truncated: record at byte {offset} needs {length + 16} bytes, {size - offset} left"
            else:
                body = data[offset + 12:offset + 12 + length]
                crc = struct.unpack("<I", data[offset + 12 + length:offset + 16 + length])[0]
                if crc != masked_crc32c(body):
                    problem = f"bad data checksum in the record at byte {offset}"
        if problem is not None:
            raise FetchRLError(f"corrupt TensorBoard event file {path}: {problem}; {records} whole record(s) "
                               f"before it of {size} bytes (move the file away, or retrain the seed)")
        offset += 16 + length
        records += 1
    return records


def _load_file(path: Path) -> dict[str, list[tuple[int, float, float]]]:
    """``{tag: [(step, wall_time, value), ...]}`` of one event file, every point kept."""
    check_event_file(path)
    # size_guidance 0 = keep every point (the default reservoir-samples 10,000 per tag);
    # purge_orphaned_data=False: duplicate steps are resolved below, the same way for every file.
    acc = EventAccumulator(str(path), size_guidance={SCALARS: 0}, purge_orphaned_data=False)
    acc.Reload()
    return {
        tag: [(int(e.step), float(e.wall_time), float(e.value)) for e in acc.Scalars(tag)]
        for tag in acc.Tags().get(SCALARS, [])
    }


def _merge(points: list[tuple[int, float, float]]) -> Series:
    """Sort by (step, wall_time) and keep the last-written value of each step."""
    points.sort(key=lambda p: (p[0], p[1]))
    steps = np.array([p[0] for p in points], dtype=np.int64)
    values = np.array([p[2] for p in points], dtype=np.float64)
    if steps.size:
        last_of_step = np.append(steps[1:] != steps[:-1], True)
        steps, values = steps[last_of_step], values[last_of_step]
    return Series(steps, values)


def read_scalars(logdir: Path, tags: Sequence[str] | None = metrics.CHAPTER_CURVES) -> dict[str, Series]:
    """Every point of the requested scalar tags in a TensorBoard run directory.

    Args:
        logdir: a run directory holding ``events.out.tfevents.*`` files (e.g. ``RunPaths.tb_dir``).
        tags: tags that must be present (default: the chapter's six curves, ``metrics.CHAPTER_CURVES``);
            ``None`` returns every scalar tag found, requiring none.

    Returns:
        ``{tag: Series}`` in the order of ``tags`` (or sorted by tag when ``tags`` is None).

    Raises:
        FetchRLError (exit code 2): the directory is missing, holds no event files, holds a truncated
        or corrupt event file (:func:`check_event_file`), or lacks a requested tag; the message names
        the directory or file and the tag.
    """
    logdir = Path(logdir)
    if not logdir.exists():
        raise FetchRLError(f"TensorBoard log directory not found: {logdir} (train first, or check --logdir)")
    if not logdir.is_dir():
        raise FetchRLError(f"not a directory: {logdir} (pass the run directory that holds the event files)")
    files = event_files(logdir)
    if not files:
        below = _runs_below(logdir)
        hint = f"; runs found below it: {', '.join(below)} — pass one of them" if below else ""
        raise FetchRLError(f"no TensorBoard event files (events.out.tfevents.*) in {logdir}{hint}")

    merged: dict[str, list[tuple[int, float, float]]] = {}
    for path in files:
        for tag, points in _load_file(path).items():
            merged.setdefault(tag, []).extend(points)
    found = {tag: pts for tag, pts in merged.items() if pts}

    wanted = sorted(found) if tags is None else list(tags)
    missing = [t for t in wanted if t not in found]
    if missing:
        have = ", ".join(sorted(found)) or "none"
        hint = ""
        if any(t.startswith("train/") for t in missing) and not any(t.startswith("train/") for t in found):
            hint = " — the run stopped before its first PPO update; train for more than one rollout"
        raise FetchRLError(
            f"{logdir}: event files lack tag(s) {', '.join(missing)} (tags present: {have}){hint}"
        )
    return {tag: _merge(found[tag]) for tag in wanted}
