//! Optional bearer-token authentication with per-namespace read and write
//! permissions, loaded from a TOML file.
//!
//! ```toml
//! [[client]]
//! name = "dashboards"
//! # sha256 of the bearer token, hex: `printf %s "$TOKEN" | sha256sum`
//! token_sha256 = "9f86d081884c7d659a2feaa0c55ad015a3bf4f1b2b0b822cd15d6c15b0f00a08"
//! read = ["metrics", "logs"]
//! write = []
//!
//! [[client]]
//! name = "ingest"
//! token_sha256 = "..."
//! read = ["*"]
//! write = ["*"]
//! ```
//!
//! Invariants:
//! * The file holds only hashes of tokens, never the tokens; a request's
//!   token is hashed and looked up, so nothing secret is compared byte by
//!   byte or logged.
//! * Permission is checked against the namespace named in the request, for
//!   every call, before anything is read or written. A continuation token
//!   carries no authority: it only positions a read the caller may already
//!   make (and it is bound to its namespace, so it cannot be redirected).
//! * Reading (ReadEvents, StreamEvents, GetNamespace) needs `read`; writing
//!   (WriteEvents, CreateNamespace) needs `write` on that namespace.

use std::collections::{HashMap, HashSet};
use std::path::Path;
use std::sync::Arc;
use tonic::codegen::http;

use sha2::{Digest, Sha256};

/// What a call does to a namespace.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Access {
    Read,
    Write,
}

impl std::fmt::Display for Access {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Self::Read => "read",
            Self::Write => "write",
        })
    }
}

/// Why a call was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum AuthError {
    /// No usable `authorization: Bearer <token>` header: none, a
    /// malformed one, or more than one (which would leave it to each
    /// proxy and server which one counts).
    #[error(
        "missing, repeated or malformed authorization header; send one \"authorization: Bearer <token>\""
    )]
    MissingToken,
    /// The token matches no client.
    #[error("unknown bearer token")]
    UnknownToken,
    /// The client may not do this to this namespace.
    #[error("client {client:?} may not {access} namespace {namespace:?}")]
    Denied {
        client: String,
        access: Access,
        namespace: String,
    },
}

/// Namespaces a permission covers.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Grant {
    All,
    Some(HashSet<String>),
}

impl Grant {
    fn of(list: Vec<String>) -> Self {
        if list.iter().any(|n| n == "*") {
            Self::All
        } else {
            Self::Some(list.into_iter().collect())
        }
    }

    fn covers(&self, namespace: &str) -> bool {
        match self {
            Self::All => true,
            Self::Some(set) => set.contains(namespace),
        }
    }
}

/// A client of the auth file.
#[derive(Debug)]
pub struct Principal {
    pub name: String,
    read: Grant,
    write: Grant,
}

#[derive(serde::Deserialize)]
#[serde(deny_unknown_fields)]
struct FileClient {
    name: String,
    token_sha256: String,
    #[serde(default)]
    read: Vec<String>,
    #[serde(default)]
    write: Vec<String>,
}

#[derive(serde::Deserialize)]
#[serde(deny_unknown_fields)]
struct File {
    #[serde(default)]
    client: Vec<FileClient>,
}

/// The clients allowed in, by token hash.
#[derive(Debug)]
pub struct Authenticator {
    clients: HashMap<[u8; 32], Arc<Principal>>,
}

impl Authenticator {
    /// Loads the auth file; errors name the file and the client entry.
    pub fn load(path: &Path) -> anyhow::Result<Self> {
        let text = std::fs::read_to_string(path)
            .map_err(|e| anyhow::anyhow!("cannot read auth file {}: {e}", path.display()))?;
        Self::parse(&text).map_err(|e| anyhow::anyhow!("auth file {}: {e}", path.display()))
    }

    pub fn parse(text: &str) -> anyhow::Result<Self> {
        let file: File = toml::from_str(text)
            .map_err(|e| anyhow::anyhow!("{}", crate::cli::toml_problem(text, &e)))?;
        if file.client.is_empty() {
            anyhow::bail!("no [[client]] entries: nobody could call the server");
        }
        let mut clients = HashMap::new();
        let mut names = HashSet::new();
        for (i, c) in file.client.into_iter().enumerate() {
            let at = format!("client[{i}] ({:?})", c.name);
            if c.name.is_empty() || !names.insert(c.name.clone()) {
                anyhow::bail!("{at}: name must be non-empty and unique");
            }
            let mut hash = [0u8; 32];
            let hex = c.token_sha256.trim();
            if hex.len() != 64 {
                anyhow::bail!("{at}: token_sha256 must be 64 hex digits (sha256 of the token)");
            }
            for (j, byte) in hash.iter_mut().enumerate() {
                *byte = u8::from_str_radix(&hex[2 * j..2 * j + 2], 16)
                    .map_err(|_| anyhow::anyhow!("{at}: token_sha256 must be 64 hex digits"))?;
            }
            for (list, names) in [("read", &c.read), ("write", &c.write)] {
                for ns in names.iter().filter(|n| *n != "*") {
                    crate::api::check_namespace_name(list, ns).map_err(|e| {
                        anyhow::anyhow!("{at}: {list} names {ns:?}, which no namespace is: {e}")
                    })?;
                }
            }
            let principal = Principal {
                name: c.name,
                read: Grant::of(c.read),
                write: Grant::of(c.write),
            };
            if clients.insert(hash, Arc::new(principal)).is_some() {
                anyhow::bail!("{at}: the same token is given to two clients");
            }
        }
        Ok(Self { clients })
    }

    /// Number of clients.
    pub fn len(&self) -> usize {
        self.clients.len()
    }

