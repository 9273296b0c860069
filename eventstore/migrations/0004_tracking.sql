-- Tracking rows: what a consumer has handled and what a command answered, written in the same
-- transaction as the effect, so that redelivery and retries are harmless.

create table {schema}.inbox (
    consumer   text not null,
    message_id text not null,
    handled_at timestamptz not null default now(),
    primary key (consumer, message_id)
);

create table {schema}.command_replies (
    command_id  uuid primary key,
    endpoint    text  not null,
    reply       jsonb not null,
    recorded_at timestamptz not null default now()
);
