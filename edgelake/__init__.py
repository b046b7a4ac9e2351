"""edgelake: Kafka -> Beam -> Delta Lake -> Spark/TensorFlow -> TFLite at the edge, under one namespace.

The core modules here (settings, event contracts, signing, the device API's contract, Kafka configuration, the
embedded broker) import no stage. The stages (``edgelake.ingest``, ``edgelake.lake``, ``edgelake.training``,
``edgelake.api``, ``edgelake.edge``, ``edgelake.bench``) sit on the core, and ``edgelake.cli`` sits on them all.
"""
