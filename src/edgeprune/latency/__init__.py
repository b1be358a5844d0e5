"""Latency as the budget: per-layer latency tables measured on the target, a plan that spends the
latency budget where importance is cheapest, and a closed loop that checks the result end to end.

`layers` finds the prunable convs and linears and how their widths follow the kept units;
`table` holds the measured points (cached on disk, keyed by layer signature and target
fingerprint) and interpolates between them; `profile` measures them on a target's runtime;
`predict` turns a table into the predicted latency of a plan; `knapsack` chooses the kept
channels; `closed_loop` corrects the prediction by what the target measured and plans again.
"""
