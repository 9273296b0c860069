-- HTTP idempotency keys: the first answer to a key, kept with a fingerprint of its request,
-- written in the same transaction as the request's effect.

create table {schema}.idempotency_keys (
    scope        text  not null,
    key          text  not null,
    fingerprint  text  not null,
    status_code  int   not null,
    response     jsonb not null,
    recorded_at  timestamptz not null default now(),
    primary key (scope, key)
);
