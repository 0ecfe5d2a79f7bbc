"""The two training loops (DDPM pretraining, fine-tuning) and what they share: Accelerator, step-indexed
loading, checkpoints with exact resume, learning-rate schedules."""
