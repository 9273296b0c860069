-- `saga_runs` (the saga service's list of sagas, made by `saga.runs`) kept a saga's last
-- error after a later step of it succeeded, where the saga's own view, the fold of its
-- stream, shows none (found in review). The projection now clears it as the fold does; this
-- corrects the rows written before. It is the only schema migration that knows a read model
-- (the event store otherwise knows nothing of sagas): raising the projection's version would
-- rebuild `saga_runs` and drop the live leases it holds, and these files are the one step
-- that runs once per schema (docs/saga.md, "The list's last error").
--
-- The fold's last error is exact from the saga's events: the latest StepFailed or SagaParked
-- (its error), StepRefused ('refused: ' and its code) or StepSucceeded (none). Only rows that
-- show an error are looked at, and compensating ones: the projection set no error on a
-- refusal, so a saga compensating since one shows none (a refusal that parks sets one, and
-- a saga is final only after a step it compensated with succeeded). A row is changed only at the
-- version its events were read at: a saga appended to meanwhile keeps what its projection
-- wrote. A schema without `saga_runs` (every service's but the saga's) is left alone.

do $$
begin
    if to_regclass('{schema}.saga_runs') is null then
        return;
    end if;
    update {schema}.saga_runs as r
       set last_error = derived.last_error
      from (select runs.saga_id, runs.version,
                   (select case e.event_type
                               when 'StepSucceeded' then null
                               when 'StepRefused' then 'refused: ' || (e.data ->> 'code')
                               else e.data ->> 'error'
                           end
                      from {schema}.events e
                     where e.stream_id = 'saga-' || runs.saga_id
                       and e.event_type in ('StepSucceeded', 'StepRefused', 'StepFailed',
                                            'SagaParked')
                     order by e.stream_version desc
                     limit 1) as last_error
              from {schema}.saga_runs runs
             where runs.last_error is not null or runs.status = 'compensating') as derived
     where r.saga_id = derived.saga_id
       and r.version = derived.version
       and r.last_error is distinct from derived.last_error;
end $$;
