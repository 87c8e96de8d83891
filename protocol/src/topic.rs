//! MQTT topics: building every topic of a station, parsing incoming topics, and the
//! subscription filters of the station and of the platform.
//!
//! Layout: `{prefix}/stations/{station_id}/…` with the default prefix [`DEFAULT_PREFIX`].
//! Parsing refuses wildcards, empty levels, `$`-topics, bad ids and — on the station side —
//! any other station's topic. Directions and retain flags are in [`Topic::direction`] and
//! [`Topic::retained`]. All publishes use QoS 1.

use crate::error::{ProtocolError, TopicProblem};
use crate::ids::{JobId, StationId};

/// The default topic prefix.
pub const DEFAULT_PREFIX: &str = "ukey/v1";

/// Who publishes on a topic.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Direction {
    /// The station publishes, the platform subscribes.
    FromStation,
    /// The platform publishes, the station subscribes.
    ToStation,
}

/// A parsed topic of one station.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Topic {
    /// `presence`: birth/death (retained).
    Presence,
    /// `jobs`: signed job envelopes.
    Jobs,
    /// `jobs/{jid}/events`: step events.
    JobEvents(JobId),
    /// `jobs/{jid}/csr`: CSR bundle.
    JobCsr(JobId),
    /// `jobs/{jid}/certs`: certificate response.
    JobCerts(JobId),
    /// `jobs/{jid}/cancel`: cancellation.
    JobCancel(JobId),
    /// `acks`: event acknowledgements.
    Acks,
    /// `inventory`: slot table (retained).
    Inventory,
    /// `receipts`: signed production receipts.
    Receipts,
}

impl Topic {
    /// Who publishes on this topic.
    pub fn direction(&self) -> Direction {
        match self {
            Topic::Presence
            | Topic::JobEvents(_)
            | Topic::JobCsr(_)
            | Topic::Inventory
            | Topic::Receipts => Direction::FromStation,
            Topic::Jobs | Topic::JobCerts(_) | Topic::JobCancel(_) | Topic::Acks => {
                Direction::ToStation
            }
        }
    }

    /// Whether messages on this topic are published retained.
    pub fn retained(&self) -> bool {
        matches!(self, Topic::Presence | Topic::Inventory)
    }

    /// The job the topic belongs to, if any.
    pub fn job_id(&self) -> Option<&JobId> {
        match self {
            Topic::JobEvents(j) | Topic::JobCsr(j) | Topic::JobCerts(j) | Topic::JobCancel(j) => {
                Some(j)
            }
            _ => None,
        }
    }

    fn suffix(&self) -> String {
        match self {
            Topic::Presence => "presence".to_owned(),
            Topic::Jobs => "jobs".to_owned(),
            Topic::JobEvents(j) => format!("jobs/{j}/events"),
            Topic::JobCsr(j) => format!("jobs/{j}/csr"),
            Topic::JobCerts(j) => format!("jobs/{j}/certs"),
            Topic::JobCancel(j) => format!("jobs/{j}/cancel"),
            Topic::Acks => "acks".to_owned(),
            Topic::Inventory => "inventory".to_owned(),
            Topic::Receipts => "receipts".to_owned(),
        }
    }
}

fn topic_error(topic: &str, problem: TopicProblem) -> ProtocolError {
    ProtocolError::Topic {
        topic: topic.chars().take(256).collect(),
        problem,
    }
}

/// Checks a concrete topic name (or prefix): no wildcards, no empty levels, no NUL, no `$`.
fn check_name(topic: &str) -> Result<(), ProtocolError> {
    if topic.contains(['+', '#']) {
        return Err(topic_error(topic, TopicProblem::Wildcard));
    }
    if topic.starts_with('$') || topic.contains('\0') {
        return Err(topic_error(topic, TopicProblem::ForbiddenCharacter));
    }
    if topic.split('/').any(str::is_empty) {
        return Err(topic_error(topic, TopicProblem::EmptyLevel));
    }
    Ok(())
}

/// Splits `{prefix}/stations/{sid}/{rest}` into the station and the parsed rest.
fn parse_under(prefix: &str, topic: &str) -> Result<(StationId, Topic), ProtocolError> {
    check_name(topic)?;
    let rest = topic
        .strip_prefix(prefix)
        .and_then(|r| r.strip_prefix("/stations/"))
        .ok_or_else(|| topic_error(topic, TopicProblem::WrongPrefix))?;
    let mut levels = rest.split('/');
    let station = levels.next().unwrap_or_default();
    let station = StationId::new(station).map_err(|_| {
        topic_error(
            topic,
            TopicProblem::BadId {
                level: "station id",
            },
        )
    })?;
    let levels: Vec<&str> = levels.collect();
    let job = |j: &str| {
        JobId::new(j).map_err(|_| topic_error(topic, TopicProblem::BadId { level: "job id" }))
    };
    let parsed = match levels.as_slice() {
        ["presence"] => Topic::Presence,
        ["jobs"] => Topic::Jobs,
        ["acks"] => Topic::Acks,
        ["inventory"] => Topic::Inventory,
        ["receipts"] => Topic::Receipts,
        ["jobs", j, "events"] => Topic::JobEvents(job(j)?),
        ["jobs", j, "csr"] => Topic::JobCsr(job(j)?),
        ["jobs", j, "certs"] => Topic::JobCerts(job(j)?),
        ["jobs", j, "cancel"] => Topic::JobCancel(job(j)?),
        _ => return Err(topic_error(topic, TopicProblem::Unknown)),
    };
    Ok((station, parsed))
}

