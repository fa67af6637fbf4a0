-- 0009_flush_hot_updates.sql
--
-- WHY: the tick flush updates one stream_viewers, one payments and one viewer_balances row per
-- active viewer every second. On full pages such an update is not HOT: Postgres writes a new
-- entry into EVERY index of the table (five on stream_viewers, five on payments), which at 100k
-- viewers was most of the flush's time (bench/ticks.py). None of the columns the flush changes
-- is indexed, so with free space left on each page the updates become HOT (heap-only: no index
-- writes, and the old version is pruned in place). Leave half of every page free.
ALTER TABLE stream_viewers SET (fillfactor = 50);
ALTER TABLE payments SET (fillfactor = 50);
ALTER TABLE viewer_balances SET (fillfactor = 50);
