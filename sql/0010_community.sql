-- 0010_community.sql
--
-- WHY: the community tables of the schema document (0001) have no room for moderation and leave
-- three uniqueness rules to chance. Each amendment below says what it fixes.
--
-- 1. users.role and suspension. Moderators act on reports (`vilokanam admin moderator ACCOUNT`
--    grants the role); a suspended user can no longer log in, publish, chat or watch. The
--    suspension is a timestamp (NULL = in good standing) plus who suspended and why, so an
--    operator can explain it. The role is a closed set, checked by the database.
ALTER TABLE users
    ADD COLUMN role VARCHAR(20) NOT NULL DEFAULT 'user',
    ADD COLUMN suspended_at TIMESTAMP,
    ADD COLUMN suspended_by UUID REFERENCES users(id),
    ADD COLUMN suspension_reason TEXT,
    ADD CONSTRAINT users_role_check CHECK (role IN ('user', 'moderator'));

-- 2. Usernames and emails are unique regardless of case ("Alice" and "alice" are one name; an
--    email's local part is case-insensitive in practice). The document's UNIQUE(username) and
--    UNIQUE(email) compare bytes, so they stay, and these indexes add the case-insensitive rule.
CREATE UNIQUE INDEX idx_users_username_ci ON users (lower(username)) WHERE username IS NOT NULL;
CREATE UNIQUE INDEX idx_users_email_ci ON users (lower(email)) WHERE email IS NOT NULL;
CREATE UNIQUE INDEX idx_categories_name_ci ON categories (lower(name));

-- 3. A seeded set of categories (moderators add more through the API).
INSERT INTO categories (name, description) VALUES
    ('Gaming', 'Video games, speedruns and esports'),
    ('Music', 'Live performances, DJ sets and music production'),
    ('Talk Shows', 'Conversations, podcasts and interviews'),
    ('Education', 'Lessons, tutorials and lectures'),
    ('Technology', 'Programming, hardware and science'),
    ('Art', 'Drawing, painting, design and crafts'),
    ('Sports', 'Sports, fitness and outdoor activities'),
    ('Just Chatting', 'Everyday life and hanging out with the audience')
ON CONFLICT (name) DO NOTHING;

-- 4. Threaded comments need a depth limit: the depth is stored at insert (0 = top level) so the
--    limit is one comparison with the parent's, not a walk up the thread.
ALTER TABLE comments ADD COLUMN depth SMALLINT NOT NULL DEFAULT 0;

-- Chat history and comment pages read the newest comments of one target first.
CREATE INDEX idx_comments_stream_created ON comments (stream_id, created_at DESC, id DESC)
    WHERE stream_id IS NOT NULL;
CREATE INDEX idx_comments_video_created ON comments (video_id, parent_id, created_at DESC, id DESC)
    WHERE video_id IS NOT NULL;

-- 5. Reports: the document's comment lists 'video', 'comment', 'user'; live streams are
--    reported too. One OPEN report per reporter and target (a second click is not a second
--    report); once reviewed, the same person may report again. `action` records what the
--    moderator did (dismiss, remove, suspend), as the status alone does not say which.
ALTER TABLE reports
    ADD COLUMN action VARCHAR(20),
    ADD CONSTRAINT reports_target_type_check
        CHECK (target_type IN ('video', 'comment', 'user', 'stream')),
    ADD CONSTRAINT reports_status_check
        CHECK (status IN ('pending', 'reviewed', 'action_taken', 'dismissed')),
    ADD CONSTRAINT reports_action_check
        CHECK (action IS NULL OR action IN ('dismiss', 'remove', 'suspend'));
CREATE UNIQUE INDEX idx_reports_open_once ON reports (reporter_id, target_type, target_id)
    WHERE status = 'pending';
CREATE INDEX idx_reports_status_created ON reports (status, created_at);

-- 6. The feed lists followed creators' new videos; a follower's live streams are found by the
--    document's idx_streams_creator_status.
CREATE INDEX idx_videos_creator_published ON videos (creator_id, published_at DESC)
    WHERE status = 'ready';
