-- Shards: PostgreSQL servers that hold whole domains (store/shards.py, docs/DEPLOY.md "Shards").
--
-- A sharded domain's faces table lives on its shard, with its keys and HNSW index there, and is a
-- postgres_fdw foreign partition of `faces` here: searches run on the shard, people, keys and
-- domains stay here. The shards' connection info is stored here (not in one API process's config)
-- so every stateless replica knows them; the password, if the URL has one, also sits in the
-- foreign server's user mapping.
CREATE TABLE shards (
    name       text PRIMARY KEY,
    url        text NOT NULL,
    created_at timestamptz NOT NULL DEFAULT now()
);

-- NULL: the domain's faces are on this server, as before.
ALTER TABLE domains ADD COLUMN shard text REFERENCES shards (name);

-- A foreign table cannot be a partition of a table with unique indexes or foreign keys, so faces'
-- keys become each partition's own: the same columns (the domain first, so each B-tree serves the
-- domain filter), only declared per partition. Local partitions keep every key and foreign key
-- (Gallery.create_domain gives new ones theirs); a shard's table has the keys (its foreign keys
-- would point at people on another server: see DEPLOY.md "Shards", limits).
ALTER TABLE faces DROP CONSTRAINT faces_pkey;
ALTER TABLE faces DROP CONSTRAINT faces_domain_id_person_id_model_id_photo_sha256_key;
ALTER TABLE faces DROP CONSTRAINT faces_domain_id_fkey;
ALTER TABLE faces DROP CONSTRAINT faces_model_id_fkey;
ALTER TABLE faces DROP CONSTRAINT faces_person_fkey;

DO $do$
DECLARE
    part regclass;
BEGIN
    FOR part IN SELECT inhrelid::regclass FROM pg_inherits WHERE inhparent = 'faces'::regclass LOOP
        EXECUTE format(
            'ALTER TABLE %1$s ADD CONSTRAINT %2$I PRIMARY KEY (domain_id, id),'
            ' ADD CONSTRAINT %3$I UNIQUE (domain_id, person_id, model_id, photo_sha256),'
            ' ADD CONSTRAINT %4$I FOREIGN KEY (domain_id) REFERENCES domains (id) ON DELETE CASCADE,'
            ' ADD CONSTRAINT %5$I FOREIGN KEY (domain_id, person_id)'
            '   REFERENCES people (domain_id, id) ON DELETE CASCADE,'
            ' ADD CONSTRAINT %6$I FOREIGN KEY (model_id) REFERENCES models (id)',
            part, part::text || '_pkey', part::text || '_photo_key', part::text || '_domain_fkey',
            part::text || '_person_fkey', part::text || '_model_fkey');
    END LOOP;
END
$do$;
