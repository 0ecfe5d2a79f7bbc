"""The screening table of BENCHMARKS.md from label-efficiency run folders (finished runs only).

    python benchmarks/screen_table.py runs/le_screen [runs/le_screen_pj:pj ...]

Each argument is an experiment folder, optionally with a suffix appended to its method names
(``:pj``), so that runs of another data setting appear as their own rows; baselines found in the
first folder are the reference of every gain.  Prints the markdown table (paired bootstrap
intervals, as ``label-efficiency`` writes them) over the (fold, seed) pairs each method has.
"""

import json
import sys
from pathlib import Path

from diffhrnet_lab.experiments.label_efficiency import markdown, run_row, summarise

rows = []
for arg in sys.argv[1:]:
    folder, _, suffix = arg.partition(":")
    for f in sorted(Path(folder).glob("runs/*/*/summary.json")):
        method, b, s = f.parent.name.rsplit("_", 2)
        if suffix and method in ("ddpm_mlp",):
            continue  # never reads the RGB input: the first folder's runs stand for it
        name = f"{method}_{suffix}" if suffix else method
        rows.append(run_row(json.loads(f.read_text()), name, f.parent.parent.name, int(b[1:]), int(s[1:])))
print(markdown(summarise(rows)))
