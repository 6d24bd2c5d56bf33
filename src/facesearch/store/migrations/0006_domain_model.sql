-- A domain has a model: the one its enrollments embed with and its searches compare under.
--
-- A domain's faces are searched under its model only (a search never mixes models). Domains made
-- before this version get the model most of their faces have (ties: by name), or, with no faces,
-- dlib-resnet-v1: the only model the previous release enrolled with unless told otherwise. Moving a
-- domain to another model later means enrolling its photos again (`facesearch domains set-model`).
ALTER TABLE domains ADD COLUMN model text;

UPDATE domains d SET model = coalesce(
    (SELECT m.name FROM faces f JOIN models m ON m.id = f.model_id
     WHERE f.domain_id = d.id
     GROUP BY m.name ORDER BY count(*) DESC, m.name LIMIT 1),
    'dlib-resnet-v1');

ALTER TABLE domains ALTER COLUMN model SET NOT NULL;

-- recognize_face() searched dlib-resnet-v1 unless told otherwise: now the domain's own model.
DROP FUNCTION recognize_face(vector, text, double precision, integer, text);

CREATE FUNCTION recognize_face(
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
        FROM best b JOIN people p ON p.id = b.person_id
        ORDER BY b.distance
        LIMIT $4
    $q$, m_dim, m_id) USING query::vector, d_id, threshold, k;
END
$fn$;
