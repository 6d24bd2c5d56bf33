-- API keys, one domain each: the HTTP service lets a key act on its own domain only.
--
-- Only the SHA-256 of a key is stored (a key is 32 random bytes, so a fast hash is enough: there is
-- nothing to guess), and looked up through its unique index. ``prefix`` is the first characters of
-- the key, shown in listings so users can tell keys apart. Deleting a domain deletes its keys.

CREATE TABLE api_keys (
    id           bigserial PRIMARY KEY,
    domain_id    bigint NOT NULL REFERENCES domains (id) ON DELETE CASCADE,
    name         text   NOT NULL,
    key_sha256   bytea  NOT NULL UNIQUE CHECK (length(key_sha256) = 32),
    prefix       text   NOT NULL,
    created_at   timestamptz NOT NULL DEFAULT now(),
    last_used_at timestamptz
);

CREATE INDEX api_keys_domain_idx ON api_keys (domain_id);
