"""Alembic's migrations of the control-plane database (:mod:`edgelake.control_db`), applied by ``ControlDb.migrate``."""
