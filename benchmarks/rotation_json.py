"""Join rotations run under different settings (other DDPM blocks) into one committed json.

    python benchmarks/rotation_json.py OUT.json runs/le_rotation \
        runs/le_rot_b12:ddpm_mlp:ddpm_mlp_b12:baseline runs/le_rot_b12:diffhrnet:diffhrnet_b12

The first folder is the rotation of today's defaults: its ``label_efficiency.json`` gives the
command, the settings and the rows kept under their own names.  Each further argument is
``folder:method:new_name[:baseline]``: that folder's rows of ``method`` join the table as
``new_name`` (its command and settings kept under ``variants``); ``baseline`` makes it a baseline of
every paired gain as well.  All runs must be paired (same folds, seeds and training scenes):
`label-efficiency` draws the scenes from (fold, budget, seed) only, and this is checked.  Writes
OUT.json and OUT.png (the rotation plot) and prints the markdown tables.
"""

import json
import sys
from pathlib import Path

from diffhrnet_lab.experiments.label_efficiency import BASELINES, check_paired, markdown, plot, summarise
from diffhrnet_lab.explore.viz import save_figure
from diffhrnet_lab.fileio import atomic_write_json

out = Path(sys.argv[1])
result = json.loads((Path(sys.argv[2]) / "label_efficiency.json").read_text())
le = result["settings"]["label_efficiency"]
rows, baselines, variants = list(result["rows"]), list(BASELINES), {}
for arg in sys.argv[3:]:
    folder, method, name, *role = arg.split(":")
    extra = json.loads((Path(folder) / "label_efficiency.json").read_text())
    rows += [{**r, "method": name} for r in extra["rows"] if r["method"] == method]
    baselines += [name] if role == ["baseline"] else []
    variants[name] = {"method": method, "command": extra["command"], "settings": extra["settings"]}
order = list(dict.fromkeys([*(m for m in BASELINES if any(r["method"] == m for r in rows)), *(r["method"] for r in rows)]))
rows.sort(key=lambda r: order.index(r["method"]))  # the baselines first, whichever folder they came from
check_paired(rows, order)
result.update(rows=rows, variants=variants,
              summary=summarise(rows, le["bootstrap_resamples"], le["bootstrap_seed"], le["confidence"], baselines))
atomic_write_json(out, result)
save_figure(plot(result["summary"], le["confidence"]), out.with_suffix(".png"))
print(markdown(result["summary"], le["confidence"]))
