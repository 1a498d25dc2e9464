"""Where training and evaluation examples come from: ToyWorld, JSONL manifests, TFDS."""
