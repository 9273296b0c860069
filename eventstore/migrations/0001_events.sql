-- The event log of one service: streams, their events, and the rules that keep it append-only.
-- `{schema}` is replaced by the service's schema name, validated before it gets here.

create table {schema}.streams (
    stream_id text primary key,
    version   bigint not null check (version >= 0),
    last_hash bytea  not null
);

create table {schema}.events (
    global_position bigint generated always as identity primary key,
    stream_id       text        not null,
    stream_version  bigint      not null check (stream_version >= 1),
    event_id        uuid        not null unique,
    event_type      text        not null,
    data            jsonb       not null,
    metadata        jsonb       not null,
    recorded_at     timestamptz not null,
    tx_id           xid8        not null default pg_current_xact_id(),
    hash            bytea       not null,
    prev_hash       bytea       not null,
    category        text        not null generated always as (split_part(stream_id, '-', 1)) stored,
    unique (stream_id, stream_version)
);

-- read_all follows (tx_id, global_position); read_category the same order within a category.
create index events_commit_order on {schema}.events (tx_id, global_position);
create index events_category_order on {schema}.events (category, tx_id, global_position);

create function {schema}.refuse_change() returns trigger language plpgsql as $$
begin
    raise exception 'events are append-only: % on %.events is refused', tg_op, tg_table_schema
        using errcode = 'LE010';
end
$$;

create trigger events_append_only
    before update or delete on {schema}.events
    for each row execute function {schema}.refuse_change();

create trigger events_no_truncate
    before truncate on {schema}.events
    for each statement execute function {schema}.refuse_change();
