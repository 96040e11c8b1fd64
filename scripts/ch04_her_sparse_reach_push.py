#!/usr/bin/env python3
"""Chapter 4 — SAC + HER on sparse Reach and Push: train [--her] / eval / report / all / compare / ablation /
multi-seed / check-env / diagnose / plot / video.
A thin wrapper: the chapter is data (``fetchrl.chapters.ch04``), the CLI is ``fetchrl.cli``."""

import sys
from pathlib import Path

# Run from a checkout without installing: the package lives in src/.
sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))

from fetchrl.chapters.ch04 import CHAPTER  # noqa: E402
from fetchrl.cli import run  # noqa: E402

if __name__ == "__main__":
    run(CHAPTER)
