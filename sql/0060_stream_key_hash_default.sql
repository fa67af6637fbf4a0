-- 0060_stream_key_hash_default.sql
--
-- WHY: the schema document lets a `streams` row be inserted without a key (its stream_key was
-- nullable), but 0005 made stream_key_hash NOT NULL with no default, so such an insert -- by an
-- admin tool, a fixture, or any client written against the document -- now fails. Give the column
-- the same value 0005 gave old keyless rows: the SHA-256 of a random UUID, a digest of a value
-- nobody knows. Such a stream cannot be published to until its key is rotated, exactly like a
-- migrated keyless stream. An explicit NULL is still refused (NOT NULL stays), and the digest
-- stays 32 bytes and unique (gen_random_uuid is evaluated per row).

ALTER TABLE streams
    ALTER COLUMN stream_key_hash SET DEFAULT sha256(uuid_send(gen_random_uuid()));
