"""MTEB (the `mteb` package, 2.x) over any gemb embedding function: `GembEncoder`.

    encoder = GembEncoder.from_bundle("bundle/")            # or .from_checkpoint(config, workdir)
    result = mteb.evaluate(encoder, mteb.get_tasks(tasks=["STS12"]), cache=None)

MTEB calls `encode(dataloader, task_metadata=..., prompt_type=...)` with batches of columns
({"text": [str], "image": [PIL image], "audio": [{"array", "sampling_rate"}], "video": [...]});
each row becomes one gemb input, a list of parts in gemb's modality order, and its first text part
gets the task string that `task_strings` gives for the task and side (gemb's
"task: {task_string} | query: {text}", features.TASK_STRING_FORMAT). The table is looked up with
MTEB's own priority order (`mteb.models.abs_encoder.get_prompt`):

  "<task name>-<query|document>", "<task name>", "<task type>-<query|document>", "<task type>",
  "<query|document>"

A key whose value is None or "" means no task string (it can switch a broader key off). MTEB asks
for `prompt_type=None` on symmetric tasks (STS, classification, clustering), so a plain task-type
key covers both sides there; retrieval documents get no task string unless the table says so.
The model needs torch and mteb only here: gemb itself never imports them.
"""
from __future__ import annotations

import os
from typing import Any, Mapping, Sequence

import numpy as np
from mteb.models.abs_encoder import AbsEncoder, get_prompt
from mteb.models.model_meta import ModelMeta

from gemb.data import audio as audio_lib
from gemb.data import features, packing
from gemb.evaluate.embeddings import EmbedFn, Input, embed_in_chunks, mrl_prefix

# gemb task strings per MTEB task type and side, in the wording of EmbeddingGemma's model card
# (its prompts are "task: {task} | query: {text}", gemb's format). A model trained with other task
# strings should be evaluated with those: pass `task_strings=` (see docs/mteb.md).
DEFAULT_TASK_STRINGS: dict[str, str | None] = {
    "Retrieval-query": "search result",
    "Reranking-query": "search result",
    "InstructionRetrieval-query": "search result",
    "InstructionReranking-query": "search result",
    "Any2AnyRetrieval-query": "search result",
    "Any2AnyMultilingualRetrieval-query": "search result",
    "Any2AnyReranking-query": "search result",
    "STS": "sentence similarity",
    "PairClassification": "sentence similarity",
    "Summarization": "sentence similarity",
    "BitextMining": "sentence similarity",
    "Classification": "classification",
    "MultilabelClassification": "classification",
    "Clustering": "clustering",
}


def task_string(table: Mapping[str, str | None], task_metadata, prompt_type) -> str | None:
  """The gemb task string for one encode call (None: none), by MTEB's prompt priority order."""
  return get_prompt(dict(table), task_metadata, prompt_type) or None


def _image(value) -> Any:
  """A PIL image, a [3, H, W] tensor or an [H, W, 3] array -> gemb's uint8[H, W, 3] (or a path)."""
  if isinstance(value, (str, os.PathLike)):
    return value
  if hasattr(value, "convert"):  # PIL
    return np.asarray(value.convert("RGB"), np.uint8)
  array = np.asarray(value)
  if array.ndim == 3 and array.shape[0] in (1, 3) and array.shape[-1] not in (1, 3):
    array = array.transpose(1, 2, 0)
  if array.ndim == 3 and array.shape[-1] == 1:
    array = np.repeat(array, 3, axis=-1)
  return array


def _audio(value) -> Any:
  """MTEB's {"array": [N] or [C, N], "sampling_rate"} -> gemb's float32[N] mono at 16 kHz."""
  if isinstance(value, (str, os.PathLike)):
    return value
  wave = np.asarray(value["array"])
  if wave.ndim == 2 and wave.shape[0] < wave.shape[1]:  # MTEB's [C, N] -> gemb's [N, C]
    wave = wave.T
  return audio_lib.resample(audio_lib.to_float_mono(wave), int(value["sampling_rate"]),
                            features.RAW_AUDIO_RATE)


