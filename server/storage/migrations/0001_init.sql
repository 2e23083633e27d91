-- Conversation storage (S1–S5) and the legacy manager tables the migration tools fill (§3.10).
CREATE EXTENSION IF NOT EXISTS pg_trgm;

CREATE OR REPLACE FUNCTION xz_touch_updated_at() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    NEW.updated_at = now();
    RETURN NEW;
END $$;

CREATE TABLE users (
    id          bigserial PRIMARY KEY,
    username    varchar(64) NOT NULL UNIQUE,
    password    varchar(255),
    email       varchar(255),
    role        varchar(32) NOT NULL DEFAULT 'user',
    created_at  timestamptz NOT NULL DEFAULT now(),
    updated_at  timestamptz NOT NULL DEFAULT now()
);

CREATE TABLE agents (
    id             bigserial PRIMARY KEY,
    user_id        bigint REFERENCES users(id) ON DELETE SET NULL,
    name           varchar(128) NOT NULL,
    custom_prompt  text,
    llm_config_id  varchar(128),
    tts_config_id  varchar(128),
    asr_speed      varchar(32),
    status         varchar(32) NOT NULL DEFAULT 'active',
    created_at     timestamptz NOT NULL DEFAULT now(),
    updated_at     timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX agents_user_id_idx ON agents (user_id);

CREATE TABLE devices (
    id              bigserial PRIMARY KEY,
    user_id         bigint REFERENCES users(id) ON DELETE SET NULL,
    agent_id        bigint REFERENCES agents(id) ON DELETE SET NULL,
    device_code     varchar(128) NOT NULL UNIQUE,
    device_name     varchar(128),
    challenge       varchar(255),
    pre_secret_key  varchar(255),
    activated       boolean NOT NULL DEFAULT false,
    last_active_at  timestamptz,
    created_at      timestamptz NOT NULL DEFAULT now(),
    updated_at      timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX devices_user_id_idx ON devices (user_id);
CREATE INDEX devices_agent_id_idx ON devices (agent_id);

CREATE TABLE configs (
    id          bigserial PRIMARY KEY,
    type        varchar(32) NOT NULL,
    name        varchar(128) NOT NULL,
    config_id   varchar(128) NOT NULL,
    provider    varchar(64) NOT NULL,
    json_data   jsonb NOT NULL DEFAULT '{}',
    enabled     boolean NOT NULL DEFAULT true,
    is_default  boolean NOT NULL DEFAULT false,
    created_at  timestamptz NOT NULL DEFAULT now(),
    updated_at  timestamptz NOT NULL DEFAULT now(),
    UNIQUE (type, config_id)
);
CREATE INDEX configs_type_idx ON configs (type, is_default) WHERE enabled;

CREATE TABLE global_roles (
    id           bigserial PRIMARY KEY,
    name         varchar(128) NOT NULL,
    description  text,
    prompt       text,
    is_default   boolean NOT NULL DEFAULT false,
    created_at   timestamptz NOT NULL DEFAULT now(),
    updated_at   timestamptz NOT NULL DEFAULT now()
);

-- One row per conversation (one device connection). The counters are maintained by the store
-- in the same transaction as the messages, so the session list never has to aggregate.
CREATE TABLE conversation_sessions (
    id                 bigserial PRIMARY KEY,
    session_id         varchar(64) NOT NULL UNIQUE,
    device_id          varchar(128) NOT NULL,
    agent_id           varchar(128),
    user_id            bigint REFERENCES users(id) ON DELETE SET NULL,
    started_at         timestamptz NOT NULL DEFAULT now(),
    ended_at           timestamptz,
    status             varchar(20) NOT NULL DEFAULT 'active'
                       CHECK (status IN ('active', 'ended', 'reset', 'migrated')),
    metadata           jsonb NOT NULL DEFAULT '{}',
    last_seq           bigint NOT NULL DEFAULT 0,   -- last sequence_num handed out
    context_start_seq  bigint NOT NULL DEFAULT 0,   -- memory reset: context starts after this
    message_count      integer NOT NULL DEFAULT 0,
    audio_count        integer NOT NULL DEFAULT 0,
    tool_call_count    integer NOT NULL DEFAULT 0,
    last_message_at    timestamptz,
    created_at         timestamptz NOT NULL DEFAULT now(),
    updated_at         timestamptz NOT NULL DEFAULT now(),
    CHECK (ended_at IS NULL OR ended_at >= started_at)
);
-- Session list: newest first, keyset on (started_at, id), optionally per device or agent.
CREATE INDEX conversation_sessions_started_idx ON conversation_sessions (started_at DESC, id DESC);
CREATE INDEX conversation_sessions_device_idx ON conversation_sessions (device_id, started_at DESC, id DESC);
CREATE INDEX conversation_sessions_agent_idx ON conversation_sessions (agent_id, started_at DESC, id DESC)
    WHERE agent_id IS NOT NULL;
CREATE INDEX conversation_sessions_user_idx ON conversation_sessions (user_id) WHERE user_id IS NOT NULL;
CREATE INDEX conversation_sessions_active_idx ON conversation_sessions (started_at) WHERE status = 'active';

CREATE TABLE conversation_messages (
    id             bigserial PRIMARY KEY,
    session_id     varchar(64) NOT NULL REFERENCES conversation_sessions(session_id) ON DELETE CASCADE,
    device_id      varchar(128) NOT NULL,
    message_id     varchar(64) NOT NULL UNIQUE,
    sequence_num   bigint NOT NULL CHECK (sequence_num > 0),
    role           varchar(20) NOT NULL CHECK (role IN ('user', 'assistant', 'system', 'tool')),
    content        text NOT NULL DEFAULT '',
    multi_content  jsonb,
    tool_calls     jsonb,
    tool_call_id   varchar(64),
    audio_file_id  varchar(128),
    metadata       jsonb NOT NULL DEFAULT '{}',
    created_at     timestamptz NOT NULL DEFAULT now(),
    UNIQUE (session_id, sequence_num)
);
CREATE INDEX conversation_messages_device_idx ON conversation_messages (device_id, created_at);
CREATE INDEX conversation_messages_created_idx ON conversation_messages (created_at);
-- Full-text search for Chinese and English: trigram GIN over the text (C.UTF-8 makes trigrams of CJK).
CREATE INDEX conversation_messages_content_trgm_idx ON conversation_messages USING gin (content gin_trgm_ops);

CREATE TABLE system_prompts (
    id          bigserial PRIMARY KEY,
    device_id   varchar(128) NOT NULL UNIQUE,
    agent_id    varchar(128),
    prompt      text NOT NULL,
    is_active   boolean NOT NULL DEFAULT true,
    created_at  timestamptz NOT NULL DEFAULT now(),
    updated_at  timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX system_prompts_agent_idx ON system_prompts (agent_id);

CREATE TABLE audio_files (
    id             bigserial PRIMARY KEY,
    file_id        varchar(128) NOT NULL UNIQUE,
    session_id     varchar(64) NOT NULL REFERENCES conversation_sessions(session_id),
    message_id     varchar(64) REFERENCES conversation_messages(message_id) ON DELETE SET NULL,
    device_id      varchar(128) NOT NULL,
    bucket_name    varchar(64) NOT NULL,
    object_key     varchar(512) NOT NULL,
    file_type      varchar(20) NOT NULL CHECK (file_type IN ('opus', 'wav', 'mp3', 'pcm')),
    file_size      bigint NOT NULL CHECK (file_size > 0),
    duration_ms    integer NOT NULL DEFAULT 0 CHECK (duration_ms >= 0),
    sample_rate    integer NOT NULL DEFAULT 16000,
    channels       integer NOT NULL DEFAULT 1,
    source_type    varchar(20) NOT NULL CHECK (source_type IN ('user', 'tts', 'asr')),
    transcription  text,
    metadata       jsonb NOT NULL DEFAULT '{}',
    created_at     timestamptz NOT NULL DEFAULT now(),
    UNIQUE (bucket_name, object_key)
);
CREATE INDEX audio_files_session_idx ON audio_files (session_id, created_at);
CREATE INDEX audio_files_message_idx ON audio_files (message_id);
CREATE INDEX audio_files_device_idx ON audio_files (device_id, created_at);
CREATE INDEX audio_files_created_idx ON audio_files (created_at);

ALTER TABLE conversation_messages
    ADD CONSTRAINT conversation_messages_audio_fk FOREIGN KEY (audio_file_id)
    REFERENCES audio_files(file_id) ON DELETE SET NULL DEFERRABLE INITIALLY DEFERRED;

CREATE TRIGGER users_touch BEFORE UPDATE ON users FOR EACH ROW EXECUTE FUNCTION xz_touch_updated_at();
CREATE TRIGGER agents_touch BEFORE UPDATE ON agents FOR EACH ROW EXECUTE FUNCTION xz_touch_updated_at();
CREATE TRIGGER devices_touch BEFORE UPDATE ON devices FOR EACH ROW EXECUTE FUNCTION xz_touch_updated_at();
CREATE TRIGGER configs_touch BEFORE UPDATE ON configs FOR EACH ROW EXECUTE FUNCTION xz_touch_updated_at();
CREATE TRIGGER global_roles_touch BEFORE UPDATE ON global_roles
    FOR EACH ROW EXECUTE FUNCTION xz_touch_updated_at();
CREATE TRIGGER system_prompts_touch BEFORE UPDATE ON system_prompts
    FOR EACH ROW EXECUTE FUNCTION xz_touch_updated_at();
