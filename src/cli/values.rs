//! Typed values of `serve` flags: how each parses from the command line,
//! the environment or the config file, and how `config check` shows it.

use std::net::SocketAddr;
use std::time::Duration;

use serde::{Serialize, Serializer};

use crate::storage::cassandra::parse_consistency;

/// Where metrics are served, if anywhere.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct MetricsListen(pub Option<SocketAddr>);

impl std::fmt::Display for MetricsListen {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self.0 {
            Some(addr) => addr.fmt(f),
            None => f.write_str("off"),
        }
    }
}

impl std::str::FromStr for MetricsListen {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        if s.eq_ignore_ascii_case("off") {
            return Ok(Self(None));
        }
        s.parse()
            .map(|a| Self(Some(a)))
            .map_err(|e| format!("{e}: expected host:port or \"off\""))
    }
}

/// A duration given in human form (`250ms`, `2s`, `5m`, `1h`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct HumanDuration(pub Duration);

impl std::fmt::Display for HumanDuration {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        humantime::format_duration(self.0).fmt(f)
    }
}

impl std::str::FromStr for HumanDuration {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        humantime::parse_duration(s)
            .map(Self)
            .map_err(|e| format!("{e} (examples: 250ms, 2s, 1h)"))
    }
}

/// A consistency level, by its CQL name.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ConsistencyArg(pub scylla::statement::Consistency);

impl std::fmt::Display for ConsistencyArg {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        use scylla::statement::Consistency as C;
        f.write_str(match self.0 {
            C::Any => "any",
            C::One => "one",
            C::Two => "two",
            C::Three => "three",
            C::Quorum => "quorum",
            C::All => "all",
            C::LocalQuorum => "local_quorum",
            C::EachQuorum => "each_quorum",
            C::LocalOne => "local_one",
            C::Serial => "serial",
            C::LocalSerial => "local_serial",
        })
    }
}

impl std::str::FromStr for ConsistencyArg {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        parse_consistency(s).map(Self)
    }
}

/// Serializes any of the argument types above by their display form, the
/// form the flag takes.
pub(super) fn as_displayed<T: std::fmt::Display, S: Serializer>(
    v: &T,
    s: S,
) -> Result<S::Ok, S::Error> {
    s.collect_str(v)
}

/// A secret setting: its Debug and serialized forms are redacted, so
/// printing the parsed configuration can never show it.
#[derive(Clone)]
pub struct Secret(String);

impl Secret {
    /// The secret itself, for the one place that uses it.
    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl std::fmt::Debug for Secret {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Secret(<hidden>)")
    }
}

impl Serialize for Secret {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str("set (hidden)")
    }
}

impl std::str::FromStr for Secret {
    type Err = std::convert::Infallible;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Ok(Self(s.to_string()))
    }
}
