"""Typed settings: a YAML file plus environment overrides (design S20–S22).

A wrong value fails at start with one message naming the file, the key and what is allowed.
Secrets are ``SecretStr`` so they never appear in logs, reprs or error messages.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any, Literal

import platformdirs
import yaml
from pydantic import BaseModel, ConfigDict, Field, SecretStr, ValidationError, field_validator

APP_NAME = "xiaozhi-console"
CONFIG_ENV = "XIAOZHI_CONFIG"


class ConfigError(Exception):
    """A configuration problem the operator must fix; ``str()`` is a complete, one-line explanation."""


class _Section(BaseModel):
    model_config = ConfigDict(extra="forbid", validate_assignment=True)


class PoolSettings(_Section):
    """Connection pool (S22): 10 idle, 100 open, 1 h connection lifetime."""

    min_idle: int = Field(10, ge=0, le=1000)
    max_open: int = Field(100, ge=1, le=1000)
    # asyncpg closes a pooled connection after it sat idle this long (the design's 1 h lifetime).
    max_lifetime_s: float = Field(3600.0, gt=0)
    command_timeout_s: float = Field(30.0, gt=0)
    connect_timeout_s: float = Field(10.0, gt=0)


class DatabaseSettings(_Section):
    type: Literal["postgres", "mysql", "sqlite"] = "postgres"
    host: str = "localhost"
    port: int = Field(5432, ge=1, le=65535)
    username: str = "xiaozhi"
    password: SecretStr = SecretStr("xiaozhi_password")
    database: str = "xiaozhi_admin"
    ssl_mode: Literal["disable", "require", "verify-ca", "verify-full"] = "disable"
    embedded: bool = False
    pool: PoolSettings = PoolSettings()

    @field_validator("type")
    @classmethod
    def _only_postgres_serves(cls, value: str) -> str:
        if value != "postgres":
            raise ValueError(
                f"'{value}' cannot store conversations here; use 'postgres' "
                "(MySQL and Redis are migration sources: xiaozhi migrate …)"
            )
        return value


class MinioSettings(_Section):
    endpoint: str = "localhost:9000"
    access_key_id: str = "minioadmin"
    secret_access_key: SecretStr = SecretStr("minioadmin123")
    use_ssl: bool = False
    bucket_audio: str = Field("xiaozhi-audio", min_length=3, max_length=63, pattern=r"^[a-z0-9][a-z0-9.-]+[a-z0-9]$")
    region: str = "us-east-1"
    embedded: bool = False
    presign_expiry_s: int = Field(3600, ge=1, le=7 * 24 * 3600)
    max_upload_bytes: int = Field(50 * 1024 * 1024, ge=1024)

    @field_validator("endpoint")
    @classmethod
    def _host_port(cls, value: str) -> str:
        if "://" in value or "/" in value:
            raise ValueError("must be host:port without a scheme or path (use use_ssl for https)")
        if not value:
            raise ValueError("must not be empty")
        return value


class ConversationSettings(_Section):
    storage_type: Literal["postgres", "redis"] = "postgres"
    enable_audio_storage: bool = True
    message_retention_days: int = Field(90, ge=0, le=36500)  # 0 = keep forever (S9)
    retention_interval_s: int = Field(6 * 3600, ge=60)
    context_messages: int = Field(20, ge=0, le=1000)


class RedisSettings(_Section):
    host: str = "127.0.0.1"
    port: int = Field(6379, ge=1, le=65535)
    password: SecretStr = SecretStr("")
    db: int = Field(0, ge=0, le=255)
    key_prefix: str = "xiaozhi"


class MemorySettings(_Section):
    provider: Literal["postgres", "redis", "nomemo"] = "postgres"
    search_top_k: int = Field(10, ge=0, le=1000)
    search_days: int = Field(180, ge=0, le=36500)


class EventSettings(_Section):
    shards: int = Field(4, ge=1, le=256)
    queue_size: int = Field(10_000, ge=10)
    batch_size: int = Field(500, ge=1, le=10_000)
    retries: int = Field(3, ge=0, le=100)
    retry_backoff_s: float = Field(0.2, ge=0)
    replay_interval_s: float = Field(2.0, gt=0)
    spool_dir: Path | None = None  # default: <data_dir>/spool
    drain_timeout_s: float = Field(30.0, ge=0)


class AuthSettings(_Section):
    enabled: bool = False
    secret: SecretStr = SecretStr("")
    allowed_devices: list[str] = Field(default_factory=list)  # these skip token checks
    max_age_s: int = Field(30 * 86400, ge=60)


DEFAULT_WAKEUP_WORDS = ("你好小智", "你好小志", "小智", "hi xiaozhi", "hey xiaozhi")


class ServerSettings(_Section):
    """The device server (protocol.md §1, §2)."""

    host: str = "0.0.0.0"
    port: int = Field(8000, ge=0, le=65535)  # 0 = any free port (tests)
    http_port: int = Field(8003, ge=0, le=65535)  # OTA + /healthz
    public_host: str | None = None  # what devices are told to connect to; default: this machine's address
    auth: AuthSettings = AuthSettings()
    downlink_sample_rate: Literal[16000, 24000] = 24000
    frame_duration_ms: Literal[20, 40, 60] = 60
    prebuffer_frames: int = Field(3, ge=0, le=10)
    hello_timeout_s: float = Field(10.0, gt=0)
    idle_timeout_s: float = Field(120.0, gt=0)
    tool_call_timeout_s: float = Field(30.0, gt=0)
    max_frame_bytes: int = Field(64 * 1024, ge=1024)
    vad_min_silence_ms: int = Field(700, ge=100, le=5000)
    vad_tick_ms: int = Field(30, ge=5, le=200)
    # Processes that decode every device's uplink and run the VAD; the streams are shared among them.
    uplink_workers: int = Field(default_factory=lambda: min(os.cpu_count() or 1, 4), ge=1, le=32)
    # Processes that synthesize and encode speech (local TTS engines); 0 = in the server process.
    speech_workers: int = Field(default_factory=lambda: min(os.cpu_count() or 1, 4), ge=0, le=32)
    wakeup_words: list[str] = Field(default_factory=lambda: list(DEFAULT_WAKEUP_WORDS))
    enable_greeting: bool = True  # a wake word gets a spoken greeting; off: just stt + tts stop
    system_prompt: str = "你是小智，一个友好、简洁的语音助手。Answer in the user's language, briefly."
    live_token: SecretStr = SecretStr("")  # remote consoles must present it on /xiaozhi/live
    # Unbound devices get an activation code at the OTA check and may connect only once an operator entered it.
    require_activation: bool = False


class PipelineSettings(_Section):
    """Like the reference's ``selected_module``: which named instance of each kind, and the instances."""

    asr: str = "whisper"
    llm: str = "local"
    tts: str = "espeak"
    instances: dict[str, dict[str, dict[str, Any]]] = Field(default_factory=dict)  # kind → name → {type, …}


