-- Online garbage collection (storage/src/gc.rs). Only ever add migrations; never edit an applied one.
--
-- last_referenced: unix milliseconds (fine enough that a collector without a grace period
-- still keeps what was referenced after it started) of the row's creation or last reference:
-- a link, an upload committed as it, a manifest put that needs it, a mount, a tag moved away.
-- The collector sweeps only rows older than its grace period, so the content of a push in
-- progress (blobs uploaded, manifest not yet put) is kept.
ALTER TABLE blobs ADD COLUMN last_referenced BIGINT NOT NULL DEFAULT 0;
UPDATE blobs SET last_referenced = created_at * 1000;
ALTER TABLE repo_blobs ADD COLUMN last_referenced BIGINT NOT NULL DEFAULT 0;
UPDATE repo_blobs SET last_referenced = created_at * 1000;
ALTER TABLE manifests ADD COLUMN last_referenced BIGINT NOT NULL DEFAULT 0;
UPDATE manifests SET last_referenced = created_at * 1000;

-- The digest an upload is being committed as: from the final PUT until the blob is linked,
-- the open session is the blob's only reference, and the collector keeps the blob for it.
ALTER TABLE uploads ADD COLUMN digest TEXT;
CREATE INDEX uploads_digest ON uploads (digest);
-- Expired sessions are found by age.
CREATE INDEX uploads_updated ON uploads (updated_at);
