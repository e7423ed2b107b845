-- Flowpoint schema, version 1.
--
-- Every table is keyed by run_id first, so the schema can be distributed by run_id
-- (Citus) when one server is not enough: all statements of the store touch one run,
-- or a batch of runs, by run_id.

-- One row per run: latest seq, status of the latest checkpoint, claim and epoch.
-- Updated in the same transaction as each checkpoint insert.
CREATE TABLE runs (
    run_id           text        PRIMARY KEY,
    tenant_id        text        NOT NULL,
    flow_id          text        NOT NULL,
    status           text        NOT NULL,
    latest_seq       bigint      NOT NULL,
    created_at       timestamptz NOT NULL DEFAULT now(),
    updated_at       timestamptz NOT NULL DEFAULT now(),
    epoch            bigint      NOT NULL DEFAULT 0,
    claimed_by       text,
    lease_expires_at timestamptz,
    claimed_seq      bigint,
    pending_inputs   text[]      NOT NULL DEFAULT '{}',
    CONSTRAINT runs_status_check
        CHECK (status IN ('active', 'pending_input', 'completed', 'failed', 'canceled')),
    CONSTRAINT runs_epoch_check CHECK (epoch >= 0)
);

-- Listings are newest first with keyset paging on (updated_at, run_id).
CREATE INDEX runs_tenant_updated_idx ON runs (tenant_id, updated_at DESC, run_id DESC);
CREATE INDEX runs_flow_updated_idx ON runs (flow_id, updated_at DESC, run_id DESC);
CREATE INDEX runs_pending_input_idx ON runs (tenant_id, updated_at DESC, run_id DESC)
    WHERE status = 'pending_input';

-- The append-only history of sealed checkpoints.
CREATE TABLE checkpoints (
    run_id         text        NOT NULL,
    seq            bigint      NOT NULL,
    tenant_id      text        NOT NULL,
    flow_id        text        NOT NULL,
    status         text        NOT NULL,
    schema_version integer     NOT NULL,
    sha256         text        NOT NULL,
    raw_size       integer     NOT NULL,
    stored_size    integer     NOT NULL,
    payload        bytea       NOT NULL,
    summary        jsonb       NOT NULL DEFAULT '{}',
    trace_id       text,
    created_at     timestamptz NOT NULL,
    PRIMARY KEY (run_id, seq),
    CONSTRAINT checkpoints_seq_check CHECK (seq >= 0),
    CONSTRAINT checkpoints_status_check
        CHECK (status IN ('active', 'pending_input', 'completed', 'failed', 'canceled'))
);

-- Payloads are zstd already: keep PostgreSQL from trying pglz on them.
ALTER TABLE checkpoints ALTER COLUMN payload SET STORAGE EXTERNAL;

-- expire() walks checkpoints by age.
CREATE INDEX checkpoints_created_idx ON checkpoints (created_at);

-- Human answers, consumed exactly once by the resumed run.
CREATE TABLE human_inputs (
    run_id       text        NOT NULL,
    path         text        NOT NULL,
    -- Codec-tagged JSON of the answer. json, not jsonb: jsonb rewrites numbers (1e16 comes
    -- back as an integer) and refuses \u0000, so answers would not round-trip exactly.
    answer       json        NOT NULL,
    submitted_at timestamptz NOT NULL DEFAULT now(),
    consumed_at  timestamptz,
    PRIMARY KEY (run_id, path)
);

-- Writes a batch of sealed checkpoints in one transaction (one round trip when called
-- in autocommit) and returns one outcome per item, by position (1-based ord):
-- stored, duplicate, conflict, stale_epoch or tenant_mismatch.
--
-- Rules, per item, in this order:
--   tenant_mismatch  the run belongs to another tenant (for a new run, the first item's
--                    tenant owns it);
--   stored           the first item of its (run_id, seq) whose epoch is current, when
--                    no checkpoint with that key exists yet;
--   duplicate        the key exists (before or earlier in the batch) with the same sha256;
--   stale_epoch      the item's epoch is not the run's current epoch;
--   conflict         the key exists with another sha256.
-- The runs row takes latest_seq = greatest(seq), and status/pending_inputs from the
-- stored record whose seq is the new maximum.
CREATE FUNCTION flowpoint_put_batch(
    p_run_id         text[],
    p_seq            bigint[],
    p_tenant_id      text[],
    p_flow_id        text[],
    p_status         text[],
    p_schema_version integer[],
    p_sha256         text[],
    p_raw_size       integer[],
    p_payload        bytea[],
    p_summary        jsonb[],
    p_trace_id       text[],
    p_created_at     timestamptz[],
    p_epoch          bigint[]
) RETURNS TABLE (ord integer, outcome text, current_epoch bigint)
LANGUAGE plpgsql
-- The lookups are written as index probes, so one generic plan fits every call; re-planning
-- the statements for each call's parameters would cost more than running them.
SET plan_cache_mode = force_generic_plan
AS $fn$
DECLARE
    placeholders bigint;
