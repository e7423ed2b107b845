-- Flowpoint schema, version 2: a single-record write path.
--
-- flowpoint_put_batch (0001) decides a whole batch in one set-based statement: unnest,
-- window functions and two lateral probes per item. For the most common call, a batch
-- of one record (every save at low load), that machinery costs several times more
-- server CPU than the work itself. flowpoint_put_one decides one record with plain
-- index probes and gives exactly the outcomes flowpoint_put_batch gives for a batch of
-- one (same rules, same order, same current_epoch, same runs row afterwards).
CREATE FUNCTION flowpoint_put_one(
    p_run_id         text,
    p_seq            bigint,
    p_tenant_id      text,
    p_flow_id        text,
    p_status         text,
    p_schema_version integer,
    p_sha256         text,
    p_raw_size       integer,
    p_payload        bytea,
    p_summary        jsonb,
    p_trace_id       text,
    p_created_at     timestamptz,
    p_epoch          bigint
) RETURNS TABLE (outcome text, current_epoch bigint)
LANGUAGE plpgsql
SET plan_cache_mode = force_generic_plan
AS $fn$
DECLARE
    r_tenant   text;
    r_epoch    bigint;
    created    boolean := false;
    existing   text;
    verdict    text;
BEGIN
    -- Lock the run's row, or create it (a new run starts at epoch 0 and belongs to this
    -- record's tenant). A run created concurrently makes the INSERT wait for, then skip,
    -- the other transaction's row: loop to lock it instead.
    LOOP
        SELECT r.tenant_id, r.epoch INTO r_tenant, r_epoch
        FROM runs r WHERE r.run_id = p_run_id FOR UPDATE;
        EXIT WHEN FOUND;
        INSERT INTO runs (run_id, tenant_id, flow_id, status, latest_seq, pending_inputs)
        VALUES (p_run_id, p_tenant_id, p_flow_id, p_status, p_seq,
                ARRAY(SELECT jsonb_array_elements_text(
                    coalesce(p_summary -> 'pending_inputs', '[]'::jsonb))))
        ON CONFLICT (run_id) DO NOTHING;
        IF FOUND THEN
            created := true;
            r_tenant := p_tenant_id;
            r_epoch := 0;
            EXIT;
        END IF;
    END LOOP;

    IF r_tenant <> p_tenant_id THEN
        verdict := 'tenant_mismatch';
    ELSE
        -- A fresh statement, so a fresh snapshot taken after the lock: it sees every
        -- checkpoint committed before.
        SELECT c.sha256 INTO existing
        FROM checkpoints c WHERE c.run_id = p_run_id AND c.seq = p_seq;
        IF NOT FOUND THEN
            IF p_epoch = r_epoch THEN
                verdict := 'stored';
            ELSE
                verdict := 'stale_epoch';
            END IF;
        ELSIF existing = p_sha256 THEN
            verdict := 'duplicate';
        ELSIF p_epoch <> r_epoch THEN
            verdict := 'stale_epoch';
        ELSE
            verdict := 'conflict';
        END IF;
    END IF;

    IF verdict = 'stored' THEN
        INSERT INTO checkpoints (run_id, seq, tenant_id, flow_id, status, schema_version,
                                 sha256, raw_size, stored_size, payload, summary, trace_id,
                                 created_at)
        VALUES (p_run_id, p_seq, p_tenant_id, p_flow_id, p_status, p_schema_version,
                p_sha256, p_raw_size, octet_length(p_payload), p_payload,
                coalesce(p_summary, '{}'), p_trace_id, p_created_at);
        IF NOT created THEN
            UPDATE runs r
            SET latest_seq = greatest(r.latest_seq, p_seq),
                status = CASE WHEN p_seq > r.latest_seq THEN p_status ELSE r.status END,
                pending_inputs = CASE
                    WHEN p_seq > r.latest_seq THEN ARRAY(
                        SELECT jsonb_array_elements_text(
                            coalesce(p_summary -> 'pending_inputs', '[]'::jsonb)))
                    ELSE r.pending_inputs
                END,
                updated_at = now()
            WHERE r.run_id = p_run_id;
        END IF;
    ELSIF created THEN
        -- Nothing was stored for the run this call created: it must not survive.
        DELETE FROM runs WHERE run_id = p_run_id;
    END IF;

    outcome := verdict;
    current_epoch := r_epoch;
    RETURN NEXT;
END;
$fn$;
