//! The feature-toggle registry: the eleven named features of CONTRACT.md ("Feature toggles"), their
//! wire names (with namespace prefixes accepted), and [`FeatureSet`], the compact on/off state that the
//! config builds at startup and the admin API changes at runtime.

use std::fmt;

/// One runtime-switchable feature.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Feature {
    /// `sse-streaming`: `GET /stream/sse`.
    SseStreaming,
    /// `websocket-streaming`: `GET /stream/ws` and `GET /` with an Upgrade header.
    WebsocketStreaming,
    /// `real-time-analytics`.
    RealTimeAnalytics,
    /// `stream-compression`.
    StreamCompression,
    /// `connection-pooling`.
    ConnectionPooling,
    /// `auto-reconnection`.
    AutoReconnection,
    /// `error-recovery`.
    ErrorRecovery,
    /// `stream-monitoring`.
    StreamMonitoring,
    /// `stream-authentication`: every stream, publish, MCP and admin request needs a credential.
    StreamAuthentication,
    /// `stream-rate-limiting`.
    StreamRateLimiting,
    /// `mcp-transport`: `/mcp`, `/sse` + `/messages`.
    McpTransport,
}

impl Feature {
    /// Every feature, in the order of CONTRACT.md (and of [`FeatureSet::iter`]).
    pub const ALL: [Feature; 11] = [
        Feature::SseStreaming,
        Feature::WebsocketStreaming,
        Feature::RealTimeAnalytics,
        Feature::StreamCompression,
        Feature::ConnectionPooling,
        Feature::AutoReconnection,
        Feature::ErrorRecovery,
        Feature::StreamMonitoring,
        Feature::StreamAuthentication,
        Feature::StreamRateLimiting,
        Feature::McpTransport,
    ];

    /// The wire name, e.g. `"sse-streaming"`.
    pub fn name(self) -> &'static str {
        match self {
            Feature::SseStreaming => "sse-streaming",
            Feature::WebsocketStreaming => "websocket-streaming",
            Feature::RealTimeAnalytics => "real-time-analytics",
            Feature::StreamCompression => "stream-compression",
            Feature::ConnectionPooling => "connection-pooling",
            Feature::AutoReconnection => "auto-reconnection",
            Feature::ErrorRecovery => "error-recovery",
            Feature::StreamMonitoring => "stream-monitoring",
            Feature::StreamAuthentication => "stream-authentication",
            Feature::StreamRateLimiting => "stream-rate-limiting",
            Feature::McpTransport => "mcp-transport",
        }
    }

    /// Looks a feature up by wire name. A namespace prefix is ignored: everything up to and including
    /// the last `.` is dropped, so `"uiforge-mcp.sse-streaming"` and `"global.stream-compression"`
    /// work. Matching is otherwise exact (case-sensitive).
    pub fn from_name(name: &str) -> Option<Feature> {
        let bare = match name.rfind('.') {
            Some(i) => &name[i + 1..],
            None => name,
        };
        Feature::ALL.iter().copied().find(|f| f.name() == bare)
    }

    /// The feature's bit in a [`FeatureSet`].
    fn bit(self) -> u16 {
        1u16 << (self as u16)
    }
}

impl fmt::Display for Feature {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// The on/off state of every [`Feature`], as a bitset.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct FeatureSet {
    bits: u16,
}

impl FeatureSet {
    /// A set with every feature off.
    pub fn none() -> FeatureSet {
        FeatureSet { bits: 0 }
    }

    /// A set with every feature on.
    pub fn all() -> FeatureSet {
        let mut s = FeatureSet::none();
        for f in Feature::ALL {
            s.set(f, true);
        }
        s
    }

    /// Whether `f` is on.
    pub fn is_enabled(&self, f: Feature) -> bool {
        self.bits & f.bit() != 0
    }

    /// Turns `f` on or off.
    pub fn set(&mut self, f: Feature, on: bool) {
        if on {
            self.bits |= f.bit();
        } else {
            self.bits &= !f.bit();
        }
    }

    /// Every feature with its state, in [`Feature::ALL`] order.
    pub fn iter(&self) -> impl Iterator<Item = (Feature, bool)> + '_ {
        Feature::ALL.iter().map(move |&f| (f, self.is_enabled(f)))
    }
}

