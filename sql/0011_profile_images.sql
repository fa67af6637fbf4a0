-- 0011_profile_images.sql
--
-- WHY: a profile picture may be an uploaded image served by us, not only a URL elsewhere (a
-- third-party URL tells that host who looks at the profile). Small images (at most 512 KiB,
-- checked by the API) live in Postgres, one per user, with the digest that names the version in
-- its URL so a browser may cache it for good. users.profile_image_url then points at our route.
CREATE TABLE profile_images (
    user_id UUID PRIMARY KEY REFERENCES users(id) ON DELETE CASCADE,
    content_type VARCHAR(50) NOT NULL,
    data BYTEA NOT NULL,
    sha256 CHAR(64) NOT NULL,
    updated_at TIMESTAMP NOT NULL DEFAULT NOW(),
    CHECK (content_type IN ('image/png', 'image/jpeg', 'image/webp')),
    CHECK (octet_length(data) <= 524288)
);
