-- 0020_video_on_demand.sql
--
-- WHY: the schema's video tables (videos, video_versions, video_metadata, video_views) had no
-- behaviour. Recording, upload, processing and per-second playback need:
--
-- 1. videos.price_per_second: a video is paid per second like a live view. A recording inherits
--    its stream's price; the creator may change it. videos.failure_reason: a failed video says why
--    (the creator sees it). videos.source_stream_id / source_session_id: a recording's origin.
--    videos.storage_key: where the original is, as a storage key (never a path from user input).
--    videos.upload_length / upload_offset: a resumable (tus 1.0) upload's progress.
-- 2. streams.record (default TRUE: every live session is recorded unless the creator opts out).
-- 3. processing_jobs: the media role's queue. A job is claimed with FOR UPDATE SKIP LOCKED and
--    holds a lease (locked_until) that its worker renews; a worker killed -9 stops renewing, the
--    lease runs out and another worker claims the job again. attempts counts claims; a job that
--    failed max_attempts times is failed for good. videos.processing_job_id names the job.
-- 4. video_versions: one row per (video, resolution), so a job run twice cannot duplicate a
--    rendition; storage_key + segment_seconds for HLS delivery.
-- 5. video_views.price_per_second (a view is priced when it starts: a later change never
--    re-prices seconds already bought), video_views.cut_off (the balance ran out).
-- 6. payments.payment_type gains 'video_view' (the schema's comment listed 'stream_view', 'tip',
--    'subscription'): one payments row per video view, reference_id = the video_views id, grown by
--    the same exactly-once tick flush as live views (billing/flush.py).

ALTER TABLE videos
    ADD COLUMN price_per_second NUMERIC(38, 18),
    ADD COLUMN failure_reason TEXT,
    ADD COLUMN source_stream_id UUID REFERENCES streams(id) ON DELETE SET NULL,
    ADD COLUMN source_session_id UUID REFERENCES stream_sessions(id) ON DELETE SET NULL,
    ADD COLUMN storage_key TEXT,
    ADD COLUMN upload_length BIGINT,
    ADD COLUMN upload_offset BIGINT NOT NULL DEFAULT 0,
    ADD COLUMN tags TEXT[] NOT NULL DEFAULT '{}';

CREATE UNIQUE INDEX idx_videos_source_session_once ON videos(source_session_id)
    WHERE source_session_id IS NOT NULL;

ALTER TABLE streams ADD COLUMN record BOOLEAN NOT NULL DEFAULT TRUE;

CREATE TABLE processing_jobs (
    id UUID PRIMARY KEY DEFAULT gen_random_uuid(),
    video_id UUID NOT NULL REFERENCES videos(id) ON DELETE CASCADE,
    status VARCHAR(20) NOT NULL DEFAULT 'queued',   -- queued, running, done, failed
    attempts INTEGER NOT NULL DEFAULT 0,
    max_attempts INTEGER NOT NULL DEFAULT 3,
    progress NUMERIC(5, 2) NOT NULL DEFAULT 0,      -- percent of the current attempt
    stage VARCHAR(50),                              -- probe, thumbnail, renditions, ...
    error TEXT,
    worker_id TEXT,
    locked_until TIMESTAMP,
    run_after TIMESTAMP NOT NULL DEFAULT NOW(),
    created_at TIMESTAMP NOT NULL DEFAULT NOW(),
    updated_at TIMESTAMP NOT NULL DEFAULT NOW(),
    CHECK (status IN ('queued', 'running', 'done', 'failed'))
);

CREATE INDEX idx_processing_jobs_claim ON processing_jobs(run_after)
    WHERE status IN ('queued', 'running');
CREATE INDEX idx_processing_jobs_video ON processing_jobs(video_id);

ALTER TABLE video_versions
    ADD COLUMN storage_key TEXT,
    ADD COLUMN width INTEGER,
    ADD COLUMN height INTEGER,
    ADD COLUMN segment_seconds NUMERIC(6, 3);

CREATE UNIQUE INDEX idx_video_versions_once ON video_versions(video_id, resolution);

ALTER TABLE video_views
    ADD COLUMN price_per_second NUMERIC(38, 18),
    ADD COLUMN cut_off BOOLEAN NOT NULL DEFAULT FALSE;

ALTER TABLE video_views SET (fillfactor = 50);

COMMENT ON COLUMN payments.payment_type IS
    'stream_view, video_view (one per video_views row, reference_id = its id), tip, subscription';

CREATE UNIQUE INDEX idx_payments_video_view_once ON payments(reference_id)
    WHERE payment_type = 'video_view';
