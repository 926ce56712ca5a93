"""What a run tells its user besides the per-step metrics: one log format (logs.py), the start and end summaries'
shared lines and frame (summary.py), real-token throughput (throughput.py) and training curves (curves.py).

What changes here: how things are shown. What each recipe shows (SimPO's rewards, SFT's token accuracy) is decided
by the recipe (simpo/train/reporting.py, simpo/sft/reporting.py)."""
