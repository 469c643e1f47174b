"""Object-storage settings in one place: environment + a config `storage:` mapping, turned into the
options fsspec (input) and Lance/LanceDB (output) each expect.

The settings use Lance's (object_store's) key names, so the same mapping can be handed to
`lancedb.connect(uri, storage_options=lance_options(uri, settings))`; `fsspec_options` translates
them for s3fs / gcsfs / adlfs. They are resolved once on the driver and travel to Ray workers inside
the readers and writers, so worker nodes do not need the driver's environment.

Credentials are kept out of everything we print or store, here and only here: `is_secret` says which
setting or option names hold one, the settings' repr hides them, `redact` scrubs their values from
messages, `redact_config` and `redact_argv` hide them in the configs and command lines a run log keeps.
"""

from __future__ import annotations

import os
import re
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from typing import IO

S3, GCS, AZURE, LOCAL = "s3", "gs", "az", "file"
PROTOCOLS = {
    "s3": S3, "s3a": S3, "gs": GCS, "gcs": GCS, "az": AZURE, "abfs": AZURE, "abfss": AZURE, "adl": AZURE,
    "file": LOCAL, "local": LOCAL,
}

# Settings keys (Lance/object_store names) and the environment variables that provide them.
AWS_ACCESS_KEY_ID = "aws_access_key_id"
AWS_SECRET_ACCESS_KEY = "aws_secret_access_key"
AWS_SESSION_TOKEN = "aws_session_token"
AWS_REGION = "aws_region"
AWS_ENDPOINT = "aws_endpoint"
ALLOW_HTTP = "allow_http"
ANON = "anon"
GOOGLE_SERVICE_ACCOUNT = "google_service_account"
AZURE_ACCOUNT_NAME = "azure_storage_account_name"
AZURE_ACCOUNT_KEY = "azure_storage_account_key"
AZURE_SAS_TOKEN = "azure_storage_sas_token"

ENVIRONMENT = {
    AWS_ACCESS_KEY_ID: ("AWS_ACCESS_KEY_ID",),
    AWS_SECRET_ACCESS_KEY: ("AWS_SECRET_ACCESS_KEY",),
    AWS_SESSION_TOKEN: ("AWS_SESSION_TOKEN",),
    AWS_REGION: ("AWS_REGION", "AWS_DEFAULT_REGION"),
    AWS_ENDPOINT: ("AWS_ENDPOINT_URL_S3", "AWS_ENDPOINT_URL"),
    GOOGLE_SERVICE_ACCOUNT: ("GOOGLE_APPLICATION_CREDENTIALS",),
    AZURE_ACCOUNT_NAME: ("AZURE_STORAGE_ACCOUNT_NAME",),
    AZURE_ACCOUNT_KEY: ("AZURE_STORAGE_ACCOUNT_KEY",),
    AZURE_SAS_TOKEN: ("AZURE_STORAGE_SAS_TOKEN",),
}
ALIASES = {"aws_endpoint_url": AWS_ENDPOINT, "endpoint_url": AWS_ENDPOINT, "region": AWS_REGION}
GENERIC_KEYS = (ALLOW_HTTP, ANON, "timeout", "connect_timeout", "client_max_retries", "client_retry_timeout")
PROVIDER_PREFIXES = {S3: "aws_", GCS: "google_", AZURE: "azure_"}
SECRET_KEYS = frozenset({AWS_ACCESS_KEY_ID, AWS_SECRET_ACCESS_KEY, AWS_SESSION_TOKEN, AZURE_ACCOUNT_KEY,
                         AZURE_SAS_TOKEN, "google_service_account_key", "key", "connection_string"})
# Names that hold a credential: settings keys, config keys, --options, KEY=VALUE pairs. "key" also covers
# access_key, account_key, sas_key and api_key; a false positive only hides a value.
# Matched per word of the name (split at _ - . and spaces, case folded), whole or as its end (apikey, authtoken),
# so that `max_tokens_per_batch` or `tokenizer` are not taken for secrets while `aws_session_token` is.
SECRET_WORDS = ("secret", "token", "password", "passwd", "credential", "credentials", "session", "key", "sas")
SECRET_PATTERN = re.compile(rf"(?:^|[_\-. ])[a-z0-9]*(?:{'|'.join(SECRET_WORDS)})(?=$|[_\-. ])", re.IGNORECASE)
REDACTED = "***"
MIN_SECRET = 4
TRUE_STRINGS = ("1", "true", "yes", "on")


