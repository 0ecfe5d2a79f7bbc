"""Join a rotation with baseline variants run beside it under other settings, into one committed json.

    python benchmarks/rotation_json.py OUT.json runs/le_rot_b12 runs/le_rot_b01:ddpm_mlp:ddpm_mlp_b01

The first folder is the rotation (its ``label_efficiency.json``: command, settings, rows).  Each
further argument is ``folder:method:new_name``: that folder's rows of ``method`` join the table as
``new_name`` and become a baseline of every paired gain, their command and settings kept under
``variants``.  The variant's runs must be paired with the rotation's (same folds, seeds and training
scenes): `label-efficiency` draws the scenes from (fold, budget, seed) only, and this is checked.
Writes OUT.json and OUT.png (the rotation plot) and prints the markdown tables.
"""

import json
import sys
from pathlib import Path

from diffhrnet_lab.explore.viz import save_figure
from diffhrnet_lab.fileio import atomic_write_json
from diffhrnet_lab.experiments.label_efficiency import BASELINES, check_paired, markdown, plot, summarise

out = Path(sys.argv[1])
result = json.loads((Path(sys.argv[2]) / "label_efficiency.json").read_text())
le = result["settings"]["label_efficiency"]
rows, baselines, variants = list(result["rows"]), list(BASELINES), {}
for arg in sys.argv[3:]:
    folder, method, name = arg.split(":")
    extra = json.loads((Path(folder) / "label_efficiency.json").read_text())
    rows += [{**r, "method": name} for r in extra["rows"] if r["method"] == method]
    baselines.append(name)
    variants[name] = {"method": method, "command": extra["command"], "settings": extra["settings"]}
check_paired(rows, list(dict.fromkeys(r["method"] for r in rows)))
result.update(rows=rows, variants=variants,
              summary=summarise(rows, le["bootstrap_resamples"], le["bootstrap_seed"], le["confidence"], baselines))
atomic_write_json(out, result)
save_figure(plot(result["summary"], le["confidence"]), out.with_suffix(".png"))
print(markdown(result["summary"], le["confidence"]))
