"""Data: folder readers, deterministic splits, the embedded synthetic sets, DataModules."""
