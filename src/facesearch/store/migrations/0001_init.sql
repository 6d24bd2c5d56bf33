-- facesearch schema, version 1.
--
-- Faces are LIST-partitioned by domain. A search names one domain, so the planner prunes to that
-- domain's partition, and each partition carries its own HNSW index per model (a partial index on
-- model_id, over embedding cast to the model's dimension). The domain filter is therefore served
-- by partition pruning + the partition's vector index, never by a scan of other tenants' rows: a
-- filter on one big shared HNSW index (the seed's query) must walk past every other domain's
-- neighbours, and a B-tree on domain_id cannot order by distance. Partitions also make deleting a
-- domain a DROP TABLE: its biometric data is gone at once, with no dead tuples left behind.

CREATE TABLE models (
    id   smallserial PRIMARY KEY,
    name text    NOT NULL UNIQUE,
    dim  integer NOT NULL CHECK (dim BETWEEN 1 AND 2000)
);

CREATE TABLE domains (
    id         bigserial PRIMARY KEY,
    name       text NOT NULL UNIQUE,
    created_at timestamptz NOT NULL DEFAULT now()
);

CREATE TABLE people (
    id         bigserial PRIMARY KEY,
    domain_id  bigint NOT NULL REFERENCES domains (id) ON DELETE CASCADE,
    name       text   NOT NULL,
    metadata   jsonb  NOT NULL DEFAULT '{}'::jsonb,
    created_at timestamptz NOT NULL DEFAULT now(),
    UNIQUE (domain_id, name)
);

CREATE TABLE faces (
    id           bigserial,
    domain_id    bigint   NOT NULL REFERENCES domains (id) ON DELETE CASCADE,
    person_id    bigint   NOT NULL REFERENCES people (id) ON DELETE CASCADE,
    model_id     smallint NOT NULL REFERENCES models (id),
    embedding    vector   NOT NULL,
    box_x        integer  NOT NULL,
    box_y        integer  NOT NULL,
    box_w        integer  NOT NULL,
    box_h        integer  NOT NULL,
    det_score    real,
    photo_sha256 bytea    NOT NULL CHECK (length(photo_sha256) = 32),
    created_at   timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (domain_id, id),
    -- Enrolling the same photo for the same person with the same model again is a no-op.
    UNIQUE (domain_id, person_id, model_id, photo_sha256)
) PARTITION BY LIST (domain_id);

CREATE INDEX faces_person_idx ON faces (person_id);
