-- Device activation (protocol.md §2): the OTA check gives an unbound device a six-digit code; an operator
-- binds the device by entering it (`xiaozhi devices activate CODE`); the device's /activate poll then gets 200.
ALTER TABLE devices
    ADD COLUMN activation_code       varchar(16),
    ADD COLUMN activation_expires_at timestamptz,
    ADD COLUMN client_id             varchar(128),
    ADD COLUMN activated_at          timestamptz;
CREATE UNIQUE INDEX devices_activation_code_idx ON devices (activation_code) WHERE activation_code IS NOT NULL;
