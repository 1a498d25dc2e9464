"""Export of a trained encoder: a serving bundle (bundle.py) or a Hugging Face folder (hf.py)."""
