"""Export of a trained encoder for serving: see gemb/export/bundle.py."""
