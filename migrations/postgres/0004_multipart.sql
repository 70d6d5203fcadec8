-- Uploads to object stores through the backend's multipart API (storage/src/upload.rs). Only
-- ever add migrations; never edit an applied one.
--
-- multipart: JSON {"key", "id", "parts": [{"content_id", "size"}]}: the object key the
-- multipart upload writes, the backend's upload id and the parts uploaded so far, in order.
-- Kept in the database so that any replica can continue or finish the session. NULL for
-- sessions that stage every chunk as an object of its own (local stores, older sessions).
ALTER TABLE uploads ADD COLUMN multipart TEXT;
