"""Model folders on any fsspec URI: write a trained folder there, read one back as a local folder.

A trained model is written to MODEL_OUT (a local folder or s3://, gs://, az://) and must load wherever
a model loads. Loading code (transformers, sentence-transformers) reads local files, so a folder on an
object store is copied once into a local cache keyed by its URI and file sizes, completed atomically.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import tempfile

import fsspec

from operators.storage import LOCAL, protocol_of, redacted_errors
from operators.storage import filesystem as storage_filesystem

CACHE_ENV = "EMBEDLAKE_MODEL_CACHE"


def is_remote(uri: str) -> bool:
    return protocol_of(uri) != LOCAL


def local_path(uri: str) -> str:
    return os.path.abspath(os.path.expanduser(uri.removeprefix("file://")))


def filesystem(uri: str, storage: dict | None = None) -> tuple[fsspec.AbstractFileSystem, str]:
    """The fsspec filesystem of `uri` with the storage settings, and the path inside it."""
    if not is_remote(uri):
        return fsspec.filesystem("file"), local_path(uri)
    with redacted_errors(storage):
        return storage_filesystem(uri, storage)


def join(uri: str, *parts: str) -> str:
    return "/".join([uri.rstrip("/"), *parts])


def files_under(fs: fsspec.AbstractFileSystem, path: str) -> dict[str, int]:
    """{relative path: size} of every file under `path` (empty when it does not exist)."""
    if not fs.exists(path):
        return {}
    found = fs.find(path, detail=True)
    base = path.rstrip("/") + "/"
    return {name[len(base):]: int(info.get("size") or 0) for name, info in found.items()
            if info.get("type") == "file" and name.startswith(base)}


def copy_tree(fs: fsspec.AbstractFileSystem, source: str, target: str, skip: tuple[str, ...] = ()) -> int:
    """Copy every file under `source` to `target` on the same filesystem; returns the file count."""
    files = [name for name in files_under(fs, source) if not name.startswith(skip)]
    for name in files:
        destination = f"{target.rstrip('/')}/{name}"
        parent = destination.rsplit("/", 1)[0]
        fs.makedirs(parent, exist_ok=True)
        fs.copy(f"{source.rstrip('/')}/{name}", destination)
    return len(files)


def read_json(uri: str, storage: dict | None = None) -> dict | None:
    fs, path = filesystem(uri, storage)
    with redacted_errors(storage):
        if not fs.exists(path):
            return None
        with fs.open(path, "r") as handle:
            return json.load(handle)


def write_bytes(uri: str, data: bytes, storage: dict | None = None) -> None:
    fs, path = filesystem(uri, storage)
    with redacted_errors(storage):
        fs.makedirs(path.rsplit("/", 1)[0], exist_ok=True)
        with fs.open(path, "wb") as handle:
            handle.write(data)


def write_json(uri: str, value: dict, storage: dict | None = None) -> None:
    write_bytes(uri, json.dumps(value, indent=2, default=str).encode(), storage)


def remove_tree(uri: str, storage: dict | None = None) -> None:
    fs, path = filesystem(uri, storage)
    with redacted_errors(storage):
        if fs.exists(path):
            fs.rm(path, recursive=True)


def cache_root() -> str:
    return os.environ.get(CACHE_ENV) or os.path.join(os.path.expanduser("~"), ".cache", "embedlake", "models")


def local_model_folder(uri: str, storage: dict | None = None) -> str:
    """A local folder holding the model at `uri`: the folder itself when local, else a cached copy
    (re-fetched when the remote files' names or sizes change)."""
    if not is_remote(uri):
        return local_path(uri)
    fs, path = filesystem(uri, storage)
    with redacted_errors(storage):
        files = files_under(fs, path)
        if not files:
            msg = f"model {uri} holds no files"
            raise ValueError(msg)
        key = hashlib.sha256(json.dumps([uri, sorted(files.items())]).encode()).hexdigest()[:16]
        target = os.path.join(cache_root(), f"{os.path.basename(path.rstrip('/')) or 'model'}-{key}")
        if os.path.isdir(target):
            return target
        os.makedirs(cache_root(), exist_ok=True)
        staging = tempfile.mkdtemp(dir=cache_root(), prefix=".partial-")
        try:
            for name in files:
                destination = os.path.join(staging, *name.split("/"))
                os.makedirs(os.path.dirname(destination), exist_ok=True)
                fs.get_file(f"{path.rstrip('/')}/{name}", destination)
            os.replace(staging, target)  # complete or absent: a killed copy never looks finished
        except OSError:
            shutil.rmtree(staging, ignore_errors=True)
            if not os.path.isdir(target):
                raise
    return target
