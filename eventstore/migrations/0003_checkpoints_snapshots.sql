-- Named subscription checkpoints and per-stream snapshots.

create table {schema}.checkpoints (
    name            text primary key,
    tx_id           xid8   not null,
    global_position bigint not null,
    updated_at      timestamptz not null default now()
);

create table {schema}.snapshots (
    stream_id      text primary key,
    stream_version bigint not null check (stream_version >= 1),
    state          jsonb  not null,
    schema_version int    not null,
    taken_at       timestamptz not null default now()
);
