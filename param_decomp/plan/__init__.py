"""`param-decomp plan`: a config's train step compiled from shapes alone on simulated devices,
and what it costs per device (SPEC S13.5)."""
