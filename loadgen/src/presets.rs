//! Built-in scenarios (`--preset`): the values each one sets. Explicit
//! flags override them (see [`crate::opts::Opts::resolve`]).

use std::time::Duration;

use clap::ValueEnum;

use crate::thresholds::Thresholds;

/// Built-in scenarios. Explicit flags override what a preset sets.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum, serde::Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Preset {
    /// Small and fast, for CI: 60 clients in 4 rooms, 8 senders at 80 msg/s
    /// for 5s, and zero loss, duplication, reordering or failed connections.
    /// (4 rooms, not 3, so that round-robin over 3 instances mixes every
    /// room across instances.)
    Smoke,
    /// One big room: 1000 members, 10 senders at 50 msg/s for 20s (50k
    /// deliveries/s).
    Fanout,
    /// Many mostly idle sockets: 20000 clients in 200 rooms, a trickle of
    /// 20 msg/s for 30s; spreads over worker processes and source IPs. The
    /// far end must accept that many (HAProxy `maxconn`, server limits).
    Connections,
}

/// The values a preset sets; `None` falls through to the default.
#[derive(Default)]
pub(crate) struct PresetValues {
    pub(crate) clients: Option<usize>,
    pub(crate) rooms: Option<usize>,
    pub(crate) senders: Option<usize>,
    pub(crate) rate: Option<f64>,
    pub(crate) size: Option<usize>,
    pub(crate) duration: Option<Duration>,
    pub(crate) ramp: Option<f64>,
    pub(crate) thresholds: Thresholds,
}

pub(crate) fn preset_values(p: Option<Preset>) -> PresetValues {
    let secs = Duration::from_secs;
    match p {
        None => PresetValues::default(),
        Some(Preset::Smoke) => PresetValues {
            clients: Some(60),
            rooms: Some(4),
            senders: Some(8),
            rate: Some(80.0),
            size: Some(64),
            duration: Some(secs(5)),
            ramp: Some(500.0),
            thresholds: Thresholds {
                max_lost: Some(0),
                max_duplicated: Some(0),
                max_out_of_order: Some(0),
                max_failed_connections: Some(0),
                ..Thresholds::default()
            },
        },
        Some(Preset::Fanout) => PresetValues {
            clients: Some(1000),
            rooms: Some(1),
            senders: Some(10),
            rate: Some(50.0),
            size: Some(64),
            duration: Some(secs(20)),
            ramp: Some(1000.0),
            thresholds: Thresholds::default(),
        },
        Some(Preset::Connections) => PresetValues {
            clients: Some(20_000),
            rooms: Some(200),
            senders: Some(20),
            rate: Some(20.0),
            size: Some(32),
            duration: Some(secs(30)),
            ramp: Some(2000.0),
            thresholds: Thresholds::default(),
        },
    }
}
