-- append_events as in 0008, with one change: appending stored event ids again is a retry
-- whatever the expected version. The ids were looked up only when the stream had moved past
-- the expected version, so a retry that read the stream's version again (its first try
-- having committed unseen) and expected that one was refused as reusing stored ids
-- (DuplicateEventError) instead of answered with the first result, as it was when it
-- expected any other version (found in review). The hot path now probes the first id.

create or replace function {schema}.append_events(
    p_stream_id text,
    p_expected  bigint,
    p_event_ids uuid[],
    p_types     text[],
    p_data      jsonb[],
    p_metadata  jsonb[],
    p_bodies    bytea[]
) returns table (
    global_position bigint,
    stream_version  bigint,
    recorded_at     timestamptz,
    tx_id           xid8,
    hash            bytea,
    prev_hash       bytea,
    is_duplicate    boolean
) language plpgsql as $$
declare
    v_count   int := cardinality(p_event_ids);
    v_version bigint;
    v_hash    bytea;
    v_now     timestamptz := now();
    v_micros  bigint;
    v_last_at timestamptz;
    v_hashes  bytea[] := '{}';
    v_prevs   bytea[] := '{}';
    v_found   bigint;
    v_last_tx xid8;
begin
    -- Queue for the stream on a lock that takes no transaction id (a row lock would take one
    -- before waiting): a transaction whose first write is this append gets its id only once
    -- the stream's previous writer has committed, so its id is the newer one.
    perform pg_advisory_xact_lock(hashtext('{schema}'), hashtext(p_stream_id));
    select s.version, s.last_hash into v_version, v_hash
      from {schema}.streams s where s.stream_id = p_stream_id for update;
    if not found then
        if p_expected > 0 or p_expected = -2 then
            raise exception 'stream % does not exist', p_stream_id
                using errcode = 'LE001', detail = '0';
        end if;
        insert into {schema}.streams as s (stream_id, version, last_hash)
            values (p_stream_id, 0, '\x0000000000000000000000000000000000000000000000000000000000000000'::bytea)
            on conflict do nothing;
        -- Another writer created the stream first: wait for it, then judge against its version.
        select s.version, s.last_hash into v_version, v_hash
          from {schema}.streams s where s.stream_id = p_stream_id for update;
    end if;

    -- A retried append whose first try committed finds the stream moved on, or, asked at
    -- the version it now has, finds its first id stored: only then, or when no exact version
    -- was expected, is it worth looking for all the ids (the hot path probes one; an id
    -- reused elsewhere still fails on the unique index).
    if p_expected < 0
       or (p_expected = 0 and v_version > 0)
       or (p_expected > 0 and p_expected <> v_version)
       or exists (select 1 from {schema}.events e where e.event_id = p_event_ids[1]) then
        select count(*) into v_found from {schema}.events e where e.event_id = any(p_event_ids);
        if v_found > 0 then
            -- Only the very same append again is a retry: every id, in this stream, in
            -- consecutive versions, in the order asked, with the same event types.
            if v_found <> v_count or exists (
                select 1
                  from unnest(p_event_ids, p_types) with ordinality as u(event_id, event_type, ord)
                  left join {schema}.events e on e.event_id = u.event_id
                 where e.stream_id is distinct from p_stream_id
                    or e.event_type is distinct from u.event_type
                    or e.stream_version - u.ord is distinct from (
                        select min(f.stream_version) - 1 from {schema}.events f
                         where f.event_id = any(p_event_ids))) then
                raise exception 'these event ids are stored already, but not as this append'
                    using errcode = 'LE003';
            end if;
            return query
                select e.global_position, e.stream_version, e.recorded_at, e.tx_id, e.hash,
                       e.prev_hash, true
                  from {schema}.events e where e.event_id = any(p_event_ids)
                 order by e.stream_version;
            return;
        end if;
    end if;

    if (p_expected = 0 and v_version > 0) or (p_expected > 0 and p_expected <> v_version)
       or (p_expected = -2 and v_version = 0) then
        raise exception 'stream % is at version %, expected %', p_stream_id, v_version, p_expected
            using errcode = 'LE001', detail = v_version::text;
    end if;

    -- Readers follow (tx_id, global_position). A transaction gets its id at its first write
    -- or row lock, which may come before it queued here behind a younger transaction: its
    -- events would then be read before the ones they follow. Refuse; run again, it gets a
    -- newer id than every committed one.
    if v_version > 0 then
        select e.tx_id, e.recorded_at into v_last_tx, v_last_at from {schema}.events e
         where e.stream_id = p_stream_id and e.stream_version = v_version;
        if v_last_tx > pg_current_xact_id() then
            raise exception 'stream % was last appended to by a younger transaction: run this one again', p_stream_id
                using errcode = '40001';
        end if;
    end if;

    -- Never before the stream's last event (read above, under the stream's lock).
    v_now := greatest(v_now, v_last_at);
    v_micros := (extract(epoch from v_now) * 1000000)::bigint;

    for i in 1 .. v_count loop
        v_prevs[i] := v_hash;
        v_hash := sha256(v_hash || int8send(v_version + i) || int8send(v_micros) || p_bodies[i]);
        v_hashes[i] := v_hash;
    end loop;

    return query
        insert into {schema}.events as e
            (stream_id, stream_version, event_id, event_type, data, metadata, recorded_at, hash, prev_hash)
        select p_stream_id, v_version + u.ord, u.event_id, u.event_type, u.data, u.metadata, v_now,
               u.hash, u.prev_hash
          from unnest(p_event_ids, p_types, p_data, p_metadata, v_hashes, v_prevs)
               with ordinality as u(event_id, event_type, data, metadata, hash, prev_hash, ord)
        returning e.global_position, e.stream_version, e.recorded_at, e.tx_id, e.hash, e.prev_hash, false;

    update {schema}.streams s set version = v_version + v_count, last_hash = v_hash
     where s.stream_id = p_stream_id;
end
$$;
