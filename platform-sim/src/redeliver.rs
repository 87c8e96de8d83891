//! What the platform still owes a station, and therefore sends again: the platform's half of
//! end-to-end at-least-once delivery (docs/PROTOCOL.md, "Redelivery").
//!
//! A broker that loses a station's session (Mosquitto killed without persistence, a failover
//! to a broker without the session) drops every message published to the station while it
//! is away, and says PUBACK for it anyway. The station cannot ask for what it never heard
//! of, so the platform keeps what it sent until the station's own events show it arrived,
//! and publishes it again, byte for byte the same signed message, when the station's
//! presence birth says it is (re)connected and on a timer:
//!
//! - a **job** until any event of that job arrived (`queued` or `rejected` first);
//! - a **certificate response** until an event of a step after `request-certificates`, or
//!   a terminal event, arrived;
//! - a **cancel** until a terminal event arrived.
//!
//! Only honest messages are owed: a forged or unsigned one that a misbehaviour sent is
//! never repeated. Pure: it reads the records and returns what to publish; the client
//! publishes it.

use ukey_protocol::{JobId, StationId, Step};

use super::records::{JobRecord, Records};

/// One message to publish again.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Owed {
    /// The job's signed envelope, on the station's `jobs` topic.
    Job {
        station: StationId,
        job_id: JobId,
        payload: Vec<u8>,
    },
    /// The signed certificate response, on `jobs/{jid}/certs`.
    Certs {
        station: StationId,
        job_id: JobId,
        payload: Vec<u8>,
    },
    /// The signed cancel, on `jobs/{jid}/cancel`.
    Cancel {
        station: StationId,
        job_id: JobId,
        payload: Vec<u8>,
    },
}

impl Owed {
    /// The job the message is about.
    pub(crate) fn job_id(&self) -> &JobId {
        match self {
            Owed::Job { job_id, .. } | Owed::Certs { job_id, .. } | Owed::Cancel { job_id, .. } => {
                job_id
            }
        }
    }
}

/// Everything owed to `station` (to every station when `None`), in dispatch order of the
/// jobs, then by job id for jobs the platform did not dispatch.
pub(crate) fn owed(records: &Records, station: Option<&StationId>) -> Vec<Owed> {
    let mut out = Vec::new();
    let in_order = records
        .dispatched()
        .iter()
        .filter_map(|id| records.job(id))
        .chain(
            records
                .jobs()
                .filter(|j| !records.dispatched().contains(j.job_id())),
        );
    for job in in_order {
        let Some(to) = job.station_id() else {
            continue;
        };
        if station.is_some_and(|s| s != to) {
            continue;
        }
        owed_by_job(job, to, &mut out);
    }
    out
}

fn owed_by_job(job: &JobRecord, station: &StationId, out: &mut Vec<Owed>) {
    let ended = job.events().iter().any(|e| e.state.is_terminal());
    if let Some(payload) = &job.job_payload
        && job.events().is_empty()
    {
        out.push(Owed::Job {
            station: station.clone(),
            job_id: job.job_id().clone(),
            payload: payload.clone(),
        });
    }
    if let Some(payload) = &job.cert_payload
        && !ended
        && !past_certificates(job)
    {
        out.push(Owed::Certs {
            station: station.clone(),
            job_id: job.job_id().clone(),
            payload: payload.clone(),
        });
    }
    if let Some(payload) = &job.cancel_payload
        && !ended
    {
        out.push(Owed::Cancel {
            station: station.clone(),
            job_id: job.job_id().clone(),
            payload: payload.clone(),
        });
    }
}

/// Whether an event of a step after `request-certificates` arrived: the station had the
/// certificates.
fn past_certificates(job: &JobRecord) -> bool {
    let Some(doc) = job.document() else {
        // A job this platform did not make gets a rejection, owed until the job ends.
        return false;
    };
    let plan = doc.kind.plan(doc.rekey);
    let Some(request) = plan.iter().position(|s| *s == Step::RequestCertificates) else {
        return true;
    };
    job.events().iter().any(|e| {
        plan.iter()
            .position(|s| *s == e.step)
            .is_some_and(|at| at > request)
    })
}

#[cfg(test)]
mod tests;
