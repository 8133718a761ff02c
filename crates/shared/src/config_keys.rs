//! Keys for encrypted tenant configs (`FLEET_CONFIG_KEYS`) and the sealed value format.
//!
//! `FLEET_CONFIG_KEYS` is a comma-separated list of `id:hex` pairs, each key 32 bytes written as
//! 64 hex digits (`k1:ab…,k2:cd…`). The **last** key encrypts; every listed key decrypts, so keys
//! rotate by appending a new one, running `fleetctl tenants rotate-keys`, then dropping the old.
//!
//! A value is sealed with AES-256-GCM (the `aes-gcm` crate of RustCrypto) under a fresh random
//! 96-bit nonce, with the config key as associated data, so a ciphertext moved to another key
//! fails to open. It is stored in `config_value` as
//! `{"alg": "aes-256-gcm", "kid": "k2", "nonce": "<hex>", "ct": "<hex>"}` with
//! `is_encrypted = true`: the key id travels with the value. Opening a value whose key id is not
//! configured, or that does not authenticate, is an error naming the key id, never plaintext.
//!
//! [`ConfigKeys`] cannot be printed: its `Debug` shows the key ids only, and no error message
//! carries key material.

use std::fmt;

use aes_gcm::aead::{Aead, KeyInit, Payload};
use aes_gcm::{Aes256Gcm, Key, Nonce};
use serde::{Deserialize, Serialize};

pub const VAR: &str = "FLEET_CONFIG_KEYS";
pub const ALG: &str = "aes-256-gcm";
const ACCEPTS: &str =
    "comma-separated id:hex pairs, each key 32 bytes as 64 hex digits (k1:<64 hex>,k2:<64 hex>); ids use a-z A-Z 0-9 _ -";

/// The configured keys; the last one encrypts.
#[derive(Clone)]
pub struct ConfigKeys {
    keys: Vec<(String, [u8; 32])>,
}

impl fmt::Debug for ConfigKeys {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ConfigKeys")
            .field("ids", &self.ids().collect::<Vec<_>>())
            .finish()
    }
}

/// A sealed value as stored in `config_value`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Sealed {
    pub alg: String,
    pub kid: String,
    pub nonce: String,
    pub ct: String,
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum SealError {
    #[error("FLEET_CONFIG_KEYS is not set, so encrypted configs can be neither written nor read")]
    NoKeys,
    #[error("the value was encrypted with key {0:?}, which FLEET_CONFIG_KEYS does not hold")]
    UnknownKey(String),
    #[error(
        "the value does not open with key {0:?} (a wrong key for that id, or a tampered value)"
    )]
    Open(String),
    #[error("the stored value is not a sealed config ({0})")]
    Malformed(String),
}

fn valid_id(id: &str) -> bool {
    !id.is_empty()
        && id.len() <= 32
        && id
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-')
}

impl ConfigKeys {
    /// Parses `FLEET_CONFIG_KEYS`; the error names the variable and never echoes key material.
    pub fn parse(raw: &str) -> Result<ConfigKeys, crate::errors::ConfigError> {
        let bad = |problem: String| crate::errors::ConfigError::invalid(VAR, problem, ACCEPTS);
        let mut keys: Vec<(String, [u8; 32])> = Vec::new();
        for (i, part) in raw.split(',').enumerate() {
            let part = part.trim();
            let Some((id, hex_key)) = part.split_once(':') else {
                return Err(bad(format!(
                    "entry {} has no ':' between id and key",
                    i + 1
                )));
            };
            let id = id.trim();
            if !valid_id(id) {
                return Err(bad(format!("entry {}: {id:?} is not a key id", i + 1)));
            }
            let hex_key = hex_key.trim();
            if hex_key.len() != 64 {
                return Err(bad(format!(
                    "key {id:?} has {} hex digits, not 64",
                    hex_key.len()
                )));
            }
            let mut key = [0u8; 32];
            hex::decode_to_slice(hex_key, &mut key)
                .map_err(|_| bad(format!("key {id:?} is not hexadecimal")))?;
            if keys.iter().any(|(k, _)| k == id) {
                return Err(bad(format!("key id {id:?} is listed twice")));
            }
            keys.push((id.to_owned(), key));
        }
        Ok(ConfigKeys { keys })
    }

    /// Key ids in the configured order (the last one encrypts).
    pub fn ids(&self) -> impl Iterator<Item = &str> {
        self.keys.iter().map(|(id, _)| id.as_str())
    }

    /// The id of the key new values are sealed with.
    pub fn current_id(&self) -> &str {
        // `parse` never returns an empty list: splitting yields at least one entry.
        self.keys.last().map(|(id, _)| id.as_str()).unwrap_or("")
    }

    fn cipher(&self, kid: &str) -> Result<Aes256Gcm, SealError> {
        let (_, key) = self
            .keys
            .iter()
            .find(|(id, _)| id == kid)
            .ok_or_else(|| SealError::UnknownKey(kid.to_owned()))?;
        Ok(Aes256Gcm::new(Key::<Aes256Gcm>::from_slice(key)))
    }

