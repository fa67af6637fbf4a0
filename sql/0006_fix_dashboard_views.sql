-- 0006_fix_dashboard_views.sql
--
-- WHY: both views of the schema document report wrong numbers.
--
-- creator_dashboard joins users to videos AND to streams in one FROM clause, so every video row
-- is repeated once per stream and every stream row once per video before the SUMs: a creator
-- with 2 ready videos (10 + 20 views) and 3 streams (1 + 2 + 3 viewers) is shown 90 video views
-- and 12 stream viewers instead of 30 and 6 (only the COUNT(DISTINCT ...) columns survived).
-- Fixed by aggregating videos and streams per creator in separate subqueries and joining the
-- per-creator results (creator_earnings has one row per creator -- unique index -- so it cannot
-- fan out). last_activity is now the LATER of the newest stream start and the newest video
-- publication (GREATEST ignores NULLs); the document's COALESCE ignored a newer video whenever
-- the creator had ever streamed.
--
-- video_analytics computes unique_viewers as COUNT(vv.id), i.e. the number of views: one person
-- watching three times counted as three unique viewers. It is now
-- COUNT(DISTINCT vv.viewer_id). Anonymous views (viewer_id IS NULL) cannot be told apart (an IP
-- address is shared behind NAT and changes on mobile), so they are NOT counted as unique viewers
-- -- COUNT(DISTINCT) skips NULLs. They still count in the new column total_views (every row of
-- video_views, signed-in or not) and in the two averages, as before. total_views is appended at
-- the end so that the existing columns keep their names, order and types (CREATE OR REPLACE).

CREATE OR REPLACE VIEW creator_dashboard AS
SELECT
    u.id AS creator_id,
    u.username,
    COALESCE(v.total_videos, 0) AS total_videos,
    COALESCE(s.total_streams, 0) AS total_streams,
    COALESCE(v.total_video_views, 0) AS total_video_views,
    COALESCE(s.total_stream_viewers, 0) AS total_stream_viewers,
    GREATEST(s.last_stream_start, v.last_published) AS last_activity,
    COALESCE(ce.total_earnings, 0) AS total_earnings
FROM users u
LEFT JOIN (
    SELECT
        creator_id,
        COUNT(*) AS total_videos,
        SUM(view_count) AS total_video_views,
        MAX(published_at) AS last_published
    FROM videos
    WHERE status = 'ready'
    GROUP BY creator_id
) v ON v.creator_id = u.id
LEFT JOIN (
    SELECT
        creator_id,
        COUNT(*) AS total_streams,
        SUM(viewer_count) AS total_stream_viewers,
        MAX(start_time) AS last_stream_start
    FROM streams
    GROUP BY creator_id
) s ON s.creator_id = u.id
LEFT JOIN creator_earnings ce ON ce.creator_id = u.id
WHERE u.is_creator = TRUE;

CREATE OR REPLACE VIEW video_analytics AS
SELECT
    v.id AS video_id,
    v.title,
    v.creator_id,
    u.username AS creator_username,
    v.duration,
    v.view_count,
    v.like_count,
    v.comment_count,
    COUNT(DISTINCT vv.viewer_id) AS unique_viewers,
    AVG(vv.view_duration) AS avg_view_duration,
    AVG(vv.watch_completion) AS avg_watch_completion,
    v.published_at,
    v.created_at,
    COUNT(vv.id) AS total_views
FROM videos v
JOIN users u ON v.creator_id = u.id
LEFT JOIN video_views vv ON v.id = vv.video_id
WHERE v.status = 'ready'
GROUP BY v.id, v.title, v.creator_id, u.username, v.duration, v.view_count,
         v.like_count, v.comment_count, v.published_at, v.created_at;