class Settings(_Section):
    database: DatabaseSettings = DatabaseSettings()
    minio: MinioSettings | None = None  # absent → audio saving is off (S15)
    conversation: ConversationSettings = ConversationSettings()
    memory: MemorySettings = MemorySettings()
    redis: RedisSettings | None = None
    events: EventSettings = EventSettings()
    server: ServerSettings = ServerSettings()
    pipeline: PipelineSettings = PipelineSettings()
    data_dir: Path = Field(default_factory=lambda: platformdirs.user_data_path(APP_NAME))
    log_level: Literal["DEBUG", "INFO", "WARNING", "ERROR"] = "INFO"
    source: str = Field("defaults", exclude=True)

    @property
    def audio_enabled(self) -> bool:
        return self.minio is not None and self.conversation.enable_audio_storage

    @property
    def spool_dir(self) -> Path:
        return self.events.spool_dir or self.data_dir / "spool"


# Environment overrides (S21) with the design's names, plus the ones the other sections need.
# name → (dotted key, section created when absent)
ENV_OVERRIDES: dict[str, str] = {
    "DB_TYPE": "database.type",
    "DB_HOST": "database.host",
    "DB_PORT": "database.port",
    "DB_USER": "database.username",
    "DB_PASSWORD": "database.password",
    "DB_NAME": "database.database",
    "DB_SSL_MODE": "database.ssl_mode",
    "DB_EMBEDDED": "database.embedded",
    "DB_POOL_MIN_IDLE": "database.pool.min_idle",
    "DB_POOL_MAX_OPEN": "database.pool.max_open",
    "DB_POOL_MAX_LIFETIME": "database.pool.max_lifetime_s",
    "MINIO_ENDPOINT": "minio.endpoint",
    "MINIO_ACCESS_KEY": "minio.access_key_id",
    "MINIO_SECRET_KEY": "minio.secret_access_key",
    "MINIO_BUCKET": "minio.bucket_audio",
    "MINIO_USE_SSL": "minio.use_ssl",
    "MINIO_REGION": "minio.region",
    "MINIO_EMBEDDED": "minio.embedded",
    "REDIS_HOST": "redis.host",
    "REDIS_PORT": "redis.port",
    "REDIS_PASSWORD": "redis.password",
    "REDIS_DB": "redis.db",
    "REDIS_KEY_PREFIX": "redis.key_prefix",
    "MEMORY_PROVIDER": "memory.provider",
    "CONVERSATION_STORAGE_TYPE": "conversation.storage_type",
    "ENABLE_AUDIO_STORAGE": "conversation.enable_audio_storage",
    "MESSAGE_RETENTION_DAYS": "conversation.message_retention_days",
    "SERVER_HOST": "server.host",
    "SERVER_PORT": "server.port",
    "SERVER_HTTP_PORT": "server.http_port",
    "SERVER_AUTH_SECRET": "server.auth.secret",
    "XIAOZHI_DATA_DIR": "data_dir",
    "XIAOZHI_LOG_LEVEL": "log_level",
}