    /// Always false: a loaded authenticator has at least one client.
    pub fn is_empty(&self) -> bool {
        self.clients.is_empty()
    }

    /// The client presenting the bearer token in `metadata`.
    pub fn authenticate(
        &self,
        metadata: &tonic::metadata::MetadataMap,
    ) -> Result<Arc<Principal>, AuthError> {
        self.authenticate_headers(metadata.as_ref())
    }

    /// The client presenting the bearer token in a request's HTTP
    /// `headers` (before the request is decoded).
    pub fn authenticate_headers(
        &self,
        headers: &http::HeaderMap,
    ) -> Result<Arc<Principal>, AuthError> {
        let mut values = headers.get_all("authorization").iter();
        let one = values.next().filter(|_| values.next().is_none());
        self.client_of(one.and_then(|v| v.to_str().ok()))
    }

    /// The client an `authorization` header value names.
    fn client_of(&self, authorization: Option<&str>) -> Result<Arc<Principal>, AuthError> {
        let token = authorization
            .and_then(|v| {
                let (scheme, token) = v.trim().split_once(' ')?;
                scheme.eq_ignore_ascii_case("bearer").then(|| token.trim())
            })
            .filter(|t| !t.is_empty())
            .ok_or(AuthError::MissingToken)?;
        let hash: [u8; 32] = Sha256::digest(token.as_bytes()).into();
        self.clients
            .get(&hash)
            .cloned()
            .ok_or(AuthError::UnknownToken)
    }
}

impl Principal {
    /// Whether this client may do `access` to `namespace`.
    pub fn check(&self, access: Access, namespace: &str) -> Result<(), AuthError> {
        let grant = match access {
            Access::Read => &self.read,
            Access::Write => &self.write,
        };
        if grant.covers(namespace) {
            Ok(())
        } else {
            Err(AuthError::Denied {
                client: self.name.clone(),
                access,
                namespace: namespace.to_string(),
            })
        }
    }
}

/// The sha256 of a token, hex, as the auth file wants it.
pub fn token_sha256(token: &str) -> String {
    Sha256::digest(token.as_bytes())
        .iter()
        .fold(String::with_capacity(64), |mut hex, b| {
            use std::fmt::Write as _;
            let _ = write!(hex, "{b:02x}");
            hex
        })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn md(token: &str) -> tonic::metadata::MetadataMap {
        let mut m = tonic::metadata::MetadataMap::new();
        m.insert("authorization", format!("Bearer {token}").parse().unwrap());
        m
    }

    #[test]
    fn tokens_map_to_clients_and_grants_to_namespaces() {
        let text = format!(
            "[[client]]\nname = \"a\"\ntoken_sha256 = \"{}\"\nread = [\"x\"]\n\n\
             [[client]]\nname = \"b\"\ntoken_sha256 = \"{}\"\nread = [\"*\"]\nwrite = [\"y\"]\n",
            token_sha256("ta"),
            token_sha256("tb")
        );
        let auth = Authenticator::parse(&text).unwrap();
        let a = auth.authenticate(&md("ta")).unwrap();
        assert_eq!(a.name, "a");
        assert!(a.check(Access::Read, "x").is_ok());
        assert!(a.check(Access::Read, "y").is_err());
        assert!(a.check(Access::Write, "x").is_err());
        let b = auth.authenticate(&md("tb")).unwrap();
        assert!(b.check(Access::Read, "anything").is_ok());
        assert!(b.check(Access::Write, "y").is_ok());
        assert!(b.check(Access::Write, "x").is_err());
        assert_eq!(
            auth.authenticate(&md("tc")).unwrap_err(),
            AuthError::UnknownToken
        );
        assert_eq!(
            auth.authenticate(&tonic::metadata::MetadataMap::new())
                .unwrap_err(),
            AuthError::MissingToken
        );
        // Two headers, even both valid: refused, in metadata and in HTTP
        // headers alike, whichever comes first.
        for (first, second) in [("ta", "tb"), ("ta", "ta"), ("nobody", "ta")] {
            let mut m = md(first);
            m.append("authorization", format!("Bearer {second}").parse().unwrap());
            assert_eq!(
                auth.authenticate(&m).unwrap_err(),
                AuthError::MissingToken,
                "{first} {second}"
            );
            let headers = m.into_headers();
            assert_eq!(
                auth.authenticate_headers(&headers).unwrap_err(),
                AuthError::MissingToken
            );
        }
    }

    #[test]
    fn bad_files_name_the_entry() {
        for (text, want) in [
            ("", "no [[client]]"),
            (
                "[[client]]\nname = \"a\"\ntoken_sha256 = \"abc\"\n",
                "client[0] (\"a\")",
            ),
            (
                "[[client]]\nname = \"a\"\ntoken_sha256 = \"abc\"\nadmin = true\n",
                "unknown field",
            ),
            (
                &format!(
                    "[[client]]\nname = \"a\"\ntoken_sha256 = \"{}\"\nread = [\"ok\", \"bad ns!\"]\n",
                    "ab".repeat(32)
                ),
                "client[0] (\"a\"): read names \"bad ns!\", which no namespace is",
            ),
            // A key file given as the auth file, a token in plain text:
            // reported by line and column, never quoting the secret.
            ("k1:SUPERSECRETVALUE-0123456789\n", "line 1, column"),
            (
                "[[client]]\nname = \"a\"\ntoken = \"SUPERSECRETVALUE\"\n",
                "unknown field",
            ),
        ] {
            let err = Authenticator::parse(text).unwrap_err().to_string();
            assert!(err.contains(want), "{err}");
            assert!(!err.contains("SUPERSECRET"), "{err}");
        }
    }
}
