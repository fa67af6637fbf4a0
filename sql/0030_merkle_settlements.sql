-- 0030_merkle_settlements.sql
--
-- WHY: a v1 settlement's remark carried the SHA-256 digest of ALL the batch's lines, so a viewer
-- could check a receipt only by seeing every other session's charge in the batch. A v2 remark
-- carries the root of a Merkle tree of the lines (RFC 9162 encoding, docs/settlement.md): a
-- receipt then proves one line with a path of sibling hashes. `commitment` says which one a
-- settlement's `digest` column holds (the v1 digest, or the v2 root), so old settlements stay
-- verifiable the way they were made. Every row before this migration is v1.

ALTER TABLE settlements
    ADD COLUMN commitment TEXT NOT NULL DEFAULT 'digest-v1'
        CHECK (commitment IN ('digest-v1', 'merkle-v2'));

COMMENT ON COLUMN settlements.digest IS
    'digest-v1: sha256 hex of the sorted item lines; merkle-v2: the Merkle root (hex) of them';
