-- The platform side (the `deckhand-platform` service) on the credential store's schema:
-- the lineage every writer of `accounts` leaves behind (so an updateKeys persister can fence
-- on it), fork alerts and fencing counters per account, the steps the platform serves to
-- workers, and the API users that may read them. No secret is stored in clear: keys stay in
-- `accounts.keys_ciphertext`, a step's message-crypto settings are sealed with the same key
-- ring, API keys are stored as SHA-256 digests.

ALTER TABLE accounts
    -- A fork: two different updates descended from the same refresh token (two replicas spent
    -- it). The first one stays; this says when and what the second one was (no secrets).
    ADD COLUMN fork_detected_at    timestamptz,
    ADD COLUMN fork_detail         text,
    -- What the persister and the accounts API did with the updates of this account.
    ADD COLUMN updates_applied     bigint NOT NULL DEFAULT 0,
    ADD COLUMN updates_duplicate   bigint NOT NULL DEFAULT 0,
    ADD COLUMN updates_stale       bigint NOT NULL DEFAULT 0,
    ADD COLUMN updates_unfenced    bigint NOT NULL DEFAULT 0,
    ADD COLUMN forks               bigint NOT NULL DEFAULT 0;

-- Every refresh-token fingerprint an account has held, with the one it replaced. Written by a
-- trigger, so rotations committed by store-backed workers, re-authorizations and the
-- persister all leave the same trail: an update whose token is in here is old news.
CREATE TABLE account_lineage (
    account_id          text NOT NULL REFERENCES accounts (account_id) ON DELETE CASCADE,
    refresh_fingerprint text NOT NULL,
    parent_fingerprint  text,
    generation          bigint NOT NULL,
    rotated_by          text,
    recorded_at         timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (account_id, refresh_fingerprint)
);

CREATE INDEX account_lineage_parent ON account_lineage (account_id, parent_fingerprint);

CREATE FUNCTION record_account_lineage() RETURNS trigger
LANGUAGE plpgsql SET search_path FROM CURRENT AS $$
BEGIN
    IF NEW.refresh_fingerprint IS NOT NULL
       AND (TG_OP = 'INSERT' OR NEW.refresh_fingerprint IS DISTINCT FROM OLD.refresh_fingerprint)
    THEN
        INSERT INTO account_lineage (account_id, refresh_fingerprint, parent_fingerprint,
                                     generation, rotated_by)
        VALUES (NEW.account_id, NEW.refresh_fingerprint, NEW.parent_fingerprint,
                NEW.generation, NEW.rotated_by)
        ON CONFLICT (account_id, refresh_fingerprint) DO NOTHING;
    END IF;
    RETURN NEW;
END
$$;

CREATE TRIGGER accounts_record_lineage
    AFTER INSERT OR UPDATE OF refresh_fingerprint ON accounts
    FOR EACH ROW EXECUTE FUNCTION record_account_lineage();

-- Lineage of the rows that existed before this migration.
INSERT INTO account_lineage (account_id, refresh_fingerprint, parent_fingerprint, generation,
                             rotated_by)
SELECT account_id, refresh_fingerprint, parent_fingerprint, generation, rotated_by
FROM accounts WHERE refresh_fingerprint IS NOT NULL
ON CONFLICT DO NOTHING;

-- A step as `GET /v1/tasks/{flow}/steps/{step}` serves it: its own config merged with its
-- account's latest keys at read time.
CREATE TABLE steps (
    flow_id             text NOT NULL,
    step_id             text NOT NULL,
    function            text,
    comp_id             text,
    account_id          text REFERENCES accounts (account_id) ON DELETE SET NULL,
    config              jsonb NOT NULL DEFAULT '{}',
    snapshot            jsonb NOT NULL DEFAULT '{}',
    is_passthrough      boolean NOT NULL DEFAULT false,
    variables           jsonb NOT NULL DEFAULT '{}',
    -- The step's message-crypto settings (password and IV), sealed like keys; NULL = the
    -- service's default settings.
    crypto_key_id       text,
    crypto_nonce        bytea,
    crypto_ciphertext   bytea,
    created_at          timestamptz NOT NULL DEFAULT now(),
    updated_at          timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (flow_id, step_id)
);

CREATE INDEX steps_account ON steps (account_id);

-- Who may call the step API (HTTP Basic): the username and the SHA-256 of the API key.
CREATE TABLE api_users (
    username            text PRIMARY KEY,
    key_sha256          bytea NOT NULL,
    created_at          timestamptz NOT NULL DEFAULT now()
);
