-- Tracking rows are pruned by age (`ledger prune`, docs/retention.md): a BRIN index on each
-- table's time lets the prune find old rows without reading the whole table. Rows are
-- inserted in time order, so a BRIN index stays small and costs the writers next to nothing,
-- unlike a b-tree on the hot inbox.

create index inbox_handled_at on {schema}.inbox using brin (handled_at);
create index command_replies_recorded_at on {schema}.command_replies using brin (recorded_at);
create index idempotency_keys_recorded_at on {schema}.idempotency_keys using brin (recorded_at);
