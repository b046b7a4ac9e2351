"""Lake stage: catalog, Spark access, gold tables and guarded SQL over the Delta Lake."""
