"""Progress lines in a log: when stderr is not a terminal, the bar is written at most every 30 s (a batch job's log
held one update every 0.1 s)."""

import subprocess
import sys

SCRIPT = """
import time
from jaxcompare._progress import progress
for _ in progress(range(40), total=40, desc="work", enabled=True):
    time.sleep(0.02)
"""


def test_progress_to_a_pipe_writes_few_updates():
    r = subprocess.run([sys.executable, "-c", SCRIPT], capture_output=True, text=True, timeout=120, check=True)
    updates = [u for u in r.stderr.replace("\r", "\n").splitlines() if "work" in u]
    # tqdm's default (0.1 s) wrote 9 lines over the 0.8 s loop; now the first, and the last only after 30 s
    assert 1 <= len(updates) <= 2, r.stderr
