-- recognize_face(): the seed's stored-procedure idea, done so it keeps to one domain and one model
-- and uses that domain's vector index. Returns the best face of each of the k nearest people whose
-- distance is under the threshold, best first.
--
-- The query is built with format() so the model's dimension and id are literals: the partial HNSW
-- index of the domain's partition matches only then, whatever plan PL/pgSQL caches.
CREATE FUNCTION recognize_face(
    query     vector,
    domain    text,
    threshold double precision,
    k         integer,
    model     text DEFAULT 'dlib-resnet-v1'
) RETURNS TABLE (person_id bigint, person_name text, face_id bigint, distance double precision)
LANGUAGE plpgsql STABLE
-- As many HNSW candidates as facesearch's own search (store/gallery.py EF_SEARCH).
SET hnsw.ef_search = 100
AS $fn$
DECLARE
    d_id  bigint;
    m_id  smallint;
    m_dim integer;
BEGIN
    SELECT d.id INTO d_id FROM domains d WHERE d.name = recognize_face.domain;
    IF d_id IS NULL THEN
        RAISE EXCEPTION 'unknown domain "%"', recognize_face.domain USING ERRCODE = 'no_data_found';
    END IF;
    SELECT m.id, m.dim INTO m_id, m_dim FROM models m WHERE m.name = recognize_face.model;
    IF m_id IS NULL THEN
        RAISE EXCEPTION 'unknown model "%"', recognize_face.model USING ERRCODE = 'no_data_found';
    END IF;
    IF vector_dims(query) <> m_dim THEN
        RAISE EXCEPTION 'the query has % dimensions but model "%" has %',
            vector_dims(query), recognize_face.model, m_dim USING ERRCODE = 'data_exception';
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
