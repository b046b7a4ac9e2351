"""Edge stage: the device agent (installable with the `edge` extra alone)."""
