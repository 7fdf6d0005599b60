"""Package data: the shipped synthetic test split (synth_test.jsonl)."""
