-- The scheduler claims due rows every poll (HOOKRELAY_SCHEDULER_INTERVAL, 100 ms) through
-- the partial index deliveries_due. Rows leave that index by updates (delivered, failed,
-- parked), and each leaves a dead entry behind until the table is vacuumed. With
-- PostgreSQL's default (vacuum once 20 % of the table is dead), a table of millions of
-- deliveries builds up hundreds of thousands of dead entries first, and every claim visits
-- them all: measured at 32 ms per claim with no row due, on a 1.2-million-row table
-- (docs/benchmarks.md). Vacuum this table after 1 % instead; on a table that is mostly
-- appended to, vacuum reads only the pages changed since the last one.
ALTER TABLE deliveries SET (autovacuum_vacuum_scale_factor = 0.01, autovacuum_vacuum_threshold = 1000);