class StorageSettings(dict):
    """A plain mapping of settings whose repr hides secret values (it pickles as a dict subclass)."""

    def __repr__(self) -> str:
        return repr({key: REDACTED if is_secret(key) else value for key, value in self.items()})

    __str__ = __repr__

    def secrets(self) -> list[str]:
        """The secret values, longest first, for scrubbing text (too short to be a credential: left)."""
        values = {str(value) for key, value in self.items() if is_secret(key) and len(str(value)) >= MIN_SECRET}
        return sorted(values, key=len, reverse=True)


def is_secret(key: str) -> bool:
    """Whether a settings key, config key, --option or KEY=VALUE name holds a credential (SECRET_PATTERN)."""
    return key in SECRET_KEYS or bool(SECRET_PATTERN.search(key.lstrip("-")))


def protocol_of(uri: str) -> str:
    """The storage family of a URI: s3, gs, az, file (plain paths), or the raw scheme for others."""
    scheme = uri.split("://", 1)[0].lower() if "://" in uri else LOCAL
    return PROTOCOLS.get(scheme, scheme)


def local_path(uri: str) -> str | None:
    """The filesystem path of a local URI (a plain path or file://...), None for an object store."""
    return uri.removeprefix("file://") if protocol_of(uri) == LOCAL else None


def resolve_storage(config: Mapping | None = None, environ: Mapping[str, str] | None = None) -> StorageSettings:
    """Settings from the standard environment variables, overridden by a config `storage:` mapping.

    Values are kept as strings, so the mapping is also valid Lance `storage_options` for s3.
    An http:// endpoint turns on `allow_http` (plain-http S3 servers such as a local MinIO or
    SeaweedFS); anything else must be said explicitly.
    """
    environ = os.environ if environ is None else environ
    settings = StorageSettings()
    for key, names in ENVIRONMENT.items():
        value = next((environ[name] for name in names if environ.get(name)), None)
        if value:
            settings[key] = value
    for raw_key, value in (config or {}).items():
        key = ALIASES.get(str(raw_key).lower(), str(raw_key).lower())
        check_key(key)
        if value is not None:
            settings[key] = _as_text(value)
    endpoint = settings.get(AWS_ENDPOINT, "")
    if endpoint.startswith("http://") and ALLOW_HTTP not in settings:
        settings[ALLOW_HTTP] = "true"
    return settings


def check_key(key: str) -> None:
    known = set(ENVIRONMENT) | set(GENERIC_KEYS)
    if key in known or key.startswith(tuple(PROVIDER_PREFIXES.values())):
        return
    msg = (
        f"unknown storage setting {key!r}; use Lance/object_store names such as "
        f"{', '.join(sorted(known))} (or any aws_*, google_*, azure_* option)"
    )
    raise ValueError(msg)


def lance_options(uri: str, settings: Mapping | None) -> StorageSettings:
    """Options for lance / lancedb at `uri`: this provider's keys and the generic ones, as strings."""
    protocol = protocol_of(uri)
    prefix = PROVIDER_PREFIXES.get(protocol)
    options = StorageSettings()
    if prefix is None:
        return options
    for key, value in (settings or {}).items():
        if key == ANON:
            if _truthy(value) and protocol == S3:
                options["aws_skip_signature"] = "true"
        elif key.startswith(prefix) or key in GENERIC_KEYS:
            options[key] = _as_text(value)
    return options


