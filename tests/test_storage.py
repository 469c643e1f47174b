"""Storage settings: environment and config in, fsspec and Lance options out, secrets never shown."""

from __future__ import annotations

import pickle
import traceback
from pathlib import Path

import pytest
import yaml

from operators.storage import (
    StorageError,
    StorageSettings,
    fsspec_options,
    lance_options,
    protocol_of,
    redact,
    redacted_errors,
    resolve_storage,
)
from pipelines.cli import UsageError, main, parse_args
from pipelines.storage_cli import storage_from_args

KEY, SECRET = "AKIAUNITTESTKEY00001", "unit-test-secret-value-0123456789"
AWS_ENV = {
    "AWS_ACCESS_KEY_ID": KEY,
    "AWS_SECRET_ACCESS_KEY": SECRET,
    "AWS_REGION": "eu-west-3",
    "AWS_ENDPOINT_URL": "http://127.0.0.1:8333",
}


def test_aws_environment_becomes_lance_and_s3fs_options():
    settings = resolve_storage(None, AWS_ENV)
    assert lance_options("s3://bucket/db", settings) == {
        "aws_access_key_id": KEY,
        "aws_secret_access_key": SECRET,
        "aws_region": "eu-west-3",
        "aws_endpoint": "http://127.0.0.1:8333",
        "allow_http": "true",  # the endpoint says http
    }
    assert fsspec_options("s3://bucket/lake/", settings) == {
        "key": KEY,
        "secret": SECRET,
        "endpoint_url": "http://127.0.0.1:8333",
        "client_kwargs": {"region_name": "eu-west-3"},
    }


def test_https_endpoint_does_not_allow_http_and_config_overrides_environment():
    settings = resolve_storage({"aws_endpoint_url": "https://minio.internal:9000", "region": "us-west-2"}, AWS_ENV)
    assert settings["aws_endpoint"] == "https://minio.internal:9000"
    assert settings["aws_region"] == "us-west-2"
    assert "allow_http" not in settings
    assert settings["aws_access_key_id"] == KEY  # still from the environment


def test_anonymous_access_for_public_buckets():
    settings = resolve_storage({"anon": True}, {})
    assert fsspec_options("s3://public/lake", settings) == {"anon": True}
    assert lance_options("s3://public/db", settings) == {"aws_skip_signature": "true"}


def test_each_provider_gets_only_its_own_options():
    settings = resolve_storage(
        {"google_service_account": "/keys/sa.json", "azure_storage_account_name": "acct", "timeout": 30},
        {**AWS_ENV, "AZURE_STORAGE_ACCOUNT_KEY": "azure-key-abcdef"},
    )
    assert lance_options("gs://b/db", settings) == {"google_service_account": "/keys/sa.json",
                                                    "allow_http": "true", "timeout": "30"}
    assert fsspec_options("gs://b/lake", settings) == {"token": "/keys/sa.json"}
    assert lance_options("az://container/db", settings)["azure_storage_account_key"] == "azure-key-abcdef"
    assert fsspec_options("abfs://container/lake", settings) == {"account_name": "acct",
                                                                 "account_key": "azure-key-abcdef"}
    assert lance_options("/tmp/db", settings) == {} and fsspec_options("/tmp/lake", settings) == {}
    assert [protocol_of(u) for u in ("s3a://b", "gcs://b", "abfss://c", "file:///x", "rel/path")] == \
        ["s3", "gs", "az", "file", "file"]


def test_unknown_setting_is_refused():
    with pytest.raises(ValueError, match="unknown storage setting 'endpoint'"):
        resolve_storage({"endpoint": "http://x"}, {})


def test_secrets_never_show_in_repr_and_are_scrubbed_from_errors():
    settings = resolve_storage(None, AWS_ENV)
    for text in (repr(settings), str(settings), repr(fsspec_options("s3://b", settings)),
                 repr(lance_options("s3://b", settings))):
        assert SECRET not in text and KEY not in text
    assert "eu-west-3" in repr(settings)
    assert pickle.loads(pickle.dumps(settings)) == settings
    assert redact(f"403 for {KEY} signed with {SECRET}", settings) == "403 for *** signed with ***"

    def leak():
        with redacted_errors(settings):
            msg = f"SignatureDoesNotMatch <AWSAccessKeyId>{KEY}</AWSAccessKeyId>"
            raise PermissionError(msg)

    with pytest.raises(StorageError) as caught:
        leak()
    assert KEY not in str(caught.value) and "SignatureDoesNotMatch" in str(caught.value)
    assert KEY not in "".join(traceback.format_exception(caught.value))
    assert KEY not in str(pickle.loads(pickle.dumps(caught.value)).__context__)
    plain = "plain failure"  # nothing secret: the original error passes unchanged
    with pytest.raises(ValueError, match=plain), redacted_errors(settings):
        raise ValueError(plain)


def test_config_storage_section_and_storage_option(tmp_path, monkeypatch):
    for name, value in AWS_ENV.items():
        monkeypatch.setenv(name, value)
    config = tmp_path / "lake.yaml"
    config.write_text(yaml.safe_dump({"storage": {"aws_endpoint": "http://10.0.0.5:9000", "aws_region": "x-1"}}))
    args, _ = parse_args(["embed", "s3://b/lake", "s3://b/db", "--config", str(config)])
    settings = storage_from_args(args)
    assert isinstance(settings, StorageSettings)
    assert settings["aws_endpoint"] == "http://10.0.0.5:9000" and settings["aws_secret_access_key"] == SECRET
    args, _ = parse_args(["embed", "in", "out", "--storage", "aws_region=ap-south-1,allow_http=false"])
    assert storage_from_args(args)["aws_region"] == "ap-south-1"
    assert storage_from_args(args)["allow_http"] == "false"


def test_credentials_are_refused_on_the_command_line(capsys):
    with pytest.raises(UsageError) as refused:
        parse_args(["embed", "in", "out", "--storage", f"aws_secret_access_key={SECRET}"])
    assert "is a credential" in str(refused.value) and SECRET not in str(refused.value)
    assert main(["embed", "in", "out", "--storage", f"aws_secret_access_key={SECRET}"]) == 2
    err = capsys.readouterr().err
    assert "is a credential" in err and SECRET not in err and len(err.strip().splitlines()) == 1


def test_shipped_s3_config_parses(monkeypatch):
    for name in AWS_ENV:
        monkeypatch.delenv(name, raising=False)
    config = Path(__file__).resolve().parent.parent / "conf" / "lake_s3.yaml"
    args, _ = parse_args(["embed", "s3://b/lake/", "s3://b/db", "--config", str(config)])
    assert storage_from_args(args) == {"aws_region": "us-east-1"}
    assert args.dims == [256, 128, 64]