BEGIN
    -- Make sure every run has a row and lock them all, in run_id order so that concurrent
    -- batches cannot deadlock. A new run gets a placeholder row (latest_seq -1) that is
    -- removed below if nothing is stored for it. "DO UPDATE ... WHERE false" locks an
    -- existing row without writing a new version of it.
    INSERT INTO runs AS r (run_id, tenant_id, flow_id, status, latest_seq)
    SELECT DISTINCT ON (i.run_id) i.run_id, i.tenant_id, i.flow_id, i.status, -1
    FROM unnest(p_run_id, p_tenant_id, p_flow_id, p_status)
         WITH ORDINALITY AS i(run_id, tenant_id, flow_id, status, n)
    ORDER BY i.run_id, i.n
    ON CONFLICT (run_id) DO UPDATE SET epoch = r.epoch WHERE false;
    GET DIAGNOSTICS placeholders = ROW_COUNT;  -- rows inserted (the WHERE false updates none)

    -- A new statement, so a fresh snapshot: it sees every commit made before our locks.
    RETURN QUERY
    WITH items AS (
        SELECT i.n::integer AS o, i.run_id, i.seq, i.tenant_id, i.status, i.sha256, i.epoch
        FROM unnest(p_run_id, p_seq, p_tenant_id, p_status, p_sha256, p_epoch)
             WITH ORDINALITY AS i(run_id, seq, tenant_id, status, sha256, epoch, n)
    ),
    -- Point lookups per item (LATERAL ... LIMIT 1 is not flattened into a join), so the
    -- plan stays index probes however large the tables grow and whatever their statistics
    -- say: a fresh table's default estimates would otherwise pick hash joins over seq scans.
    judged AS (
        SELECT it.*,
               r.epoch AS cur_epoch,
               it.tenant_id = r.tenant_id AS tenant_ok,
               it.epoch = r.epoch AS epoch_ok,
               c.sha256 AS existing_sha
        FROM items it
        CROSS JOIN LATERAL (
            SELECT r0.epoch, r0.tenant_id FROM runs r0 WHERE r0.run_id = it.run_id LIMIT 1
        ) r
        LEFT JOIN LATERAL (
            SELECT c0.sha256 FROM checkpoints c0
            WHERE c0.run_id = it.run_id AND c0.seq = it.seq
            LIMIT 1
        ) c ON true
    ),
    ranked AS (
        SELECT j.*,
               (j.tenant_ok AND j.epoch_ok AND j.existing_sha IS NULL)
               AND row_number() OVER (
                   PARTITION BY j.run_id, j.seq,
                                (j.tenant_ok AND j.epoch_ok AND j.existing_sha IS NULL)
                   ORDER BY j.o) = 1 AS is_store
        FROM judged j
    ),
    reffed AS (
        SELECT k.*,
               coalesce(k.existing_sha,
                        max(CASE WHEN k.is_store THEN k.sha256 END)
                            OVER (PARTITION BY k.run_id, k.seq)) AS ref_sha
        FROM ranked k
    ),
    decided AS (
        SELECT f.o, f.run_id, f.seq, f.status, f.cur_epoch,
               CASE
                   WHEN NOT f.tenant_ok THEN 'tenant_mismatch'
                   WHEN f.is_store THEN 'stored'
                   WHEN f.ref_sha = f.sha256 THEN 'duplicate'
                   WHEN NOT f.epoch_ok THEN 'stale_epoch'
                   ELSE 'conflict'
               END AS outcome
        FROM reffed f
    ),
    inserted AS (
        INSERT INTO checkpoints (run_id, seq, tenant_id, flow_id, status, schema_version,
                                 sha256, raw_size, stored_size, payload, summary, trace_id,
                                 created_at)
        SELECT d.run_id, d.seq, p_tenant_id[d.o], p_flow_id[d.o], d.status,
               p_schema_version[d.o], p_sha256[d.o], p_raw_size[d.o],
               octet_length(p_payload[d.o]), p_payload[d.o], coalesce(p_summary[d.o], '{}'),
               p_trace_id[d.o], p_created_at[d.o]
        FROM decided d
        WHERE d.outcome = 'stored'
        RETURNING 1
    ),
    newest AS (
        SELECT DISTINCT ON (d.run_id) d.run_id, d.seq, d.status, d.o
        FROM decided d
        WHERE d.outcome = 'stored'
        ORDER BY d.run_id, d.seq DESC
    ),
    touched AS (
        UPDATE runs r
        SET latest_seq = greatest(r.latest_seq, n.seq),
            status = CASE WHEN n.seq > r.latest_seq THEN n.status ELSE r.status END,
            pending_inputs = CASE
                WHEN n.seq > r.latest_seq THEN ARRAY(
                    SELECT jsonb_array_elements_text(
                        coalesce(p_summary[n.o] -> 'pending_inputs', '[]'::jsonb)))
                ELSE r.pending_inputs
            END,
            updated_at = now()
        FROM newest n
        WHERE r.run_id = n.run_id
        RETURNING 1
    )
    SELECT d.o, d.outcome, d.cur_epoch FROM decided d ORDER BY d.o;

    -- Placeholders of runs for which nothing was stored must not survive.
    IF placeholders > 0 THEN
        DELETE FROM runs WHERE run_id = ANY (p_run_id) AND latest_seq < 0;
    END IF;
END;
$fn$;
