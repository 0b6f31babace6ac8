"""`param-decomp study`: a grid of pretraining runs that differ only in named overrides, run at
several seeds, skipped when done, and written up as markdown with a plot (SPEC S16)."""
