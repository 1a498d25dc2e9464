"""Writes the small example manifest shipped in gemb/datasets/example_manifest/ from ToyWorld.

  python -m gemb.datasets.make_example_manifest [--output_dir=gemb/datasets/example_manifest]

It shows every part kind of the JSONL manifest format (gemb/datasets/manifest.py): text, PNG
images, WAV audio, GIF video, interleaved image+text queries, hard negatives, and a task
without negatives. Train on it with
  --config.data.source=manifest --config.data.manifest=gemb/datasets/example_manifest/manifest.jsonl
"""
from __future__ import annotations

import os
import shutil

from absl import app, flags

from gemb.data import features
from gemb.datasets import manifest, toyworld

# task -> examples. Small on purpose: the folder stays well under 1 MB (1 s of audio is 32 kB).
EXAMPLES = {"text_to_image": 4, "image_question_to_answer": 4, "text_to_audio": 3,
            "video_to_text": 4, "sts": 4}
DEFAULT_DIR = os.path.join(os.path.dirname(__file__), "example_manifest")



def write(output_dir: str, split: str = "train", seed: int = 0) -> str:
  """Writes OUTPUT_DIR/manifest.jsonl and OUTPUT_DIR/media/; returns the manifest path."""
  shutil.rmtree(os.path.join(output_dir, "media"), ignore_errors=True)
  os.makedirs(output_dir, exist_ok=True)
  examples = [toyworld.example(task, split, i, seed)
              for task, n in EXAMPLES.items() for i in range(n)]
  path = os.path.join(output_dir, "manifest.jsonl")
  manifest.write_manifest(path, examples, fps=features.FeatureConfig.video_fps)
  return path


def main(argv):
  del argv
  path = write(flags.FLAGS.output_dir)
  size = sum(os.path.getsize(os.path.join(root, f))
             for root, _, files in os.walk(os.path.dirname(path)) for f in files)
  print(f"wrote {path} ({size / 1024:.0f} kB in all)")


if __name__ == "__main__":
  # Defined here, not on import: tests import write() beside other commands' flags.
  flags.DEFINE_string("output_dir", DEFAULT_DIR, "Where manifest.jsonl and media/ go.")
  app.run(main)
