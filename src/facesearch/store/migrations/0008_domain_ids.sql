-- Ids numbered per domain: a person's or a face's id says nothing about other tenants (global
-- sequences let domain A see how many people domain B created between two of its own).
--
-- Rows made before this version keep their id (the API promised ids stay valid); each domain's
-- next number is one past its largest. New ids come from the domain's counters, taken with an
-- UPDATE of its row (a row lock held for one statement, or by add_faces for one reservation): a
-- BEFORE INSERT trigger fills an id left out, and bulk inserts reserve a range at once.
--
-- people's key becomes (domain_id, id), as faces' already is; faces point at their person by
-- (domain_id, person_id), so no row can reach a person of another domain. Every lookup names the
-- domain first, so the primary keys' B-trees serve the domain filter.
ALTER TABLE domains ADD COLUMN next_person_id bigint NOT NULL DEFAULT 1;
ALTER TABLE domains ADD COLUMN next_face_id bigint NOT NULL DEFAULT 1;

UPDATE domains d SET
    next_person_id = coalesce((SELECT max(p.id) FROM people p WHERE p.domain_id = d.id), 0) + 1,
    next_face_id = coalesce((SELECT max(f.id) FROM faces f WHERE f.domain_id = d.id), 0) + 1;

ALTER TABLE faces DROP CONSTRAINT faces_person_id_fkey;
ALTER TABLE people DROP CONSTRAINT people_pkey;
ALTER TABLE people ADD PRIMARY KEY (domain_id, id);
ALTER TABLE faces ADD CONSTRAINT faces_person_fkey FOREIGN KEY (domain_id, person_id)
    REFERENCES people (domain_id, id) ON DELETE CASCADE;

ALTER TABLE people ALTER COLUMN id DROP DEFAULT;
ALTER TABLE faces ALTER COLUMN id DROP DEFAULT;
DROP SEQUENCE people_id_seq;
DROP SEQUENCE faces_id_seq;

CREATE FUNCTION next_person_id() RETURNS trigger LANGUAGE plpgsql AS $fn$
BEGIN
    IF NEW.id IS NULL THEN
        UPDATE domains SET next_person_id = next_person_id + 1 WHERE id = NEW.domain_id
            RETURNING next_person_id - 1 INTO NEW.id;
    END IF;
    RETURN NEW;
END
$fn$;

CREATE FUNCTION next_face_id() RETURNS trigger LANGUAGE plpgsql AS $fn$
BEGIN
    IF NEW.id IS NULL THEN
        UPDATE domains SET next_face_id = next_face_id + 1 WHERE id = NEW.domain_id
            RETURNING next_face_id - 1 INTO NEW.id;
    END IF;
    RETURN NEW;
END
$fn$;

CREATE TRIGGER people_id BEFORE INSERT ON people FOR EACH ROW EXECUTE FUNCTION next_person_id();
CREATE TRIGGER faces_id BEFORE INSERT ON faces FOR EACH ROW EXECUTE FUNCTION next_face_id();

-- recognize_face() joined people by id alone: now by (domain, id).
CREATE OR REPLACE FUNCTION recognize_face(
    query     vector,
    domain    text,
    threshold double precision,
    k         integer,
    model     text DEFAULT NULL  -- NULL: the domain's model
) RETURNS TABLE (person_id bigint, person_name text, face_id bigint, distance double precision)
LANGUAGE plpgsql STABLE
-- As many HNSW candidates as facesearch's own search (store/gallery.py EF_SEARCH).
SET hnsw.ef_search = 100
AS $fn$
DECLARE
    d_id    bigint;
    m_name  text;
    m_id    smallint;
    m_dim   integer;
BEGIN
    SELECT d.id, coalesce(recognize_face.model, d.model) INTO d_id, m_name
    FROM domains d WHERE d.name = recognize_face.domain;
    IF d_id IS NULL THEN
        RAISE EXCEPTION 'unknown domain "%"', recognize_face.domain USING ERRCODE = 'no_data_found';
    END IF;
    SELECT m.id, m.dim INTO m_id, m_dim FROM models m WHERE m.name = m_name;
    IF m_id IS NULL THEN
        IF recognize_face.model IS NULL THEN  -- the domain's model has no faces anywhere yet
            RETURN;
        END IF;
        RAISE EXCEPTION 'unknown model "%"', m_name USING ERRCODE = 'no_data_found';
    END IF;
    IF vector_dims(query) <> m_dim THEN
        RAISE EXCEPTION 'the query has % dimensions but model "%" has %',
            vector_dims(query), m_name, m_dim USING ERRCODE = 'data_exception';
    END IF;
    RETURN QUERY EXECUTE format($q$
        WITH nearest AS (
            SELECT f.id, f.person_id, (f.embedding::vector(%1$s) <=> $1) AS distance
            FROM faces f
            WHERE f.domain_id = $2 AND f.model_id = %2$s
            ORDER BY f.embedding::vector(%1$s) <=> $1
            LIMIT greatest($4 * 4, 20)
        ), best AS (
            SELECT DISTINCT ON (n.person_id) n.person_id, n.id, n.distance
            FROM nearest n WHERE n.distance < $3
            ORDER BY n.person_id, n.distance
        )
        SELECT b.person_id, p.name, b.id, b.distance
        FROM best b JOIN people p ON p.domain_id = $2 AND p.id = b.person_id
        ORDER BY b.distance
        LIMIT $4
    $q$, m_dim, m_id) USING query::vector, d_id, threshold, k;
END
$fn$;