    /// Seals `value` (its JSON text) for config `key` under the newest key.
    pub fn seal(&self, key: &str, value: &serde_json::Value) -> Result<Sealed, SealError> {
        let kid = self.current_id().to_owned();
        let cipher = self.cipher(&kid)?;
        let nonce: [u8; 12] = rand::random();
        let plain = serde_json::to_vec(value).map_err(|e| SealError::Malformed(e.to_string()))?;
        let ct = cipher
            .encrypt(
                Nonce::from_slice(&nonce),
                Payload {
                    msg: &plain,
                    aad: key.as_bytes(),
                },
            )
            .map_err(|_| SealError::Open(kid.clone()))?;
        Ok(Sealed {
            alg: ALG.into(),
            kid,
            nonce: hex::encode(nonce),
            ct: hex::encode(ct),
        })
    }

    /// Opens a sealed value of config `key`.
    pub fn open(&self, key: &str, sealed: &Sealed) -> Result<serde_json::Value, SealError> {
        if sealed.alg != ALG {
            return Err(SealError::Malformed(format!(
                "unknown algorithm {:?}",
                sealed.alg
            )));
        }
        let cipher = self.cipher(&sealed.kid)?;
        let mut nonce = [0u8; 12];
        hex::decode_to_slice(&sealed.nonce, &mut nonce)
            .map_err(|_| SealError::Malformed("bad nonce".into()))?;
        let ct = hex::decode(&sealed.ct).map_err(|_| SealError::Malformed("bad ct".into()))?;
        let plain = cipher
            .decrypt(
                Nonce::from_slice(&nonce),
                Payload {
                    msg: &ct,
                    aad: key.as_bytes(),
                },
            )
            .map_err(|_| SealError::Open(sealed.kid.clone()))?;
        serde_json::from_slice(&plain).map_err(|e| SealError::Malformed(e.to_string()))
    }
}

impl Sealed {
    /// Reads a stored `config_value` of an encrypted row.
    pub fn from_value(v: &serde_json::Value) -> Result<Sealed, SealError> {
        serde_json::from_value(v.clone()).map_err(|e| SealError::Malformed(e.to_string()))
    }

    pub fn to_value(&self) -> serde_json::Value {
        serde_json::to_value(self).unwrap_or_default()
    }
}

/// Opens a sealed value with optional keys: no keys is [`SealError::NoKeys`].
pub fn open_with(
    keys: Option<&ConfigKeys>,
    key: &str,
    stored: &serde_json::Value,
) -> Result<serde_json::Value, SealError> {
    let keys = keys.ok_or(SealError::NoKeys)?;
    keys.open(key, &Sealed::from_value(stored)?)
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    const A: &str = "00112233445566778899aabbccddeeff00112233445566778899aabbccddeeff";
    const B: &str = "ffeeddccbbaa99887766554433221100ffeeddccbbaa99887766554433221100";

    #[test]
    fn seal_open_rotate_and_refuse() {
        let one = ConfigKeys::parse(&format!("k1:{A}")).unwrap();
        let s = one.seal("smtp.password", &json!("hunter2")).unwrap();
        assert_eq!(s.kid, "k1");
        assert!(!s.ct.contains("hunter2"));
        assert_eq!(one.open("smtp.password", &s).unwrap(), json!("hunter2"));
        // Bound to its config key.
        assert_eq!(one.open("other", &s), Err(SealError::Open("k1".into())));

        let both = ConfigKeys::parse(&format!("k1:{A}, k2:{B}")).unwrap();
        assert_eq!(both.current_id(), "k2");
        assert_eq!(both.open("smtp.password", &s).unwrap(), json!("hunter2"));
        let s2 = both.seal("smtp.password", &json!("hunter2")).unwrap();
        assert_eq!(s2.kid, "k2");
        assert_eq!(
            one.open("smtp.password", &s2),
            Err(SealError::UnknownKey("k2".into()))
        );
        // Same id, other bytes: a wrong key, not plaintext.
        let wrong = ConfigKeys::parse(&format!("k1:{B}")).unwrap();
        assert_eq!(
            wrong.open("smtp.password", &s),
            Err(SealError::Open("k1".into()))
        );
        assert_eq!(
            open_with(None, "smtp.password", &s.to_value()),
            Err(SealError::NoKeys)
        );
    }

    #[test]
    fn parse_errors_name_the_variable_and_hide_keys() {
        for bad in [
            "k1",
            "k1:abc",
            &format!("k 1:{A}"),
            &format!("k1:{}", "zz".repeat(32)),
            &format!("k1:{A},k1:{B}"),
        ] {
            let e = ConfigKeys::parse(bad).unwrap_err().to_string();
            assert!(e.starts_with("FLEET_CONFIG_KEYS: "), "{e}");
            assert!(!e.contains(A) && !e.contains(B), "{e}");
        }
        let k = ConfigKeys::parse(&format!("k1:{A}")).unwrap();
        assert!(!format!("{k:?}").contains(A));
    }
}
