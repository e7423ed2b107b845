-- Flowpoint schema, version 3: the encryption key id of each stored payload.
--
-- With encryption at rest (checkpoint/crypto.py) a payload starts with a header naming
-- the key it was encrypted with: 'FPE' | version | key id length | key id | nonce | ...
-- key_id holds that id, NULL for a plain (zstd) payload. A trigger reads it from the
-- payload's own header, so it can never disagree with the bytes (and the write path
-- passes nothing new). A key rotation finds the rows still on an old key with:
--   SELECT key_id, count(*) FROM checkpoints GROUP BY key_id;
-- Adding a nullable column without a default rewrites nothing: instant on a big table.
ALTER TABLE checkpoints ADD COLUMN key_id text;

CREATE FUNCTION flowpoint_checkpoint_key_id() RETURNS trigger
LANGUAGE plpgsql
AS $fn$
BEGIN
    IF substring(NEW.payload FROM 1 FOR 3) = '\x465045'::bytea
       AND octet_length(NEW.payload) > 5 THEN
        -- encode(..., 'escape') never fails, whatever bytes a damaged header holds.
        NEW.key_id := encode(substring(NEW.payload FROM 6 FOR get_byte(NEW.payload, 4)),
                             'escape');
    ELSE
        NEW.key_id := NULL;
    END IF;
    RETURN NEW;
END;
$fn$;

-- Plain payloads skip the function call entirely on insert (the WHEN test is cheap).
CREATE TRIGGER checkpoints_key_id_insert
    BEFORE INSERT ON checkpoints
    FOR EACH ROW
    WHEN (substring(NEW.payload FROM 1 FOR 3) = '\x465045'::bytea)
    EXECUTE FUNCTION flowpoint_checkpoint_key_id();

CREATE TRIGGER checkpoints_key_id_update
    BEFORE UPDATE OF payload ON checkpoints
    FOR EACH ROW
    EXECUTE FUNCTION flowpoint_checkpoint_key_id();
