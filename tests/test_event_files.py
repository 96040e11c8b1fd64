"""A damaged TensorBoard event file is named, never read as a shorter (healthy-looking) run.

TensorBoard's own reader stops quietly at the first bad record; ``tbreader.check_event_file`` walks
the TFRecord framing (length, checksums) first. Event files here are written by SB3's real logger.
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest
from stable_baselines3.common.logger import configure

from fetchrl import metrics
from fetchrl.analysis.tbreader import check_event_file, event_files, read_scalars
from fetchrl.cli import main
from fetchrl.errors import FetchRLError

TAGS = (metrics.APPROX_KL, metrics.CLIP_FRACTION, metrics.ENTROPY_LOSS, metrics.VALUE_LOSS)


def sb3_event_file(logdir: Path, n_points: int = 40) -> Path:
    """An event file written by SB3's TensorBoard logger: ``n_points`` dumps of the train/* tags."""
    logger = configure(str(logdir), ["tensorboard"])
    for i in range(n_points):
        for tag in TAGS:
            logger.record(tag, 0.01 * (i + 1))
        logger.dump(step=(i + 1) * 8192)
    logger.close()
    (path,) = event_files(logdir)
    return path


def test_an_intact_file_reads_every_record(tmp_path: Path) -> None:
    path = sb3_event_file(tmp_path / "run")
    assert check_event_file(path) == 1 + len(TAGS) * 40  # the file-version record, then one per scalar
    assert read_scalars(path.parent, TAGS)[metrics.APPROX_KL].steps.size == 40


@pytest.mark.parametrize("damage", ["truncate_to_1000", "truncate_mid_record", "random_bytes", "flip_a_value",
                                    "zero_tail"])
def test_damaged_files_are_named(tmp_path: Path, damage: str) -> None:
    path = sb3_event_file(tmp_path / "run")
    data = bytearray(path.read_bytes())
    if damage == "truncate_to_1000":
        data = data[:1000]
    elif damage == "truncate_mid_record":
        data = data[:-7]
    elif damage == "random_bytes":
        data = bytearray(os.urandom(len(data)))
    elif damage == "flip_a_value":
        data[len(data) // 2] ^= 0x40
    else:
        data[-200:] = bytes(200)
    path.write_bytes(bytes(data))
    with pytest.raises(FetchRLError, match="corrupt TensorBoard event file") as err:
        read_scalars(path.parent, TAGS)
    assert str(path) in str(err.value) and err.value.exit_code == 2


def test_diagnose_and_plot_refuse_a_truncated_file(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """The CLI's answer: exit 2, one line naming the file, no "healthy" verdict and no PNG."""
    run = tmp_path / "runs" / "ppo" / "FetchReachDense-v4" / "seed0"
    path = sb3_event_file(run)
    path.write_bytes(path.read_bytes()[:1000])
    assert main(["diagnose", "--root", str(tmp_path), "--seed", "0"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and str(path) in err[0] and "truncated" in err[0]
    assert main(["plot", "--root", str(tmp_path), "--seed", "0"]) == 2
    assert not list(tmp_path.rglob("*.png"))
