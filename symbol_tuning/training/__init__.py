"""Training: device meshes and rules, the sharded train state and step, losses, optimizers, the loop,
checkpoints, metrics and the accelerator facts the memory planner uses. No TensorFlow or SeqIO here."""
