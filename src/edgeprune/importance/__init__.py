"""Importance of every prunable unit: learned gates and the criteria they are compared with."""

#: Every importance criterion, in the order commands list them (one tuple, read by the CLI too).
CRITERIA = ("gate", "magnitude", "bn", "taylor", "random")
