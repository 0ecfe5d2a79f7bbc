"""Fifth GPU pass (issue 15): blocking against non-blocking copies of pinned batches, float32 and
8-bit transport, fine-tuning with the small and the full-profile HRNet (eager)."""
import dataclasses, time

import diffhrnet_lab.training.accelerator as A
from diffhrnet_lab.config import profile_config, replace
from diffhrnet_lab.experiments import pipeline_bench as pb
from gpu_common import T0, TINY, emitter

ORIG = A.DataLoaderConfiguration
emit = emitter("gpu5.jsonl")


def run(cfg, steps, warm, compact, nb):
    A.DataLoaderConfiguration = lambda **kw: ORIG(**{**kw, "non_blocking": nb})
    try:
        return pb.bench_finetune(cfg, steps, warm, compact=compact)
    finally:
        A.DataLoaderConfiguration = ORIG


full = profile_config("full")
ft = dataclasses.replace(full, data=replace(full.data, crop_size=64 if TINY else 256, batch_size=2 if TINY else 8),
                         model=replace(full.model, variant="w18_small"),
                         train=replace(full.train, num_workers=0 if TINY else 4, compile=""))
ftw = dataclasses.replace(full, data=replace(full.data, crop_size=64 if TINY else full.data.crop_size,
                                             batch_size=2 if TINY else full.data.batch_size),
                          train=replace(full.train, num_workers=0 if TINY else 4, compile=""))
for rep in range(2):
    for nb in (False, True):
        for compact in (False, True):
            tag = f"{'nonblocking' if nb else 'blocking'}_{'compact' if compact else 'float'}_rep{rep}"
            emit(f"finetune_w18s_256x8_eager_{tag}", lambda: run(ft, 3 if TINY else 30, 1 if TINY else 5, compact, nb))
for nb in (False, True):
    for compact in (False, True):
        tag = f"{'nonblocking' if nb else 'blocking'}_{'compact' if compact else 'float'}"
        emit(f"finetune_w48_full_settings_eager_{tag}", lambda: run(ftw, 3 if TINY else 12, 1 if TINY else 3, compact, nb))
print("done in", round(time.time() - T0), "s", flush=True)
