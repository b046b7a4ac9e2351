"""Training stage: feature definitions, the fraud and vision models, TFLite export and the model registry."""
