"""Alembic's entry point: migrate the connection ``ControlDb.migrate`` opened (and locked) to the asked revision."""

from alembic import context

from edgelake.control_db import metadata

context.configure(connection=context.config.attributes["connection"], target_metadata=metadata, render_as_batch=True)
context.run_migrations()