impl Default for FeatureSet {
    /// Everything on except `stream-authentication` and `stream-rate-limiting`.
    fn default() -> FeatureSet {
        let mut s = FeatureSet::all();
        s.set(Feature::StreamAuthentication, false);
        s.set(Feature::StreamRateLimiting, false);
        s
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_are_the_contract_names_in_order() {
        let names: Vec<&str> = Feature::ALL.iter().map(|f| f.name()).collect();
        assert_eq!(
            names,
            [
                "sse-streaming",
                "websocket-streaming",
                "real-time-analytics",
                "stream-compression",
                "connection-pooling",
                "auto-reconnection",
                "error-recovery",
                "stream-monitoring",
                "stream-authentication",
                "stream-rate-limiting",
                "mcp-transport",
            ]
        );
        assert_eq!(Feature::McpTransport.to_string(), "mcp-transport");
    }

    #[test]
    fn from_name_round_trips_every_feature() {
        for f in Feature::ALL {
            assert_eq!(Feature::from_name(f.name()), Some(f));
        }
    }

    #[test]
    fn from_name_ignores_namespace_prefix() {
        assert_eq!(
            Feature::from_name("uiforge-mcp.sse-streaming"),
            Some(Feature::SseStreaming)
        );
        assert_eq!(
            Feature::from_name("global.stream-compression"),
            Some(Feature::StreamCompression)
        );
        assert_eq!(
            Feature::from_name("a.b.c.mcp-transport"),
            Some(Feature::McpTransport)
        );
        assert_eq!(
            Feature::from_name(".error-recovery"),
            Some(Feature::ErrorRecovery)
        );
    }

    #[test]
    fn from_name_rejects_unknown_names() {
        assert_eq!(Feature::from_name(""), None);
        assert_eq!(Feature::from_name("sse"), None);
        assert_eq!(Feature::from_name("SSE-STREAMING"), None);
        assert_eq!(Feature::from_name("sse-streaming."), None);
        assert_eq!(Feature::from_name("sse_streaming"), None);
        assert_eq!(Feature::from_name("sse-streaming-x"), None);
    }

    #[test]
    fn defaults_are_all_on_except_auth_and_rate_limiting() {
        let s = FeatureSet::default();
        for f in Feature::ALL {
            let expect = !matches!(
                f,
                Feature::StreamAuthentication | Feature::StreamRateLimiting
            );
            assert_eq!(s.is_enabled(f), expect, "{f}");
        }
    }

    #[test]
    fn set_changes_only_that_feature() {
        for f in Feature::ALL {
            let mut s = FeatureSet::none();
            s.set(f, true);
            for g in Feature::ALL {
                assert_eq!(s.is_enabled(g), g == f, "{f} on, checking {g}");
            }
            let mut s = FeatureSet::all();
            s.set(f, false);
            for g in Feature::ALL {
                assert_eq!(s.is_enabled(g), g != f, "{f} off, checking {g}");
            }
            // Idempotent.
            s.set(f, false);
            assert!(!s.is_enabled(f));
            s.set(f, true);
            s.set(f, true);
            assert_eq!(s, FeatureSet::all());
        }
    }

    #[test]
    fn iter_is_in_all_order_with_states() {
        let mut s = FeatureSet::none();
        s.set(Feature::RealTimeAnalytics, true);
        s.set(Feature::McpTransport, true);
        let v: Vec<(Feature, bool)> = s.iter().collect();
        assert_eq!(v.len(), 11);
        for (i, (f, on)) in v.iter().enumerate() {
            assert_eq!(*f, Feature::ALL[i]);
            assert_eq!(
                *on,
                matches!(f, Feature::RealTimeAnalytics | Feature::McpTransport)
            );
        }
    }

    #[test]
    fn none_and_all_differ_from_default() {
        assert_ne!(FeatureSet::none(), FeatureSet::default());
        assert_ne!(FeatureSet::all(), FeatureSet::default());
        assert!(FeatureSet::none().iter().all(|(_, on)| !on));
        assert!(FeatureSet::all().iter().all(|(_, on)| on));
    }
}
