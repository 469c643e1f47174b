"""The `--storage` option and the config file's `storage:` section, for every command that opens a lake.

A command calls `add_storage_option(parser)` when building its parser and `storage_from_args(args)`
when running. Settings come from the standard environment variables
(AWS_ACCESS_KEY_ID, AWS_SECRET_ACCESS_KEY, AWS_REGION, AWS_ENDPOINT_URL, ...), overridden by the
`storage:` mapping of `--config` or by `--storage KEY=VALUE,...`. Credentials are refused on the
command line, where `ps` and shell history would keep them.
"""

from __future__ import annotations

import argparse
import logging
import os

from operators.storage import StorageSettings, is_secret, resolve_storage

STORAGE_DEST = "storage"
# Their DEBUG records print signed request headers (the access key id in `Credential=`), so
# `--verbose` must not reach them.
CREDENTIAL_LOGGERS = ("botocore", "aiobotocore", "boto3", "s3fs", "urllib3", "gcsfs", "google.auth", "adlfs",
                      "azure")


def storage_pairs(value: str) -> dict[str, str]:
    """`KEY=VALUE[,KEY=VALUE]` into a mapping; secrets are not accepted here."""
    pairs: dict[str, str] = {}
    for part in value.split(","):
        if not part.strip():
            continue
        key, sep, item = part.partition("=")
        if not sep or not key.strip():
            msg = f"expected KEY=VALUE pairs, got {part!r}"
            raise argparse.ArgumentTypeError(msg)
        key = key.strip()
        if is_secret(key):
            msg = (
                f"{key} is a credential: set it in the environment or in the config file's storage: "
                "section, not on the command line"
            )
            raise argparse.ArgumentTypeError(msg)
        pairs[key] = item.strip()
    return pairs


def add_storage_option(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--storage",
        dest=STORAGE_DEST,
        type=storage_pairs,
        default=None,
        metavar="KEY=VALUE,...",
        help="object-store settings such as aws_region, aws_endpoint, allow_http, anon (config: a storage: "
             "mapping); credentials come from AWS_* variables or the config file",
    )


def quiet_credential_loggers() -> None:
    """Keep the storage clients' loggers at INFO or above, whatever the root level."""
    for name in CREDENTIAL_LOGGERS:
        logger = logging.getLogger(name)
        if logger.level < logging.INFO:
            logger.setLevel(logging.INFO)


def storage_from_args(args: argparse.Namespace) -> StorageSettings:
    """The resolved settings: environment, then the config/--storage mapping on top. Also quiets the
    storage clients' debug logging (see CREDENTIAL_LOGGERS)."""
    quiet_credential_loggers()
    config = getattr(args, STORAGE_DEST, None)
    if config is not None and not isinstance(config, dict):
        msg = f"storage settings must be a mapping of option names to values, got {type(config).__name__}"
        raise ValueError(msg)
    return resolve_storage(config, os.environ)

