"""Files: plans as JSON (plans), safetensors reading and writing (safetensors_io), and pruning
checkpoints on disk (checkpoint)."""
