//! A throwaway NATS operator for servers in operator (decentralised JWT) mode: an operator, one
//! account with JetStream enabled, and `.creds` files for users of that account, all made here.
//!
//! A JWT is `base64url(header).base64url(claims).base64url(signature)`, the header
//! `{"typ":"JWT","alg":"ed25519-nkey"}`, the signature an ed25519 signature of the first two parts
//! by the issuer's nkey. `jti` is the base32 SHA-256 of the claims written without it, as the
//! NATS tools do. The server reads the operator JWT from its configuration and the account JWT
//! from `resolver_preload`, so nothing else (no `nsc`, no account server) is needed.

use std::time::{SystemTime, UNIX_EPOCH};

use data_encoding::{BASE32_NOPAD, BASE64URL_NOPAD};
use nkeys::KeyPair;
use serde_json::{json, Value};
use sha2::{Digest, Sha256};

/// An operator, a system account and one account with JetStream allowed without limits.
pub struct TestOperator {
    operator: KeyPair,
    account: KeyPair,
    operator_jwt: String,
    account_jwt: String,
    /// The system account JetStream needs for its internal subscriptions.
    system: KeyPair,
    system_jwt: String,
}

impl TestOperator {
    pub fn new() -> TestOperator {
        let operator = KeyPair::new_operator();
        let account = KeyPair::new_account();
        let system = KeyPair::new_account();
        let operator_jwt = encode(
            &operator,
            &operator.public_key(),
            "test-operator",
            json!({"type": "operator", "version": 2, "system_account": system.public_key()}),
        );
        let system_jwt = encode(
            &operator,
            &system.public_key(),
            "SYS",
            json!({"type": "account", "version": 2}),
        );
        let account_jwt = encode(
            &operator,
            &account.public_key(),
            "fleet",
            json!({
                "type": "account",
                "version": 2,
                "limits": {
                    "subs": -1, "data": -1, "payload": -1, "imports": -1, "exports": -1,
                    "wildcards": true, "conn": -1, "leaf": -1,
                    "mem_storage": -1, "disk_storage": -1, "streams": -1, "consumer": -1
                },
                "default_permissions": {"pub": {}, "sub": {}}
            }),
        );
        TestOperator {
            operator,
            account,
            operator_jwt,
            account_jwt,
            system,
            system_jwt,
        }
    }

    /// The operator's public key (`O...`).
    pub fn operator_public_key(&self) -> String {
        self.operator.public_key()
    }

    /// Configuration for [`crate::NatsServer::start_with_config`]: operator mode, the account
    /// and the system account preloaded into a memory resolver.
    pub fn server_config(&self) -> String {
        format!(
            "operator: {}\nsystem_account: {}\nresolver: MEMORY\n\
             resolver_preload: {{\n  {}: {}\n  {}: {}\n}}\n",
            self.operator_jwt,
            self.system.public_key(),
            self.account.public_key(),
            self.account_jwt,
            self.system.public_key(),
            self.system_jwt,
        )
    }

    /// A `.creds` file's text for a new user of the account, and the user's seed (the secret).
    pub fn user_creds(&self, name: &str) -> (String, String) {
        let user = KeyPair::new_user();
        let jwt = encode(
            &self.account,
            &user.public_key(),
            name,
            json!({
                "type": "user",
                "version": 2,
                "pub": {}, "sub": {},
                "subs": -1, "data": -1, "payload": -1
            }),
        );
        let seed = user.seed().expect("a new key pair has a seed");
        (creds_file(&jwt, &seed), seed)
    }
}

impl Default for TestOperator {
    fn default() -> Self {
        Self::new()
    }
}

/// The `.creds` layout the NATS tools write: the user JWT, then the user's nkey seed.
pub fn creds_file(jwt: &str, seed: &str) -> String {
    format!(
        "-----BEGIN NATS USER JWT-----\n{jwt}\n------END NATS USER JWT------\n\n\
         ************************* IMPORTANT *************************\n\
         NKEY Seed printed below can be used to sign and prove identity.\n\
         NKEYs are sensitive and should be treated as secrets.\n\n\
         -----BEGIN USER NKEY SEED-----\n{seed}\n------END USER NKEY SEED------\n\n\
         *************************************************************\n"
    )
}

/// A signed JWT with `nats` as the NATS-specific claims.
fn encode(issuer: &KeyPair, subject: &str, name: &str, nats: Value) -> String {
    let iat = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .expect("clock after 1970")
        .as_secs();
    let mut claims = json!({
        "jti": "",
        "iat": iat,
        "iss": issuer.public_key(),
        "name": name,
        "sub": subject,
        "nats": nats,
    });
    let hash = Sha256::digest(serde_json::to_vec(&claims).expect("claims serialise"));
    claims["jti"] = Value::String(BASE32_NOPAD.encode(&hash));
    let header = BASE64URL_NOPAD.encode(br#"{"typ":"JWT","alg":"ed25519-nkey"}"#);
    let body = BASE64URL_NOPAD.encode(&serde_json::to_vec(&claims).expect("claims serialise"));
    let signing_input = format!("{header}.{body}");
    let sig = issuer
        .sign(signing_input.as_bytes())
        .expect("a new key pair can sign");
    format!("{signing_input}.{}", BASE64URL_NOPAD.encode(&sig))
}