/// The topics of one station under one prefix.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Topics {
    prefix: String,
    station: StationId,
    base: String,
}

impl Topics {
    /// Topics for `station` under `prefix` (e.g. [`DEFAULT_PREFIX`]). The prefix must be a
    /// concrete topic: no wildcards, no empty levels, not starting with `$`.
    pub fn new(prefix: &str, station: &StationId) -> Result<Topics, ProtocolError> {
        check_name(prefix)?;
        station.check("station_id")?;
        Ok(Topics {
            prefix: prefix.to_owned(),
            station: station.clone(),
            base: format!("{prefix}/stations/{station}"),
        })
    }

    /// The station these topics belong to.
    pub fn station(&self) -> &StationId {
        &self.station
    }

    /// The prefix.
    pub fn prefix(&self) -> &str {
        &self.prefix
    }

    /// The full topic name of `topic`.
    pub fn topic(&self, topic: &Topic) -> String {
        format!("{}/{}", self.base, topic.suffix())
    }

    /// `{p}/stations/{sid}/presence`
    pub fn presence(&self) -> String {
        self.topic(&Topic::Presence)
    }

    /// `{p}/stations/{sid}/jobs`
    pub fn jobs(&self) -> String {
        self.topic(&Topic::Jobs)
    }

    /// `{p}/stations/{sid}/jobs/{jid}/events`
    pub fn job_events(&self, job: &JobId) -> String {
        self.topic(&Topic::JobEvents(job.clone()))
    }

    /// `{p}/stations/{sid}/jobs/{jid}/csr`
    pub fn job_csr(&self, job: &JobId) -> String {
        self.topic(&Topic::JobCsr(job.clone()))
    }

    /// `{p}/stations/{sid}/jobs/{jid}/certs`
    pub fn job_certs(&self, job: &JobId) -> String {
        self.topic(&Topic::JobCerts(job.clone()))
    }

    /// `{p}/stations/{sid}/jobs/{jid}/cancel`
    pub fn job_cancel(&self, job: &JobId) -> String {
        self.topic(&Topic::JobCancel(job.clone()))
    }

    /// `{p}/stations/{sid}/acks`
    pub fn acks(&self) -> String {
        self.topic(&Topic::Acks)
    }

    /// `{p}/stations/{sid}/inventory`
    pub fn inventory(&self) -> String {
        self.topic(&Topic::Inventory)
    }

    /// `{p}/stations/{sid}/receipts`.
    pub fn receipts(&self) -> String {
        self.topic(&Topic::Receipts)
    }

    /// The filters the station subscribes to (QoS 1): its jobs, certificate responses,
    /// cancellations and acks.
    pub fn station_subscriptions(&self) -> Vec<String> {
        vec![
            self.jobs(),
            format!("{}/jobs/+/certs", self.base),
            format!("{}/jobs/+/cancel", self.base),
            self.acks(),
        ]
    }

    /// Parses an incoming topic of this station. Another station's topic, wildcards, empty
    /// levels and bad ids are refused.
    pub fn parse(&self, topic: &str) -> Result<Topic, ProtocolError> {
        let (station, parsed) = parse_under(&self.prefix, topic)?;
        if station != self.station {
            return Err(topic_error(
                topic,
                TopicProblem::ForeignStation {
                    station: station.to_string(),
                },
            ));
        }
        Ok(parsed)
    }
}

/// The filters the platform subscribes to under `prefix`: every station's presence, events,
/// CSR bundles and inventory.
pub fn platform_subscriptions(prefix: &str) -> Vec<String> {
    vec![
        format!("{prefix}/stations/+/presence"),
        format!("{prefix}/stations/+/jobs/+/events"),
        format!("{prefix}/stations/+/jobs/+/csr"),
        format!("{prefix}/stations/+/inventory"),
        format!("{prefix}/stations/+/receipts"),
    ]
}

