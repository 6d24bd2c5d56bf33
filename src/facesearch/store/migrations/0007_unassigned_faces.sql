-- Unknown faces (opt-in per domain): faces recognize matched to nobody, kept to be grouped into
-- candidate people (clusters) and named later.
--
-- They are biometric data of people who were never enrolled, so a domain keeps none unless its
-- keep_unknown is set. They live in their own table, not in `faces`, so no search ever reads them
-- (recognize searches `faces` only). The domain filter is served by the primary key's B-tree
-- (domain_id first): every query here names one domain, and they are never searched by distance
-- (clustering reads a domain's embeddings whole, a few thousand at most, see the retention
-- settings). Ids are numbered per domain (unassigned_counters), so they say nothing about other
-- tenants; deleting a domain deletes its unassigned faces (ON DELETE CASCADE).

ALTER TABLE domains ADD COLUMN keep_unknown boolean NOT NULL DEFAULT false;

CREATE TABLE unassigned_counters (
    domain_id    bigint PRIMARY KEY REFERENCES domains (id) ON DELETE CASCADE,
    last_face    bigint NOT NULL DEFAULT 0,
    last_cluster bigint NOT NULL DEFAULT 0
);

CREATE TABLE unassigned_faces (
    domain_id    bigint   NOT NULL REFERENCES domains (id) ON DELETE CASCADE,
    id           bigint   NOT NULL,  -- per domain (unassigned_counters.last_face)
    cluster_id   bigint   NOT NULL,  -- per domain (unassigned_counters.last_cluster); a lone face is a cluster of one
    model_id     smallint NOT NULL REFERENCES models (id),
    embedding    vector   NOT NULL,
    box_x        integer  NOT NULL,
    box_y        integer  NOT NULL,
    box_w        integer  NOT NULL,
    box_h        integer  NOT NULL,
    det_score    real,
    photo_sha256 bytea    NOT NULL CHECK (length(photo_sha256) = 32),
    thumbnail    bytea,
    created_at   timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (domain_id, id)
);

CREATE INDEX unassigned_faces_cluster_idx ON unassigned_faces (domain_id, cluster_id);
CREATE INDEX unassigned_faces_age_idx ON unassigned_faces (domain_id, created_at);
-- JPEG crops are already compressed: out of line, uncompressed (as faces.thumbnail).
ALTER TABLE unassigned_faces ALTER COLUMN thumbnail SET STORAGE EXTERNAL;
