"""The card features and the fraud model's inputs, Feast-style: each feature defined once, computed side by side.

- ``definitions``: each card feature (name, type, window, point-in-time meaning) and ``FEATURE_VERSION``;
- ``batch``: Spark's computation of every feature, for ``gold_card_features`` (built by ``lake.gold``);
- ``online``: ``CardHistory``, the same values one transaction at a time, each card's state in process;
- ``online_redis``: ``RedisCardHistory``, the same with each card's state in Redis (``online_redis.lua``), shared by replicas;
- ``model_inputs``: the fraud model's inputs: the columns it reads, from Spark (training) or online (scoring), and
  ``InputSpec``, stored with each model version, which turns them into its input matrix the same way on both paths;
- ``input_profile``: ``InputProfile``, which decides a model's ``InputSpec`` from its training rows.

Nothing here imports Spark at import time, nor TensorFlow at all, so the API uses the online parts as they are.
"""