/// Parses a topic of any station under `prefix` (the platform's view).
pub fn parse_any_station(prefix: &str, topic: &str) -> Result<(StationId, Topic), ProtocolError> {
    parse_under(prefix, topic)
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used)]
    use super::*;

    fn topics() -> Topics {
        Topics::new(DEFAULT_PREFIX, &StationId::new("desk-01").unwrap()).unwrap()
    }

    fn problem(e: ProtocolError) -> TopicProblem {
        match e {
            ProtocolError::Topic { problem, .. } => problem,
            other => panic!("not a topic error: {other}"),
        }
    }

    #[test]
    fn builds_every_topic_of_the_design() {
        let t = topics();
        let j = JobId::new("J-1").unwrap();
        assert_eq!(t.presence(), "ukey/v1/stations/desk-01/presence");
        assert_eq!(t.jobs(), "ukey/v1/stations/desk-01/jobs");
        assert_eq!(t.job_events(&j), "ukey/v1/stations/desk-01/jobs/J-1/events");
        assert_eq!(t.job_csr(&j), "ukey/v1/stations/desk-01/jobs/J-1/csr");
        assert_eq!(t.job_certs(&j), "ukey/v1/stations/desk-01/jobs/J-1/certs");
        assert_eq!(t.job_cancel(&j), "ukey/v1/stations/desk-01/jobs/J-1/cancel");
        assert_eq!(t.acks(), "ukey/v1/stations/desk-01/acks");
        assert_eq!(t.inventory(), "ukey/v1/stations/desk-01/inventory");
        assert_eq!(t.receipts(), "ukey/v1/stations/desk-01/receipts");
        assert_eq!(t.parse(&t.receipts()).unwrap(), Topic::Receipts);
        assert_eq!(Topic::Receipts.direction(), Direction::FromStation);
        assert!(!Topic::Receipts.retained());
    }

    #[test]
    fn parse_round_trips() {
        let t = topics();
        let j = JobId::new("J-1").unwrap();
        for topic in [
            Topic::Presence,
            Topic::Jobs,
            Topic::JobEvents(j.clone()),
            Topic::JobCsr(j.clone()),
            Topic::JobCerts(j.clone()),
            Topic::JobCancel(j.clone()),
            Topic::Acks,
            Topic::Inventory,
        ] {
            assert_eq!(t.parse(&t.topic(&topic)).unwrap(), topic);
            let (station, parsed) = parse_any_station(DEFAULT_PREFIX, &t.topic(&topic)).unwrap();
            assert_eq!((station.as_str(), parsed), ("desk-01", topic));
        }
    }

    #[test]
    fn refuses_what_it_must() {
        let t = topics();
        let cases = [
            ("ukey/v1/stations/desk-02/jobs", "foreign"),
            ("ukey/v1/stations/+/jobs", "wildcard"),
            ("ukey/v1/stations/desk-01/#", "wildcard"),
            ("ukey/v1/stations/desk-01//jobs", "empty"),
            ("ukey/v1/stations/desk-01/jobs/", "empty"),
            ("other/stations/desk-01/jobs", "prefix"),
            ("ukey/v1/stations/desk-01/jobs/.x/certs", "bad id"),
            ("ukey/v1/stations/desk-01/jobs/J-1/unknown", "unknown"),
            ("ukey/v1/stations/desk-01/jobs/J-1/certs/extra", "unknown"),
            ("$SYS/ukey/v1/stations/desk-01/jobs", "forbidden"),
        ];
        for (topic, want) in cases {
            let p = problem(t.parse(topic).unwrap_err());
            let ok = match want {
                "foreign" => matches!(p, TopicProblem::ForeignStation { .. }),
                "wildcard" => p == TopicProblem::Wildcard,
                "empty" => p == TopicProblem::EmptyLevel,
                "prefix" => p == TopicProblem::WrongPrefix,
                "bad id" => matches!(p, TopicProblem::BadId { .. }),
                "unknown" => p == TopicProblem::Unknown,
                "forbidden" => p == TopicProblem::ForbiddenCharacter,
                _ => false,
            };
            assert!(ok, "{topic}: got {p:?}, wanted {want}");
        }
    }

    #[test]
    fn prefix_is_configurable_and_checked() {
        let s = StationId::new("s1").unwrap();
        let t = Topics::new("acme/ukey", &s).unwrap();
        assert_eq!(t.jobs(), "acme/ukey/stations/s1/jobs");
        assert!(Topics::new("acme/+", &s).is_err());
        assert!(Topics::new("acme/", &s).is_err());
        assert!(Topics::new("", &s).is_err());
    }

    #[test]
    fn subscriptions_cover_inbound_topics() {
        let t = topics();
        let subs = t.station_subscriptions();
        assert!(subs.contains(&"ukey/v1/stations/desk-01/jobs/+/certs".to_owned()));
        assert!(subs.contains(&t.acks()));
        let platform = platform_subscriptions("ukey/v1");
        assert_eq!(platform.len(), 5);
        assert!(platform.contains(&"ukey/v1/stations/+/receipts".to_owned()));
        assert_eq!(Topic::Jobs.direction(), Direction::ToStation);
        assert!(Topic::Inventory.retained());
        assert!(!Topic::Jobs.retained());
    }
}
