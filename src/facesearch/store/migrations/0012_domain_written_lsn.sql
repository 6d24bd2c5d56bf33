-- Read-your-writes with streaming read replicas (store/replicas.py): the primary's WAL position
-- after a domain's latest write through the API. A read of the domain goes to a replica only once
-- its pg_last_wal_replay_lsn() has reached it. NULL: no write tracked (never written through an
-- API process with FACESEARCH_READ_DATABASE_URLS), any replica may serve it.
ALTER TABLE domains ADD COLUMN written_lsn pg_lsn;
