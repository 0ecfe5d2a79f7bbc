"""DDPM features: per-(timestep, decoder block) maps of a frozen DDPM, batched, cached per tile, sharded."""
