"""A registry's files on object storage (``s3://``), read and written through pyarrow's S3 filesystem with the lake's
storage options. Object stores have no rename and no locks: what is published is decided in the control plane's database."""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from functools import cached_property
from pathlib import Path
from urllib.parse import urlparse

from pyarrow import fs

from edgelake.files import copy_synced

_CHUNK = 1 << 20


@dataclass(frozen=True)
class ObjectStore:
    """The objects under ``uri`` (``s3://bucket/prefix``), each named by its key relative to it."""

    uri: str
    storage_options: dict[str, str] = field(default_factory=dict, repr=False)  # credentials: kept out of logs and errors

    @cached_property
    def _filesystem(self) -> fs.S3FileSystem:
        return s3_filesystem(self.storage_options)

    @property
    def _base(self) -> str:
        parsed = urlparse(self.uri)
        return f"{parsed.netloc}/{parsed.path.strip('/')}".rstrip("/")

    def upload(self, source: Path, key: str) -> None:
        """Put the file at ``source`` as ``key``."""
        with source.open("rb") as reader, self._filesystem.open_output_stream(f"{self._base}/{key}") as writer:
            while chunk := reader.read(_CHUNK):
                writer.write(chunk)

    def write(self, key: str, content: bytes) -> None:
        """Put ``content`` as ``key``."""
        with self._filesystem.open_output_stream(f"{self._base}/{key}") as writer:
            writer.write(content)

    def read(self, key: str) -> bytes | None:
        """The content of ``key``; None when there is no such object."""
        try:
            with self._filesystem.open_input_stream(f"{self._base}/{key}") as reader:
                return bytes(reader.read())
        except FileNotFoundError:
            return None

    def download(self, key: str, target: Path) -> None:
        """Copy ``key`` to the new file ``target``, synced; FileNotFoundError when there is no such object."""
        with self._filesystem.open_input_stream(f"{self._base}/{key}") as reader:
            copy_synced(reader, target)

    def keys(self, prefix: str) -> list[str]:
        """The keys under ``prefix`` (a folder, without a trailing '/'), sorted."""
        selector = fs.FileSelector(f"{self._base}/{prefix}", allow_not_found=True, recursive=True)
        infos = self._filesystem.get_file_info(selector)
        return sorted(info.path.removeprefix(f"{self._base}/") for info in infos if info.type == fs.FileType.File)


def is_object_store(uri: str) -> bool:
    """Whether ``uri`` names an S3 location."""
    return urlparse(uri).scheme in ("s3", "s3a")


def s3_filesystem(options: dict[str, str]) -> fs.S3FileSystem:
    """pyarrow's S3 filesystem configured as delta-rs is by the same storage options (credentials, region, endpoint);
    what the options leave out comes from the environment, as for delta-rs."""
    endpoint = options.get("AWS_ENDPOINT_URL") or options.get("AWS_ENDPOINT") or os.environ.get("AWS_ENDPOINT_URL")
    settings: dict[str, str] = {}
    for option, argument in (
        ("AWS_ACCESS_KEY_ID", "access_key"),
        ("AWS_SECRET_ACCESS_KEY", "secret_key"),
        ("AWS_SESSION_TOKEN", "session_token"),
        ("AWS_REGION", "region"),
        ("AWS_DEFAULT_REGION", "region"),
    ):
        if value := options.get(option) or os.environ.get(option):
            settings.setdefault(argument, value)
    if endpoint:
        parsed = urlparse(endpoint)
        settings.update(endpoint_override=parsed.netloc or parsed.path, scheme=parsed.scheme or "https")
    return fs.S3FileSystem(**settings)
