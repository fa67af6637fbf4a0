-- 0002_uuid_primary_key_defaults.sql
--
-- WHY: the schema document (0001) declares every surrogate key as `id UUID PRIMARY KEY` with no
-- default, so every INSERT has to invent an id and a forgotten one fails with a NOT NULL
-- violation. Give each of them a server-side default. gen_random_uuid() (a random, version-4
-- UUID) is built into Postgres 13+, so no extension is needed.
--
-- This covers all 16 tables that have an `id UUID PRIMARY KEY`. video_metadata (keyed by
-- video_id, a foreign key) and video_categories (a composite key) have no surrogate id and
-- rightly get no default.

ALTER TABLE users            ALTER COLUMN id SET DEFAULT gen_random_uuid();
ALTER TABLE videos           ALTER COLUMN id SET DEFAULT gen_random_uuid();
ALTER TABLE video_versions   ALTER COLUMN id SET DEFAULT gen_random_uuid();
ALTER TABLE categories       ALTER COLUMN id SET DEFAULT gen_random_uuid();
ALTER TABLE streams          ALTER COLUMN id SET DEFAULT gen_random_uuid();
ALTER TABLE stream_viewers   ALTER COLUMN id SET DEFAULT gen_random_uuid();
ALTER TABLE stream_sessions  ALTER COLUMN id SET DEFAULT gen_random_uuid();
ALTER TABLE payments         ALTER COLUMN id SET DEFAULT gen_random_uuid();
ALTER TABLE creator_earnings ALTER COLUMN id SET DEFAULT gen_random_uuid();
ALTER TABLE follows          ALTER COLUMN id SET DEFAULT gen_random_uuid();
ALTER TABLE comments         ALTER COLUMN id SET DEFAULT gen_random_uuid();
ALTER TABLE comment_likes    ALTER COLUMN id SET DEFAULT gen_random_uuid();
ALTER TABLE video_likes      ALTER COLUMN id SET DEFAULT gen_random_uuid();
ALTER TABLE video_views      ALTER COLUMN id SET DEFAULT gen_random_uuid();
ALTER TABLE stream_analytics ALTER COLUMN id SET DEFAULT gen_random_uuid();
ALTER TABLE reports          ALTER COLUMN id SET DEFAULT gen_random_uuid();