def _video(value, fps: float, max_frames: int | None) -> Any:
  """A torchcodec decoder (frames sampled at `fps`), [T, 3, H, W] tensor or [T, H, W, 3] array
  -> gemb's uint8[T, H, W, 3] (or a path)."""
  if isinstance(value, (str, os.PathLike)):
    return value
  if hasattr(value, "get_frames_at"):
    from mteb.models.modality_collators import FramesCollator  # pylint: disable=g-import-not-at-top
    value = FramesCollator.resample_video(value, fps=fps, max_frames=max_frames)
  frames = np.asarray(value)
  if frames.ndim == 4 and frames.shape[1] in (1, 3) and frames.shape[-1] not in (1, 3):
    frames = frames.transpose(0, 2, 3, 1)
  return frames


def batch_inputs(batch: Mapping[str, Any], video_fps: float = 8.0,
                 max_video_frames: int | None = None) -> list[Input]:
  """One MTEB batch of columns -> one gemb input per row (its parts in gemb's modality order)."""
  present = [m for m in packing.MODALITIES if batch.get(m) is not None]
  if not present:
    raise ValueError(f"an MTEB batch with columns {sorted(batch)} has none of gemb's modalities "
                     f"{packing.MODALITIES}; this task's inputs cannot be embedded.")
  convert = {"text": lambda v: v, "image": _image, "audio": _audio,
             "video": lambda v: _video(v, video_fps, max_video_frames)}
  inputs = []
  for row in range(len(batch[present[0]])):
    parts = [{m: convert[m](batch[m][row])} for m in present if batch[m][row] is not None]
    if len(parts) > 1:  # an empty title+text beside an image carries nothing
      parts = [p for p in parts if p.get("text", "x") != ""] or parts
    inputs.append(parts)
  return inputs


def model_meta(name: str, embed_dim: int, *, n_parameters: int | None = None,
               max_tokens: int | None = None, modalities: Sequence[str] = ("text",),
               mrl_dim: int | None = None) -> ModelMeta:
  """MTEB's ModelMeta of a gemb model: JAX, cosine, task-string instructions, nothing claimed
  that gemb does not know (revision, release date, license, training data stay None)."""
  if "/" not in name:
    name = f"gemb/{name}"  # MTEB names are 'organisation/model'
  return ModelMeta(
      loader=None, name=name, revision=None, release_date=None, languages=None,
      n_parameters=n_parameters, memory_usage_mb=None, max_tokens=max_tokens,
      embed_dim=int(mrl_dim or embed_dim), license=None, open_weights=None,
      public_training_code=None, public_training_data=None, framework=["JAX"],
      similarity_fn_name="cosine", use_instructions=True,
      training_datasets=None, modalities=list(modalities),
      experiment_kwargs={"mrl_dim": int(mrl_dim)} if mrl_dim else None)


