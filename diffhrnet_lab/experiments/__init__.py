"""What the kit is for: the demo, ablation sweeps, the label-efficiency study, benchmarks, the method table."""
