"""The model registry in lake storage: signed, versioned models and their rollout stages.

Layout under ``<lake_root>/models``, on a filesystem or on object storage (``s3://``), or in the ``registry_dir`` folder::

    registry.pub                   PEM anchor key: the first signing key, the one devices pin at enrollment
    keys/<sequence>.json           the key-set chain after the anchor: each release lists every signing key with its
                                   validity and revocation, signed by a valid key of the release before and by every key it adds
    <name>/<version>/manifest.json canonical JSON: files with sha256 and size, metrics, lineage
    <name>/<version>/manifest.sig  base64 Ed25519 signature of manifest.json's exact bytes
    <name>/<version>/...           the artifacts (model, .tflite, metrics JSON, plots)

Which versions are published is kept in the control plane's database, never read from a
listing: a publisher reserves the next number there, writes the files, then the manifest and
its signature, and marks the version published in one transaction with its first stage, so a
version appears whole or not at all, on object storage too, and one that dies leaves only an
unused number and unlisted files. A registry on object storage is read through a local mirror
(``<data_dir>/registry``): a version is fetched whole into it, each file checked against its
manifest, before anything reads it; the key files (written once each, under a database lock)
are copied as they appear. Each version's stage, the append-only history of its moves and each model's rollout
policy (which share of devices runs which canary version, and its gate) are kept in the
control plane's database (:mod:`edgelake.control_db`), each change one transaction: a
:class:`Registry` is the files' folder and that database. Stages move forward only, candidate -> canary -> production; the version a
promotion displaces from canary or production becomes ``archived``; ``rollback`` brings the
previous production version back and marks the current one ``rolled_back``. A version put
on canary by the rollout policy becomes ``canary``; the rollout gate settles it by promoting
it to production or rejecting it (``rolled_back``).

The private keys live outside the lake, in the key dir (``<data_dir>/keys``): ``registry.key``
(the anchor's), ``<fingerprint>.key`` for each key a rotation made, and ``current`` naming the
one that signs new versions (absent: ``registry.key``). ``rotate`` makes a new current key and
releases a bridge key set signed by both; ``revoke`` releases a set in which a key is revoked.

One module a job: :mod:`.layout` (where the registry lies, its models and version numbers), :mod:`.objects` (files on
object storage), :mod:`.mirror` (their local copies), :mod:`.keys` (signing
keys, the key-set chain, verification), :mod:`.stages` (the stage book and its moves), :mod:`.publishing` (signed
versions in and out) and :mod:`.rollout` (policy, device bucketing and the canary gate). This front door names what
callers use.
"""

from edgelake.training.registry.keys import (
    KEY_SETS,
    KEYS_DIR,
    PRIVATE_KEY,
    NoPublicKey,
    PUBLIC_KEY,
    current_fingerprint,
    ensure_signing_key,
    key_releases,
    key_set,
    key_set_sequence,
    local_public_key,
    registry_public_key,
    revoke,
    rotate,
    signing_keys,
    verify,
)
from edgelake.training.registry.layout import Registry, UnknownModel, models, registry_root
from edgelake.training.registry.publishing import ModelVersion, get, manifest, publish, publish_run, resign, signed_by
from edgelake.training.registry.rollout import (
    RolloutPolicy,
    RolloutRules,
    assigned_version,
    rollout_bucket,
    rollout_policy,
    set_rollout,
)
from edgelake.training.registry.stages import (
    Stage,
    StageBook,
    Transition,
    current,
    production_line,
    promote,
    read_book,
    reject,
    rollback,
    versions,
)

__all__ = [
    "KEYS_DIR",
    "KEY_SETS",
    "NoPublicKey",
    "PRIVATE_KEY",
    "PUBLIC_KEY",
    "Registry",
    "ModelVersion",
    "RolloutPolicy",
    "RolloutRules",
    "Stage",
    "StageBook",
    "Transition",
    "UnknownModel",
    "assigned_version",
    "current",
    "current_fingerprint",
    "ensure_signing_key",
    "get",
    "key_releases",
    "key_set",
    "key_set_sequence",
    "local_public_key",
    "manifest",
    "models",
    "production_line",
    "promote",
    "publish",
    "publish_run",
    "read_book",
    "registry_public_key",
    "registry_root",
    "reject",
    "resign",
    "revoke",
    "rollback",
    "rollout_bucket",
    "rollout_policy",
    "rotate",
    "set_rollout",
    "signed_by",
    "signing_keys",
    "verify",
    "versions",
]
