"""Cold-start exploration: the discoverability allocation against bandit baselines.

  python -m launch.main --config=configs/proj/coldstart.py --workdir=/tmp/coldstart
writes /tmp/coldstart/coldstart/report.json and coldstart.png. Arg 'tiny' shrinks it for tests:
  --config=configs/proj/coldstart.py:tiny
Item embeddings are synthetic unless `world.embeddings_path` names a .npy [N, D]; latent quality
is then a random projection of the embedding. Arg 'toyworld' makes the items ToyWorld scenes
(caption + image + sound + video), embedded by a gemb model, with quality from the users' taste
over what the scenes are; the discoverability policy runs with the trained model's embeddings,
with the same encoder at random init, with no content and with the taste itself (the oracle),
every policy's settings tuned per budget level on the tuning day (docs/coldstart.md):
  --config=configs/proj/coldstart.py:toyworld --config.embedder.checkpoint=runs/smoke/soup \
      --config.embedder.model_config=configs/smoke.py --config.seeds="(0, 1, 2)"
Arg 'toyworld_mixed' gives each item one part (a caption, a picture, a sound or a clip) instead
of all four. The service path embeds a platform's catalogue through a serving bundle and
allocates a day's exploration traffic (WORKDIR/coldstart/allocation.jsonl):
  --config=configs/proj/coldstart.py --config.items=catalogue.jsonl --config.bundle=DIR
"""
import ml_collections


