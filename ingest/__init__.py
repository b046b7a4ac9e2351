"""Ingest stage: producers into Kafka, and Beam pipelines from Kafka into the lake."""
