-- A small JPEG crop of each face (~3-4 KB; NULL when thumbnails are off or for faces enrolled
-- before this version), so a UI can show whose face it is without keeping the photo.
--
-- It lives in the face's row, so deleting the face (or its person, or dropping the domain's
-- partition) deletes it with the embedding. A row with a thumbnail is over PostgreSQL's TOAST
-- threshold (~2 KB), so the JPEG is stored out of line in the partition's TOAST table: the heap
-- that searches read stays as small as before. EXTERNAL: out of line without trying to compress
-- what JPEG has already compressed. Adding a nullable column without a default rewrites nothing.

ALTER TABLE faces ADD COLUMN thumbnail bytea;
ALTER TABLE faces ALTER COLUMN thumbnail SET STORAGE EXTERNAL;
