"""lmms-eval task definitions that lmms-eval does not ship (pass this folder as ``--include_path``)."""
