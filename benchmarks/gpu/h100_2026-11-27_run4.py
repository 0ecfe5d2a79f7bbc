"""Fourth GPU pass (issue 15): the compiled base U-Net with inductor's layout optimisation forced
(NHWC inside the graph, NCHW module and input), with its kernel profile; HRNet-W48 fine-tuning at
the full settings, float32 against 8-bit transport (eager)."""
import dataclasses, os, time

from diffhrnet_lab.config import replace
from diffhrnet_lab.experiments import pipeline_bench as pb
from gpu_common import CUDA, T0, TINY, ddpm_variant, emitter, full

emit = emitter("gpu4.jsonl", float(os.environ.get("BUDGET", "420")))
mode = "default" if CUDA else ""
n = 3 if TINY else 12


def forced_layout():
    import torch._inductor.config as ic
    ic.force_layout_optimization = True
    try:
        return ddpm_variant(False, mode, n)
    finally:
        ic.force_layout_optimization = False


emit("ddpm_base_compile_nchw_force_layout_opt", forced_layout, need=0)
ftw = dataclasses.replace(full, data=replace(full.data, crop_size=64 if TINY else full.data.crop_size,
                                             batch_size=2 if TINY else full.data.batch_size),
                          train=replace(full.train, num_workers=0 if TINY else 4, compile=""))
for compact in (False, True):
    emit(f"finetune_{full.model.variant}_full_settings_eager_{'compact' if compact else 'float'}",
         lambda c=compact: pb.bench_finetune(ftw, 3 if TINY else 16, 1 if TINY else 4, compact=c), need=0 if TINY else 40)
print("done in", round(time.time() - T0), "s", flush=True)
