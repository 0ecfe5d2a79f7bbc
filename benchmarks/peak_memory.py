"""Peak memory of a command, split the way an out-of-memory kill sees it (Linux).

    python benchmarks/peak_memory.py .venv/bin/diffhrnet-lab demo --out runs/demo

``/usr/bin/time`` reports the peak resident set, which counts the pages of memory-mapped files
(the feature cache) that the command has read. The kernel can drop those under pressure and read
them again; it cannot drop anonymous memory (tensors computed and held). This samples the
command's process tree every 0.2 s and prints one JSON line: the peak of the summed anonymous
memory (``RssAnon``), the peak of the summed resident set (``VmRSS``) and the wall time.
"""

import json
import subprocess
import sys
import time
from pathlib import Path


def tree(pid: int) -> list[int]:
    """``pid`` and its descendants, from ``/proc/<pid>/task/*/children``."""
    out, todo = [], [pid]
    while todo:
        p = todo.pop()
        out.append(p)
        for task in Path(f"/proc/{p}/task").glob("*/children"):
            try:
                todo += [int(c) for c in task.read_text().split()]
            except OSError:
                pass
    return out


def status_mb(pid: int, field: str) -> float:
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith(field + ":"):
                return int(line.split()[1]) / 1024
    except OSError:
        pass
    return 0.0


def main(cmd: list[str]) -> int:
    t0 = time.time()
    proc = subprocess.Popen(cmd)
    peak_anon = peak_rss = 0.0
    while proc.poll() is None:
        pids = tree(proc.pid)
        peak_anon = max(peak_anon, sum(status_mb(p, "RssAnon") for p in pids))
        peak_rss = max(peak_rss, sum(status_mb(p, "VmRSS") for p in pids))
        time.sleep(0.2)
    print(json.dumps({"peak_anon_mb": round(peak_anon), "peak_rss_mb": round(peak_rss),
                      "wall_s": round(time.time() - t0, 1), "rc": proc.returncode}))
    return proc.returncode


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