# Setting a server address by environment means "use that server", not the embedded one.
_EXTERNAL_WHEN_SET = {"DB_HOST": "database.embedded", "MINIO_ENDPOINT": "minio.embedded"}

# With no configuration at all, everything runs on this machine (the one-workstation demo).
ZERO_CONFIG: dict[str, Any] = {"database": {"embedded": True}, "minio": {"embedded": True}}


def default_config_paths() -> list[Path]:
    return [Path.cwd() / "config.yaml", platformdirs.user_config_path(APP_NAME) / "config.yaml"]


def load_settings(path: str | Path | None = None, env: Mapping[str, str] | None = None) -> Settings:
    """Load settings from ``path`` (or $XIAOZHI_CONFIG, ./config.yaml, the user config dir) and the environment.

    No file anywhere → the zero-configuration profile: embedded PostgreSQL and S3.
    """
    env = os.environ if env is None else env
    chosen = Path(path) if path else (Path(env[CONFIG_ENV]) if env.get(CONFIG_ENV) else None)
    if chosen is None:
        chosen = next((p for p in default_config_paths() if p.is_file()), None)
    if chosen is None:
        raw: dict[str, Any] = _deep_copy(ZERO_CONFIG)
        source = "defaults (no config file: embedded PostgreSQL and S3)"
    else:
        raw = _read_yaml(chosen)
        source = str(chosen)
    applied = _apply_env(raw, env)
    if applied:
        source += " + environment (" + ", ".join(applied) + ")"
    try:
        settings = Settings.model_validate(raw)
    except ValidationError as exc:
        raise ConfigError(_explain(exc, source, applied)) from None
    settings.source = source
    return settings


def _read_yaml(path: Path) -> dict[str, Any]:
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise ConfigError(f"{path}: config file not found") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise ConfigError(f"{path}: cannot read config file: {exc}") from None
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f" line {mark.line + 1} column {mark.column + 1}" if mark else ""
        problem = getattr(exc, "problem", None) or str(exc)
        raise ConfigError(f"{path}:{where}: not valid YAML: {problem}") from None
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: the top level must be a mapping of sections, got {type(data).__name__}")
    return data


def _apply_env(raw: dict[str, Any], env: Mapping[str, str]) -> list[str]:
    applied = []
    for name, dotted in ENV_OVERRIDES.items():
        value = env.get(name)
        if value is None or value == "":
            continue
        _set_dotted(raw, dotted, value)
        applied.append(name)
    for name, dotted in _EXTERNAL_WHEN_SET.items():
        flag_env = "DB_EMBEDDED" if dotted.startswith("database") else "MINIO_EMBEDDED"
        if env.get(name) and not env.get(flag_env):
            _set_dotted(raw, dotted, False)
    return applied


def _set_dotted(raw: dict[str, Any], dotted: str, value: Any) -> None:
    node = raw
    *parents, leaf = dotted.split(".")
    for key in parents:
        child = node.get(key)
        if not isinstance(child, dict):
            child = {}
            node[key] = child
        node = child
    node[leaf] = value


def _explain(exc: ValidationError, source: str, applied_env: list[str]) -> str:
    problems = []
    for err in exc.errors():
        key = ".".join(str(p) for p in err["loc"])
        env_name = next((n for n in applied_env if ENV_OVERRIDES[n] == key), None)
        msg = err["msg"].removeprefix("Value error, ")
        if err["type"] == "extra_forbidden":
            msg = "unknown key"
            parent = _section_fields(err["loc"][:-1])
            if parent:
                msg += f" (allowed: {', '.join(parent)})"
        elif err["type"] == "literal_error" and "expected" in (err.get("ctx") or {}):
            msg = f"must be one of {err['ctx']['expected']}"
        value = err.get("input")
        secret = any(word in key for word in ("password", "secret"))
        shown = "" if secret or isinstance(value, dict) else f" (got {value!r})"
        where = f" [env {env_name}]" if env_name else ""
        problems.append(f"{key}{where}: {msg}{shown}")
    return f"{source}: invalid configuration: " + "; ".join(problems)


def _section_fields(loc: tuple[Any, ...]) -> list[str]:
    model: type[BaseModel] = Settings
    for part in loc:
        field = model.model_fields.get(str(part))
        if field is None:
            return []
        annotation = field.annotation
        candidates = [annotation, *getattr(annotation, "__args__", ())]
        nxt = next((c for c in candidates if isinstance(c, type) and issubclass(c, BaseModel)), None)
        if nxt is None:
            return []
        model = nxt
    return [name for name, f in model.model_fields.items() if not f.exclude]


def _deep_copy(data: dict[str, Any]) -> dict[str, Any]:
    return {k: _deep_copy(v) if isinstance(v, dict) else v for k, v in data.items()}


def redacted(settings: Settings) -> dict[str, Any]:
    """Settings as a plain dict safe to log or print (secrets shown as '**********')."""
    return settings.model_dump(mode="json")
