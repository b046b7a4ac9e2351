"""Alembic's migrations of the control-plane database (:mod:`edgelake.api.control_db`), applied by ``ControlDb.migrate``."""