def fsspec_options(uri: str, settings: Mapping | None) -> StorageSettings:
    """Keyword arguments for the fsspec filesystem of `uri` (s3fs, gcsfs or adlfs)."""
    settings = settings or {}
    protocol = protocol_of(uri)
    options = StorageSettings()
    if protocol == S3:
        for key, name in ((AWS_ACCESS_KEY_ID, "key"), (AWS_SECRET_ACCESS_KEY, "secret"),
                          (AWS_SESSION_TOKEN, "token"), (AWS_ENDPOINT, "endpoint_url")):
            if settings.get(key):
                options[name] = str(settings[key])
        if settings.get(AWS_REGION):
            options["client_kwargs"] = {"region_name": str(settings[AWS_REGION])}
        if _truthy(settings.get(ANON)):
            options["anon"] = True
    elif protocol == GCS:
        if settings.get(GOOGLE_SERVICE_ACCOUNT):
            options["token"] = str(settings[GOOGLE_SERVICE_ACCOUNT])
        elif _truthy(settings.get(ANON)):
            options["token"] = "anon"
    elif protocol == AZURE:
        for key, name in ((AZURE_ACCOUNT_NAME, "account_name"), (AZURE_ACCOUNT_KEY, "account_key"),
                          (AZURE_SAS_TOKEN, "sas_token")):
            if settings.get(key):
                options[name] = str(settings[key])
        if _truthy(settings.get(ANON)):
            options["anon"] = True
    return options


def redact(text: str, settings: Mapping | None) -> str:
    """`text` with every secret value of `settings` replaced by ***."""
    secrets = settings.secrets() if isinstance(settings, StorageSettings) else StorageSettings(settings or {}).secrets()
    for secret in secrets:
        text = text.replace(secret, REDACTED)
    return text


def redact_config(value: object) -> object:
    """Copy of a config (nested mappings and lists) with every value under a secret-looking key replaced."""
    if isinstance(value, Mapping):
        return {k: REDACTED if is_secret(str(k)) and v else redact_config(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [redact_config(v) for v in value]
    return value


def redact_argv(argv: list[str]) -> list[str]:
    """Command line with the value of any secret-looking option (or KEY=VALUE pair) replaced."""
    cleaned, hide_next = [], False
    for arg in argv:
        if hide_next:
            cleaned.append(REDACTED)
            hide_next = False
        elif arg.startswith("--") and is_secret(arg):
            name, eq, _ = arg.partition("=")
            cleaned.append(f"{name}={REDACTED}" if eq else arg)
            hide_next = not eq
        elif "=" in arg and is_secret(arg.split("=", 1)[0]):
            cleaned.append(f"{arg.split('=', 1)[0]}={REDACTED}")
        else:
            cleaned.append(arg)
    return cleaned


class StorageError(OSError):
    """An object-storage failure whose message had credentials scrubbed from it."""


@contextmanager
def redacted_errors(settings: Mapping | None) -> Iterator[None]:
    """Re-raise a failure whose message contains a secret as a StorageError without it.

    The original is not chained (`from None`): formatted tracebacks, logs and Ray task errors (which
    pickle the exception without its context) then never print it.
    """
    try:
        yield
    except Exception as error:
        message = str(error)
        clean = redact(message, settings)
        if clean == message:
            raise
        msg = f"{type(error).__name__}: {clean}"
        raise StorageError(msg) from None


def as_settings(storage: Mapping | None, environ: Mapping[str, str] | None = None) -> StorageSettings:
    """Resolved settings as they are; a plain mapping (a config `storage:` section) or None resolved
    with the environment (`resolve_storage`)."""
    return storage if isinstance(storage, StorageSettings) else resolve_storage(storage, environ)


def filesystem(uri: str, settings: Mapping | None):
    """(fsspec filesystem, path inside it) for `uri`, with the filesystem options of `settings`."""
    import fsspec

    return fsspec.core.url_to_fs(uri, **fsspec_options(uri, settings))


@contextmanager
def open_input(uri: str, settings: Mapping | None, cache_type: str = "none") -> Iterator[IO[bytes]]:
    """A file of an input lake opened for reading. Parquet reads are ranged (footer, then the needed
    column chunks): no read-ahead by default, which on object stores would fetch the columns we skip."""
    fs, path = filesystem(uri, settings)
    with fs.open(path, "rb", cache_type=cache_type) as handle:
        yield handle


def _truthy(value: object) -> bool:
    return value is True or str(value).strip().lower() in TRUE_STRINGS


def _as_text(value: object) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    return str(value)
