"""Importance of every prunable unit: learned gates and the criteria they are compared with."""
