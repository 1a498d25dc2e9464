"""pyproject.toml: `pip install .` gets the gemb package with the data files it reads at run
time."""
import os
import subprocess
import sys
import zipfile

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def test_the_wheel_holds_every_module_and_the_shipped_data(tmp_path):
  subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation",
                  "-q", "-w", str(tmp_path), ROOT], check=True, capture_output=True, timeout=300,
                 cwd=tmp_path)
  (wheel,) = [f for f in os.listdir(tmp_path) if f.endswith(".whl")]
  names = set(zipfile.ZipFile(tmp_path / wheel).namelist())
  modules = {os.path.relpath(os.path.join(d, f), ROOT).replace(os.sep, "/")
             for d, _, files in os.walk(os.path.join(ROOT, "gemb")) for f in files
             if f.endswith(".py")}
  assert modules and modules <= names, sorted(modules - names)
  assert "gemb/datasets/toyworld/tokenizer.model" in names  # config.model.tokenizer="toyworld"
  assert "gemb/datasets/example_manifest/manifest.jsonl" in names
  media = [n for n in names if n.startswith("gemb/datasets/example_manifest/media/")]
  assert len(media) == len(os.listdir(os.path.join(ROOT, "gemb/datasets/example_manifest/media")))
  metadata = zipfile.ZipFile(tmp_path / wheel).read(
      next(n for n in names if n.endswith("METADATA"))).decode()
  required = [line.split(":", 1)[1].strip() for line in metadata.splitlines()
              if line.startswith("Requires-Dist:") and "extra ==" not in line]
  assert any(r.startswith("jax") for r in required)
  assert not any(r.startswith(("torch", "transformers")) for r in required)  # tests only
