"""Importance of every prunable unit: learned gates and the criteria they are compared with."""

#: Every importance criterion, in the order commands list them (one tuple, read by the CLI too).
#: `slimming` is `bn` after Network Slimming's sparsity-training phase (workflows.recipe).
CRITERIA = ("gate", "magnitude", "bn", "slimming", "taylor", "random")
