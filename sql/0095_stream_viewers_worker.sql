-- 0095_stream_viewers_worker.sql
--
-- WHY: one stream's viewers may sit on several SFU workers (the cascade: origin -> edges,
-- docs/architecture.md). When a worker dies, the reaper must make ITS viewers inactive -- and
-- only those: the stream itself may live on at its origin and other edges. The row says which
-- worker serves it. NULL for rows written before the cascade (and by tools): the stream's end
-- still makes them inactive, as before.

ALTER TABLE stream_viewers ADD COLUMN sfu_worker_id TEXT;
CREATE INDEX idx_stream_viewers_active_worker ON stream_viewers (sfu_worker_id) WHERE is_active;
