"""Run `sentinel-gw` (same arguments) with cProfile switchable by signal: SIGUSR1 starts profiling
the main thread (the event loop: fronts, policy, relay), SIGUSR2 stops it and writes the stats
to $BENCH_PROFILE_OUT. bench/profile_gateway.py drives it; the window covers only the load.
"""

from __future__ import annotations

import cProfile
import os
import signal
import sys
from pathlib import Path
from types import FrameType

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "src"))

from sentinel_gw.cli import main

PROFILE = cProfile.Profile()


def _start(signum: int, frame: FrameType | None) -> None:
    PROFILE.enable()


def _stop(signum: int, frame: FrameType | None) -> None:
    PROFILE.disable()
    PROFILE.dump_stats(os.environ["BENCH_PROFILE_OUT"])


if __name__ == "__main__":
    signal.signal(signal.SIGUSR1, _start)
    signal.signal(signal.SIGUSR2, _stop)
    sys.exit(main(sys.argv[1:]))
