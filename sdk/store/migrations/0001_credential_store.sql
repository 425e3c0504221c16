-- Deckhand credential store: one row per account (credential), shared by every worker.
-- Keys are AES-256-GCM encrypted (key id, nonce, ciphertext bound to account and generation).
-- An updateKeys persister (the platform side) can update a row with the same fencing:
-- generation = stored + 1 and parent_fingerprint = stored refresh_fingerprint.
CREATE TABLE accounts (
    account_id          text PRIMARY KEY,
    state               text NOT NULL DEFAULT 'active'
                        CHECK (state IN ('active', 'needs_reauth', 'rotation_lost')),
    -- Why the state is not active, which holder caused it (no secrets).
    state_detail        text,
    state_changed_at    timestamptz,
    generation          bigint NOT NULL CHECK (generation >= 0),
    key_id              text NOT NULL,
    nonce               bytea NOT NULL,
    keys_ciphertext     bytea NOT NULL,
    -- Truncated SHA-256 (hex) of the refresh token in the stored keys, and of the one they
    -- replaced: the lineage an updateKeys persister fences on. Never the token itself.
    refresh_fingerprint text,
    parent_fingerprint  text,
    -- The lease: who may refresh now, a fencing epoch, and its expiry on the database clock.
    lease_holder        text,
    lease_epoch         bigint NOT NULL DEFAULT 0,
    lease_expires_at    timestamptz,
    -- The in-flight intent: the generation whose refresh token is being spent, and by whom.
    -- Cleared by a commit; left behind by a holder that died mid-refresh.
    intent_generation   bigint,
    intent_holder       text,
    intent_at           timestamptz,
    rotated_by          text,
    rotated_at          timestamptz,
    created_at          timestamptz NOT NULL DEFAULT now(),
    updated_at          timestamptz NOT NULL DEFAULT now()
);

-- updateKeys events not yet confirmed by the broker, written in the same transaction as the
-- rotation they announce; the relay deletes a row after the publisher confirm.
CREATE TABLE keys_outbox (
    id                  bigserial PRIMARY KEY,
    account_id          text NOT NULL REFERENCES accounts (account_id) ON DELETE CASCADE,
    generation          bigint NOT NULL,
    parent_fingerprint  text,
    refresh_fingerprint text,
    key_id              text NOT NULL,
    nonce               bytea NOT NULL,
    keys_ciphertext     bytea NOT NULL,
    reason              text NOT NULL,
    holder              text NOT NULL,
    created_at          timestamptz NOT NULL DEFAULT now(),
    UNIQUE (account_id, generation)
);

CREATE INDEX keys_outbox_account ON keys_outbox (account_id, id);