class GembEncoder(AbsEncoder):
  """MTEB's EncoderProtocol over a gemb `embed_fn(inputs) -> [N, D]` (see the module docstring).

  Args:
    embed_fn: a gemb embedding function (raw inputs -> [N, D]); rows need not be unit norm.
    name: the model name in MTEB's results ('gemb/<name>' unless it has an organisation).
    embed_dim: D, the width embed_fn returns.
    task_strings: {MTEB prompt key: gemb task string or None}; default DEFAULT_TASK_STRINGS.
    mrl_dim: evaluate the re-normalised first `mrl_dim` coordinates (MRL) instead of all D.
    n_parameters, max_tokens, modalities: for the ModelMeta (MTEB checks task modalities).
    video_fps, max_video_frames: how frames are sampled from a video MTEB hands over decoded
      lazily (a torchcodec decoder); the model's featurisation settings.
  """

  def __init__(self, embed_fn: EmbedFn, *, name: str, embed_dim: int,
               task_strings: Mapping[str, str | None] | None = None, mrl_dim: int | None = None,
               n_parameters: int | None = None, max_tokens: int | None = None,
               modalities: Sequence[str] = ("text",), video_fps: float = 8.0,
               max_video_frames: int | None = None):
    if mrl_dim is not None and not 1 <= mrl_dim <= embed_dim:
      raise ValueError(f"mrl_dim={mrl_dim} is outside 1..{embed_dim} (the embedding width).")
    self.embed_fn, self.embed_dim, self.mrl_dim = embed_fn, int(embed_dim), mrl_dim
    self.task_strings = dict(DEFAULT_TASK_STRINGS if task_strings is None else task_strings)
    self.video_fps, self.max_video_frames = video_fps, max_video_frames
    self.mteb_model_meta = model_meta(name, embed_dim, n_parameters=n_parameters,
                                      max_tokens=max_tokens, modalities=modalities,
                                      mrl_dim=mrl_dim)

  def encode(self, inputs, *, task_metadata, hf_split: str, hf_subset: str, prompt_type=None,
             **kwargs) -> np.ndarray:
    """MTEB's DataLoader of batches -> float32 [N, mrl_dim or D] (unit rows when mrl_dim)."""
    del hf_split, hf_subset, kwargs  # batch_size: the DataLoader's batches are used as they come
    string = task_string(self.task_strings, task_metadata, prompt_type)
    out = []
    for batch in inputs:
      rows = batch_inputs(batch, self.video_fps, self.max_video_frames)
      if string is not None:
        rows = [features.with_task_string(parts, string) for parts in rows]
      out.append(embed_in_chunks(self.embed_fn, rows, max(len(rows), 1)))  # checks shape, finite
    embeddings = np.concatenate(out) if out else np.zeros((0, self.embed_dim), np.float32)
    if embeddings.shape[1:] != (self.embed_dim,):
      raise ValueError(f"embed_fn returned width {embeddings.shape[1]}; this GembEncoder was built "
                       f"with embed_dim={self.embed_dim}.")
    return mrl_prefix(embeddings, self.mrl_dim) if self.mrl_dim else embeddings

  @classmethod
  def from_bundle(cls, path: str, *, name: str | None = None, **kwargs) -> GembEncoder:
    """A serving bundle (`gemb.serve.load`): long texts are truncated to the bundle's limits as
    MTEB expects of a model; `mrl_dim` must be one of the bundle's MRL dims."""
    from gemb import serve  # pylint: disable=g-import-not-at-top  (jax only when used)
    embedder = serve.load(path)
    if kwargs.get("mrl_dim") is not None:
      embedder.check_mrl_dim(kwargs["mrl_dim"])
    feature_cfg = embedder.feature_config()
    kwargs = {"n_parameters": embedder.manifest["model"].get("parameters"),
              "max_tokens": feature_cfg.max_text_tokens, "modalities": embedder.modalities,
              "video_fps": feature_cfg.video_fps,
              "max_video_frames": feature_cfg.max_video_frames, **kwargs}
    return cls(lambda inputs: embedder.embed(inputs, truncate=True),
               name=name or os.path.basename(os.path.normpath(path)),
               embed_dim=embedder.embed_dim, **kwargs)

  @classmethod
  def from_checkpoint(cls, config, workdir: str, reference: str | None = None, *,
                      name: str | None = None, **kwargs) -> GembEncoder:
    """A training checkpoint: `reference` as `--mode=eval` takes it ('stage', 'stage:step' or a
    path; default the last stage's latest), embedded by gemb.embed.make_embed_fn on config.mesh."""
    # pylint: disable=g-import-not-at-top  (flax and orbax only when used)
    import jax
    from gemb import sharding
    from gemb.embed import make_embed_fn
    from gemb.train import checkpoints
    path = checkpoints.resolve(reference or config.stage_order[-1], workdir)
    mesh = sharding.make_mesh(config.mesh)
    graphdef, params, rest = checkpoints.load_encoder(config.model, mesh, path)
    # '<workdir>/<stage>/checkpoints/<step>' -> '<workdir>-<stage>-<step>'
    stage, step = os.path.basename(os.path.dirname(os.path.dirname(path))), os.path.basename(path)
    feature_cfg = features.FeatureConfig.from_config(config.model)
    kwargs = {"n_parameters": sum(x.size for x in jax.tree.leaves(params)),
              "max_tokens": feature_cfg.max_text_tokens, "modalities": packing.MODALITIES,
              "video_fps": feature_cfg.video_fps,
              "max_video_frames": feature_cfg.max_video_frames, **kwargs}
    return cls(make_embed_fn(config.model, graphdef, params, rest, mesh),
               name=name or f"{os.path.basename(os.path.normpath(workdir))}-{stage}-{step}",
               embed_dim=config.model.embed_dim, **kwargs)
