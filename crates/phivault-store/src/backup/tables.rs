//! The list of the schema's tables and columns ([`TABLES`]), in restore order.

use super::{Column, ColumnKind, Table};

const fn int(name: &'static str) -> Column {
    Column {
        name,
        kind: ColumnKind::Int,
    }
}
const fn text(name: &'static str) -> Column {
    Column {
        name,
        kind: ColumnKind::Text,
    }
}
const fn bytes(name: &'static str) -> Column {
    Column {
        name,
        kind: ColumnKind::Bytes,
    }
}

/// The tables a backup leaves out: the login limits ([`crate::login_limits`]). Their rows
/// are ephemeral (each stops limiting within a day and is then deleted) and keyed by blind
/// tokens of the live database's index key; a limit in force is not worth restoring, and a
/// restore keeps the rows of the database it replaces, which expire on their own. Every other
/// table of the schema is in [`TABLES`].
pub const EPHEMERAL_TABLES: &[&str] = crate::login_limits::TABLES;

/// Every table, parents before the tables whose foreign keys name them. The audit key and
/// checkpoints come before the entries, so a reader of an archive can check the hash chain
/// against the signed checkpoints as the entries stream by.
pub const TABLES: &[Table] = &[
    Table {
        name: "key_encryption_keys",
        columns: &[
            text("kek_id"),
            bytes("wrapped"),
            int("created_at"),
            int("active"),
        ],
        order: &["kek_id"],
    },
    Table {
        name: "data_keys",
        columns: &[
            text("key_id"),
            text("tenant"),
            text("kind"),
            bytes("owner"),
            text("kek_id"),
            bytes("wrapped"),
            int("created_at"),
        ],
        order: &["key_id"],
    },
    Table {
        name: "audit_keys",
        columns: &[
            text("key_id"),
            text("tenant"),
            bytes("public_key"),
            bytes("sealed_private"),
            int("created_at"),
        ],
        order: &["key_id"],
    },
    Table {
        name: "audit_chain",
        columns: &[
            text("tenant"),
            int("keyed_from"),
            bytes("tag"),
            int("created_at"),
        ],
        order: &["tenant"],
    },
    Table {
        name: "audit_checkpoints",
        columns: &[
            int("size"),
            bytes("root"),
            bytes("last_entry_hash"),
            int("time"),
            bytes("signature"),
            bytes("frontier"),
        ],
        order: &["size"],
    },
    Table {
        name: "audit_entries",
        columns: &[
            int("seq"),
            text("tenant"),
            bytes("body"),
            bytes("entry_hash"),
            bytes("prev_hash"),
            int("time"),
            text("actor"),
            text("patient"),
            text("action"),
            text("outcome"),
            bytes("chain_mac"),
            // Schema v16. An archive from before it has none: restored as NULL and filled in
            // from the bodies when the restored trail is opened.
            text("address"),
        ],
        order: &["seq"],
    },
    Table {
        name: "audit_entry_patients",
        columns: &[int("seq"), text("patient")],
        order: &["seq", "patient"],
    },
    Table {
        name: "resource_versions",
        columns: &[
            text("tenant"),
            text("rtype"),
            text("id"),
            int("version"),
            text("key_id"),
            bytes("sealed"),
            int("deleted"),
            int("recorded_at"),
        ],
        order: &["tenant", "rtype", "id", "version"],
    },
    Table {
        name: "current_resources",
        columns: &[
            text("tenant"),
            text("rtype"),
            text("id"),
            int("version"),
            text("key_id"),
            int("deleted"),
            int("recorded_at"),
        ],
        order: &["tenant", "rtype", "id"],
    },
    Table {
        name: "search_index",
        columns: &[text("tenant"), text("rtype"), bytes("token"), text("id")],
        order: &["tenant", "rtype", "token", "id"],
    },
    Table {
        name: "index_formats",
        columns: &[text("tenant"), int("format")],
        order: &["tenant"],
    },
    Table {
        name: "cache_generations",
        columns: &[text("tenant"), text("name"), int("value")],
        order: &["tenant", "name"],
    },
    Table {
        name: "users",
        columns: &[
            text("user_id"),
            text("tenant"),
            bytes("username_token"),
            text("role"),
            text("password_hash"),
            bytes("totp_sealed"),
            int("totp_enabled"),
            int("totp_last_step"),
            text("throttle"),
            text("patient_id"),
            text("practitioner_id"),
            bytes("profile_sealed"),
            int("created_at"),
            int("disabled_at"),
            int("failed_logins"),
            int("locked_until"),
        ],
        order: &["user_id"],
    },
    Table {
        name: "recovery_codes",
        columns: &[text("user_id"), bytes("code_hash"), int("used_at")],
        order: &["user_id", "code_hash"],
    },
    Table {
        name: "tokens",
        columns: &[
            bytes("token_hash"),
            text("tenant"),
            text("kind"),
            text("principal_id"),
            text("client_id"),
            text("scopes"),
            text("launch_patient"),
            int("issued_at"),
            int("expires_at"),
            int("revoked_at"),
            // Schema v17 (SMART App Launch). An archive from before it has none: restored
            // as NULL (no family, no encounter).
            text("family"),
            text("encounter"),
        ],
        order: &["token_hash"],
    },
    Table {
        name: "oauth_clients",
        columns: &[
            text("client_id"),
            text("tenant"),
            text("name"),
            bytes("secret_hash"),
            text("scopes"),
            text("launch_patient"),
            int("created_at"),
            int("disabled_at"),
            // Schema v17. Restored as NULL from an older archive: a client type of NULL
            // reads as `confidential-secret`, what every older client is.
            text("client_type"),
            text("redirect_uris"),
            text("jwks"),
            text("jwks_url"),
        ],
        order: &["client_id"],
    },
    Table {
        name: "oauth_codes",
        columns: &[
            bytes("code_hash"),
            text("tenant"),
            text("client_id"),
            text("user_id"),
            text("redirect_uri"),
            text("scopes"),
            text("code_challenge"),
            text("launch_patient"),
            text("launch_encounter"),
            text("nonce"),
            text("family"),
            int("issued_at"),
            int("expires_at"),
            int("used_at"),
        ],
        order: &["code_hash"],
    },
    Table {
        name: "oauth_jtis",
        columns: &[
            text("tenant"),
            text("client_id"),
            text("jti"),
            int("expires_at"),
        ],
        order: &["tenant", "client_id", "jti"],
    },
    Table {
        name: "smart_launches",
        columns: &[
            bytes("launch_hash"),
            text("tenant"),
            text("user_id"),
            text("patient_id"),
            text("encounter_id"),
            int("created_at"),
            int("expires_at"),
        ],
        order: &["launch_hash"],
    },
    Table {
        name: "oauth_authorizations",
        columns: &[
            text("tenant"),
            text("user_id"),
            text("client_id"),
            text("scopes"),
            int("granted_at"),
            int("last_used_at"),
            int("revoked_at"),
        ],
        order: &["tenant", "user_id", "client_id"],
    },
    Table {
        name: "oidc_signing_keys",
        columns: &[
            text("tenant"),
            text("kid"),
            text("alg"),
            bytes("private_sealed"),
            text("public_jwk"),
            int("created_at"),
            int("retired_at"),
        ],
        order: &["tenant", "kid"],
    },
    Table {
        name: "care_grants",
        columns: &[
            text("tenant"),
            text("user_id"),
            text("patient_id"),
            text("labels"),
            int("created_at"),
            int("expires_at"),
        ],
        order: &["tenant", "user_id", "patient_id"],
    },
    Table {
        name: "break_glass",
        columns: &[
            text("id"),
            text("tenant"),
            text("user_id"),
            text("patient_id"),
            bytes("reason_sealed"),
            int("started_at"),
            int("expires_at"),
            // Schema v18 (break-the-glass review). Restored as NULL from an older archive:
            // the claim is then unreviewed, as it was.
            int("reviewed_at"),
            text("reviewer_id"),
            bytes("review_note_sealed"),
        ],
        order: &["id"],
    },
    Table {
        name: "erasures",
        columns: &[
            text("key_id"),
            text("tenant"),
            bytes("owner"),
            int("erased_at"),
            int("resources"),
            int("index_swept_at"),
        ],
        order: &["key_id"],
    },
    Table {
        name: "retention_ledger",
        columns: &[
            text("tenant"),
            text("rtype"),
            text("id"),
            int("versions"),
            int("last_recorded_at"),
            int("disposed_at"),
        ],
        order: &[
            "tenant",
            "rtype",
            "id",
            "disposed_at",
            "versions",
            "last_recorded_at",
        ],
    },
];
