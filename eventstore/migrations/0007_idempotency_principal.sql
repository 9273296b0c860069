-- Idempotency keys are each principal's own (docs/http-idempotency.md). An answer is stored
-- under "<scope> <principal>", and mirrored under the scope alone with its principal here,
-- so that a replica of the previous version, which looks under the scope alone, still finds
-- it during a rolling upgrade. Rows from before have no principal: anyone's, as they were.

alter table {schema}.idempotency_keys add column principal text;
