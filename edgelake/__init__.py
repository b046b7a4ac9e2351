"""edgelake's shared core: settings, event contracts, Kafka configuration, the embedded broker and the CLI."""
