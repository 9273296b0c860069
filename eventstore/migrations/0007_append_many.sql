-- append_events_many: several streams' appends in one call, as append_events would make them
-- one after the other (docs/append-many.md).
--
-- The appends arrive as arrays: per append its stream, expected version and event count;
-- per event, append by append, its id, type, data, metadata and hash body. Rows come back
-- with the index (from 1) of the append they belong to.
--
-- The common case takes one statement per step for the whole batch instead of one per
-- stream: every append expects an exact version that the stream is at (0 for a new stream),
-- and no stream appears twice. Anything else (a retry, `any`, a stream that must exist, a
-- stream that moved on, a stream twice) runs append_events for each append in order,
-- whose answers and errors are then exactly those of separate calls.

create or replace function {schema}.append_events_many(
    p_stream_ids text[],
    p_expected   bigint[],
    p_counts     int[],
    p_event_ids  uuid[],
    p_types      text[],
    p_data       jsonb[],
    p_metadata   jsonb[],
    p_bodies     bytea[]
) returns table (
    append_index    int,
    global_position bigint,
    stream_version  bigint,
    recorded_at     timestamptz,
    tx_id           xid8,
    hash            bytea,
    prev_hash       bytea,
    is_duplicate    boolean
) language plpgsql as $$
declare
    v_appends   int := cardinality(p_stream_ids);
    v_now       timestamptz := now();
    v_micros    bigint := (extract(epoch from now()) * 1000000)::bigint;
    v_stream_id text;
    v_versions  bigint[];
    v_heads     bytea[];
    v_is_plain  boolean;
    v_hash      bytea;
    v_version   bigint;
    v_first     int := 1;
    v_event     int;
    v_younger   text;
    v_streams   text[] := '{}';
    v_numbers   bigint[] := '{}';
    v_hashes    bytea[] := '{}';
    v_prevs     bytea[] := '{}';
    v_tops      bigint[] := '{}';
    v_tails     bytea[] := '{}';
begin
    v_is_plain := v_appends > 0
        and (select bool_and(e >= 0) from unnest(p_expected) as e)
        and (select count(distinct s) from unnest(p_stream_ids) as s) = v_appends;

    if v_is_plain then
        -- As append_events: queue for each stream, in the order given, on a lock that takes
        -- no transaction id, then lock the stream rows.
        foreach v_stream_id in array p_stream_ids loop
            perform pg_advisory_xact_lock(hashtext('{schema}'), hashtext(v_stream_id));
        end loop;
        perform 1 from {schema}.streams s where s.stream_id = any(p_stream_ids) for update;
        select array_agg(s.version order by u.ord), array_agg(s.last_hash order by u.ord)
          into v_versions, v_heads
          from unnest(p_stream_ids) with ordinality as u(stream_id, ord)
          left join {schema}.streams s on s.stream_id = u.stream_id;
        v_is_plain := not exists (
            select 1
              from unnest(p_expected, v_versions) as u(expected, version)
             where u.expected <> coalesce(u.version, 0));
    end if;

    if not v_is_plain then
        for i in 1 .. v_appends loop
            return query
                select i, a.global_position, a.stream_version, a.recorded_at, a.tx_id, a.hash,
                       a.prev_hash, a.is_duplicate
                  from {schema}.append_events(
                       p_stream_ids[i], p_expected[i],
                       p_event_ids[v_first : v_first + p_counts[i] - 1],
                       p_types[v_first : v_first + p_counts[i] - 1],
                       p_data[v_first : v_first + p_counts[i] - 1],
                       p_metadata[v_first : v_first + p_counts[i] - 1],
                       p_bodies[v_first : v_first + p_counts[i] - 1]) as a;
            v_first := v_first + p_counts[i];
        end loop;
        return;
    end if;

    -- As append_events: refuse to append after a younger transaction's events (40001, the
    -- caller runs its transaction again with a newer id; docs/append-order.md).
    select u.stream_id into v_younger
      from unnest(p_stream_ids, v_versions) as u(stream_id, version)
      join {schema}.events e on e.stream_id = u.stream_id and e.stream_version = u.version
     where e.tx_id > pg_current_xact_id()
     limit 1;
    if v_younger is not null then
        raise exception 'stream % was last appended to by a younger transaction: run this one again', v_younger
            using errcode = '40001';
    end if;

    insert into {schema}.streams as s (stream_id, version, last_hash)
        select u.stream_id, 0, '\x0000000000000000000000000000000000000000000000000000000000000000'::bytea
          from unnest(p_stream_ids, v_versions) as u(stream_id, version)
         where u.version is null;

    for i in 1 .. v_appends loop
        v_version := coalesce(v_versions[i], 0);
        v_hash := coalesce(v_heads[i], '\x0000000000000000000000000000000000000000000000000000000000000000'::bytea);
        for j in 1 .. p_counts[i] loop
            v_event := v_first + j - 1;
            v_streams[v_event] := p_stream_ids[i];
            v_numbers[v_event] := v_version + j;
            v_prevs[v_event] := v_hash;
            v_hash := sha256(v_hash || int8send(v_version + j) || int8send(v_micros) || p_bodies[v_event]);
            v_hashes[v_event] := v_hash;
        end loop;
        v_tops[i] := v_version + p_counts[i];
        v_tails[i] := v_hash;
        v_first := v_first + p_counts[i];
    end loop;

    return query
        with inserted as (
            insert into {schema}.events as e
                (stream_id, stream_version, event_id, event_type, data, metadata, recorded_at, hash, prev_hash)
            select u.stream_id, u.version, u.event_id, u.event_type, u.data, u.metadata, v_now,
                   u.hash, u.prev_hash
              from unnest(v_streams, v_numbers, p_event_ids, p_types, p_data, p_metadata, v_hashes, v_prevs)
                   with ordinality as u(stream_id, version, event_id, event_type, data, metadata, hash, prev_hash, ord)
             order by u.ord
            returning e.stream_id, e.global_position, e.stream_version, e.recorded_at, e.tx_id,
                      e.hash, e.prev_hash)
        select a.ord::int, ins.global_position, ins.stream_version, ins.recorded_at, ins.tx_id,
               ins.hash, ins.prev_hash, false
          from inserted ins
          join unnest(p_stream_ids) with ordinality as a(stream_id, ord) on a.stream_id = ins.stream_id;

    update {schema}.streams s set version = u.version, last_hash = u.hash
      from unnest(p_stream_ids, v_tops, v_tails) as u(stream_id, version, hash)
     where s.stream_id = u.stream_id;
end
$$;
