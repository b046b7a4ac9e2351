"""API stage: fraud scoring, SQL over HTTP, the model registry and device management."""
