-- Galleries imported from DeepFace's PKL files (facesearch import-pkl / export-pkl).
--
-- DeepFace's VGG-Face and DeepFace models give 4096-d embeddings. A vector column holds up to
-- 16,000 dimensions; only pgvector's HNSW index stops at 2,000, so models above that are stored
-- without an index and searched exactly (store/gallery.py HNSW_MAX_DIMS).
ALTER TABLE models DROP CONSTRAINT models_dim_check;
ALTER TABLE models ADD CONSTRAINT models_dim_check CHECK (dim BETWEEN 1 AND 16000);

-- Where an imported face came from: DeepFace's identity path (db_path/<person>/<photo>) and its
-- own hash of that photo, kept so export-pkl gives DeepFace back the rows it knows (its find()
-- drops rows whose identity is not on disk and re-embeds those whose hash changed). NULL for
-- faces enrolled by facesearch. Nullable, no default: adding them rewrites nothing.
ALTER TABLE faces ADD COLUMN source text;
ALTER TABLE faces ADD COLUMN source_hash text;