def get_config(arg=None):
  config = ml_collections.ConfigDict()
  config.job = "coldstart"
  config.seeds = ()  # e.g. (0, 1, 2): one study per seed (seeds moved by 1000 * s), mean and std
  # A catalogue JSONL (gemb/proj/coldstart/catalogue.py): the service path. On the command line
  # also `--config.items=...` (launch/main.py renames it: ConfigDict.items is a method).
  config.catalogue = ""
  config.bundle = ""  # the serving bundle that embeds it (shorthand for embedder.bundle)

  # The simulated platform: days of fresh items; quality = sigmoid(base_logit + content_scale * z
  # + noise_scale * eps), z = standardised projection of the embedding on a random direction.
  config.world = dict(
      seed=0,
      source="synthetic",  # or "toyworld": ToyWorld scenes embedded by config.embedder
      embeddings_path="",  # optional .npy [N, D] (dim/num_clusters/cluster_spread then unused)
      dim=32, num_clusters=16, cluster_spread=1.0,
      items_per_day=20_000,
      history_days=2,  # past days: randomised exploration logs that train the model
      tuning_days=1,  # a day for choosing the bandits' chunk size (not used for the report)
      eval_days=1,  # fresh days every policy explores; the report sums over them
      base_logit=-2.5, content_scale=0.8, noise_scale=0.8,
      # source="toyworld": the discoverability policy once per embedding variant.
      variants=("trained", "random_init", "no_content"),
      # The catalogue: scenes from an rng stream no training task uses; split 'train' draws the
      # training (shape, colour) pairs, 'eval' a held-out pair in every scene. Sounds as long as
      # the smoke model hears (configs/common.py toyworld_world).
      # content_types: the parts each item has (one type drawn per item); one type of all four
      # parts, or e.g. (("text",), ("image",), ("audio",), ("video",)): a platform of captions,
      # pictures, sounds and clips.
      toyworld=dict(seed=0, split="train", world=dict(audio_seconds=0.64), caption_aspect="video",
                    content_types=(("text", "image", "audio", "video"),)),
      # The users' taste: a seeded N(0, weight^2) utility per value of each attribute (0: ignored).
      taste=dict(attributes=dict(shape=1.0, colour=1.0, size=1.0, motion=1.0, position=0.0)),
  )
  # The gemb model that embeds items: a serving bundle, or a training checkpoint with the
  # training config that built it ('configs/smoke.py'); random_init uses its architecture.
  config.embedder = dict(
      bundle="", checkpoint="", model_config="", random_init_seed=0,
      batch_size=64,  # items per call of the embedding function
      combine="joint",  # all of an item's parts as one input, or "mean_of_parts"
      cache_dir="",  # default WORKDIR/coldstart/embedding_cache
  )
  # The service path (config.items): a day's exploration traffic for the catalogue.
  config.service = dict(
      budget_per_item=10,  # the day's budget = this * items in the catalogue
      # Calls a day, and this call's index: each spends what is left of the day's budget (less
      # the impressions in `engagement`) over the calls left, as the study's rounds do.
      rounds=1, round=0,
      engagement="",  # optional JSONL of {"item_id", "impressions", "clicks"} so far today
      output="",  # default WORKDIR/coldstart/allocation.jsonl (.csv: CSV)
      # The discoverability model is trained on the simulated ToyWorld platform's logs of
      # history_items past items, embedded by the same bundle, and the allocation's settings are
      # tuned on tuning_items more, at budget_per_item in `rounds` rounds (as the service spends).
      history_items=4000, tuning_items=1000,
      model=dict(batch_size=512, epochs=20, content="score"),  # over config.model, for its size
      allocation_tuning=dict(confidence=(0.2, 0.3, 0.5, 0.7), max_traffic_per_item=(100, 400),
                             hopeless_probability=(0.0, 0.1),
                             steps=((5, 10), (5, 10, 20, 40, 80, 160))),
      # Where the fit is saved, and reused from by calls with the same bundle and config;
      # default WORKDIR/coldstart/service_model.
      model_dir="",
  )
  # The exploitation recommender: posterior-mean engagement under a pessimistic Beta prior.
  config.recommender = dict(
      prior_rate=0.05, prior_impressions=20.0,  # Beta prior: mean and strength in impressions
      threshold=0.12,  # served while the estimate is >= this
      serve_step=25,  # impressions per exploitation step
      min_served=100,  # M: served at least this often = discoverable
  )
  # Logs of past items: exploration traffic log-uniform in [0, max_traffic].
  config.history = dict(
      seed=2,
      max_traffic=400,
      unexplored_fraction=0.05,
      checkpoint_fractions=(0.0, 0.25, 0.5, 0.75, 1.0),
  )
  # The discoverability model.
  config.model = dict(
      seed=0, hidden_dims=(64, 64),
      learning_rate=3e-3, weight_decay=1e-4, batch_size=4096, epochs=6,
      validation_fraction=0.2, ece_bins=15,
      # The model reads the first this many embedding dims, re-normalised (0: all).
      embedding_dims=0,
      # "embedding": the model reads the embedding; "score": one feature, the engagement logit a
      # ridge regression on the history's logs predicts from it (out of fold on the history).
      content="embedding",
  )
  # The discoverability allocation.
  config.allocation = dict(
      confidence=0.7,  # CF: explore an item until P(discoverable) reaches this
      max_traffic_per_item=400,  # never explore an item beyond this
      hopeless_probability=0.01,  # give up on items whose P(discoverable) at the cap is below this
      steps=(5, 10, 20, 40, 80, 160),  # candidate per-round steps for one item
      max_passes=16,  # passes over the items when a round's budget outlasts their first steps
  )
  # Candidates for the allocation's settings, each budget level's and policy's best chosen on the
  # tuning day(s) as the bandits' chunks are (tuning.tune_allocation); empty: config.allocation's.
  config.allocation_tuning = dict(confidence=(), max_traffic_per_item=(), hopeless_probability=(),
                                  steps=())
  # Exploration budget and rounds, shared by every policy.
  config.exploration = dict(
      seed=1,
      num_rounds=6,
      budget_per_item=(2, 5, 10, 20, 40),  # budget levels = this * items in the cohort
      default_budget_per_item=10,  # the level reported as "discoverable"
      # Time one discoverability round (re-score + allocate) at this many items; 0: skip.
      benchmark_items=1_000_000,
  )
  config.baselines = dict(
      # Impressions per chunk; each bandit's best on the tuning day.
      chunk_choices=(1, 2, 5, 10, 20, 40),
      thompson_prior_impressions=20.0,
      ucb_exploration=1.0,
      # Tuned with the chunk where given (empty: the value above).
      ucb_exploration_choices=(), thompson_prior_choices=(),
  )

  if arg == "tiny":
    config.world.items_per_day = 1500
    config.world.dim = 8
    config.world.num_clusters = 4
    _tests_size(config, batch_size=512)
    config.exploration.benchmark_items = 0
  elif arg in ("toyworld", "toyworld_mixed", "toyworld_tiny"):
    config.world.source = "toyworld"
    # oracle: the taste itself, the most any content could tell (content.py).
    config.world.variants = ("trained", "random_init", "no_content", "oracle")
    if arg == "toyworld_mixed":  # one part per item: captions, pictures, sounds and clips
      config.world.toyworld.content_types = (("text",), ("image",), ("audio",), ("video",))
    config.world.items_per_day = 3000
    # 6 history days (18,000 logged items, 27,000 scenes in all: embedding them takes ~2 min per
    # encoder, once; they are cached): with 2 the content features overfitted.
    config.world.history_days = 6
    # 2 tuning days (6000 items) choose every policy's settings: less of one day's noise.
    config.world.tuning_days = 2
    config.world.content_scale = 1.2
    # Fewer history rows than the default world: smaller batches and more epochs.
    config.model.batch_size = 512
    config.model.epochs = 20
    config.model.content = "score"  # one ridge feature: the 64-d embedding itself overfitted
    config.exploration.budget_per_item = (2, 5, 10, 20)
    # Every policy's settings are tuned per budget level on the tuning days (tuning.tune_bandits,
    # tuning.tune_allocation): the bandits' chunk and UCB's / Thompson's constants, the
    # allocation's confidence, cap, give-up probability and step sizes.
    config.baselines.chunk_choices = (1, 2, 5, 10, 20)
    config.baselines.ucb_exploration_choices = (0.01, 0.03, 0.1, 0.3, 1.0)
    config.baselines.thompson_prior_choices = (1.0, 2.0, 5.0, 20.0, 80.0)
    config.allocation_tuning = dict(confidence=(0.1, 0.2, 0.3, 0.5, 0.7, 0.9),
                                    max_traffic_per_item=(100, 400),
                                    hopeless_probability=(0.0, 0.01, 0.1, 0.3),
                                    steps=((5, 10), (5, 10, 20, 40, 80, 160)))
    config.exploration.benchmark_items = 0  # the default config's benchmark; gemb.bench.coldstart
    if arg == "toyworld_tiny":  # the tests' size: seconds with a tiny random encoder
      config.world.items_per_day = 300
      config.world.history_days = 2
      config.world.tuning_days = 1
      _tests_size(config, batch_size=256)
      config.baselines.ucb_exploration_choices = ()
      config.baselines.thompson_prior_choices = ()
      config.allocation_tuning = dict(confidence=(0.5, 0.8), max_traffic_per_item=(),
                                      hopeless_probability=(), steps=())
      config.service.history_items = 600
      config.service.tuning_items = 200
      config.service.model = dict(batch_size=256, epochs=20, content="score")
      config.service.allocation_tuning = dict(confidence=(0.5, 0.8))
  elif arg:
    raise ValueError(f"configs/proj/coldstart.py takes no argument, 'tiny', 'toyworld', "
                     f"'toyworld_mixed' or 'toyworld_tiny'; got {arg!r}.")
  return config


def _tests_size(config, batch_size: int) -> None:
  """The tests' size of the model and the exploration: seconds, not minutes."""
  config.model.hidden_dims = (32,)
  config.model.batch_size = batch_size
  config.model.epochs = 20
  config.exploration.num_rounds = 3
  config.exploration.budget_per_item = (5, 10)
  config.baselines.chunk_choices = (10,)
