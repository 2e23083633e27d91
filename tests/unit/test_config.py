from __future__ import annotations

import logging
from pathlib import Path

import pytest

from server.config import ConfigError, load_settings, redacted


def write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "config.yaml"
    path.write_text(text, encoding="utf-8")
    return path


def test_no_config_anywhere_means_embedded_everything() -> None:
    settings = load_settings(env={})
    assert settings.database.embedded and settings.minio is not None and settings.minio.embedded
    assert settings.audio_enabled
    assert "no config file" in settings.source


def test_design_sections_and_pool_defaults(tmp_path: Path) -> None:
    path = write(
        tmp_path,
        """
database: {type: postgres, host: db.example, port: "15432", username: xiaozhi, password: s3cret,
           database: xiaozhi_admin, ssl_mode: require}
minio: {endpoint: "minio:9000", access_key_id: ak, secret_access_key: sk, bucket_audio: my-audio}
conversation: {storage_type: postgres, enable_audio_storage: true, message_retention_days: 30}
memory: {provider: redis}
redis: {host: cache, key_prefix: "xiaozhi:"}
""",
    )
    s = load_settings(path, env={})
    assert (s.database.host, s.database.port, s.database.ssl_mode) == ("db.example", 15432, "require")
    assert (s.database.pool.min_idle, s.database.pool.max_open, s.database.pool.max_lifetime_s) == (10, 100, 3600)
    assert s.minio is not None and s.minio.bucket_audio == "my-audio" and not s.minio.embedded
    assert s.conversation.message_retention_days == 30 and s.memory.provider == "redis"


def test_config_file_without_minio_turns_audio_off(tmp_path: Path) -> None:
    s = load_settings(write(tmp_path, "database: {host: localhost}\n"), env={})
    assert s.minio is None and not s.audio_enabled


def test_environment_overrides_with_the_design_names(tmp_path: Path) -> None:
    env = {
        "DB_HOST": "pg.internal",
        "DB_PORT": "25432",
        "DB_USER": "u",
        "DB_PASSWORD": "p",
        "DB_NAME": "n",
        "DB_SSL_MODE": "verify-full",
        "MINIO_ENDPOINT": "s3.internal:9000",
        "MINIO_ACCESS_KEY": "a",
        "MINIO_SECRET_KEY": "b",
        "MINIO_BUCKET": "audio-x",
        "REDIS_HOST": "r",
        "MESSAGE_RETENTION_DAYS": "0",
    }
    s = load_settings(env=env)
    db = s.database
    assert (db.host, db.port, db.username, db.database) == ("pg.internal", 25432, "u", "n")
    assert s.database.password.get_secret_value() == "p" and s.database.ssl_mode == "verify-full"
    assert not s.database.embedded, "naming a server by environment means: use it, not the embedded one"
    assert s.minio is not None and (s.minio.endpoint, s.minio.bucket_audio) == ("s3.internal:9000", "audio-x")
    assert not s.minio.embedded and s.minio.secret_access_key.get_secret_value() == "b"
    assert s.redis is not None and s.redis.host == "r" and s.conversation.message_retention_days == 0
    assert "DB_HOST" in s.source


@pytest.mark.parametrize(
    ("text", "env", "expected"),
    [
        ("database: {port: 99999}\n", {}, "database.port: Input should be less than or equal to 65535 (got 99999)"),
        (
            "database: {ssl_mode: maybe}\n",
            {},
            "ssl_mode: must be one of 'disable', 'require', 'verify-ca' or 'verify-full' (got 'maybe')",
        ),
        ("database: {type: mysql}\n", {}, "database.type: 'mysql' cannot store conversations here"),
        ("database: {hots: x}\n", {}, "database.hots: unknown key (allowed: type, host, port"),
        ("minio: {endpoint: 'http://x:9000'}\n", {}, "minio.endpoint: must be host:port without a scheme"),
        ("memory: {provider: mem0}\n", {}, "provider: must be one of 'postgres', 'redis' or 'nomemo' (got 'mem0')"),
        ("database: {}\n", {"DB_PORT": "abc"}, "database.port [env DB_PORT]: Input should be a valid integer"),
        ("conversation: {message_retention_days: -1}\n", {}, "conversation.message_retention_days"),
        ("server: {uplink_workers: 0}\n", {}, "server.uplink_workers: Input should be greater than or equal to 1"),
    ],
)
def test_invalid_values_name_the_file_key_and_what_is_allowed(
    tmp_path: Path, text: str, env: dict[str, str], expected: str
) -> None:
    path = write(tmp_path, text)
    with pytest.raises(ConfigError) as err:
        load_settings(path, env=env)
    message = str(err.value)
    assert message.startswith(str(path)) and expected in message


def test_broken_yaml_and_missing_file(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match=r"line \d+ column \d+: not valid YAML"):
        load_settings(write(tmp_path, "database:\n  host: [unclosed\n"), env={})
    with pytest.raises(ConfigError, match="config file not found"):
        load_settings(tmp_path / "nope.yaml", env={})
    with pytest.raises(ConfigError, match="top level must be a mapping"):
        load_settings(write(tmp_path, "- a\n- b\n"), env={})


def test_secrets_never_appear_in_dumps_reprs_or_errors(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    s = load_settings(env={"DB_PASSWORD": "hunter2", "MINIO_SECRET_KEY": "topsecret", "MINIO_ENDPOINT": "x:1"})
    logging.getLogger("t").info("settings %s %r", s, s)
    dumped = str(redacted(s))
    for text in (dumped, repr(s), caplog.text):
        assert "hunter2" not in text and "topsecret" not in text
    path = write(tmp_path, "database: {password: [not, a, string]}\n")
    with pytest.raises(ConfigError) as err:
        load_settings(path, env={})
    assert "not" not in str(err.value).split("database.password")[1]


def test_config_file_found_by_env_variable_and_working_directory(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    path = write(tmp_path, "database: {host: from-file}\n")
    assert load_settings(env={"XIAOZHI_CONFIG": str(path)}).database.host == "from-file"
    monkeypatch.chdir(tmp_path)
    assert load_settings(env={}).database.host == "from-file"
