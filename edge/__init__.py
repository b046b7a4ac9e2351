"""Edge stage: the device agent, installable with the ``edge`` extra alone.

An agent enrolls with the API, keeps the models its rollout assigns it (downloaded, verified
against the pinned registry key and smoke-tested before use), classifies camera frames with
a TFLite runtime, and forwards every result through a local SQLite queue. It imports the
shared core (settings, contracts, signing, interpreters) and nothing of the cloud stages.
"""
