"""The dashboard page served at ``/``: one HTML, one script and one style sheet (package data)."""
