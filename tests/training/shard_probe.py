"""Launched by ``training/test_scaleout.py`` under ``accelerate launch`` (not a test module): the pool
items each process trains on.

Writes ``[[epoch, batch, process, tile id], ...]`` gathered from every process to ``argv[1]``.
"""

import json
import sys


def main(out: str) -> None:
    from accelerate.utils import gather_object

    from diffhrnet_lab.config import samples_dir
    from diffhrnet_lab.data.datasets import UnlabelledPool
    from diffhrnet_lab.training.accelerator import epoch_loader, make_accelerator

    accelerator = make_accelerator("no")
    if accelerator.is_main_process:
        print(f"[probe] {accelerator.num_processes} process(es) on {accelerator.device.type}")
    pool = UnlabelledPool(samples_dir() / "unlabelled", crop_size=16)
    seen = []
    for epoch in range(2):
        for b, batch in enumerate(epoch_loader(accelerator, pool, 8, seed=0, epoch=epoch)):
            seen += [[epoch, b, accelerator.process_index, i] for i in batch["id"]]
    seen = gather_object(seen)
    if accelerator.is_main_process:
        with open(out, "w") as fh:
            json.dump(seen, fh)
    accelerator.end_training()


if __name__ == "__main__":
    main(sys.argv[1])
