//! Unit tests of the claim matcher, the PIN length bounds and the wrong-token rule: seats and
//! queues made by hand, no token and no broker.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::collections::{BTreeMap, BTreeSet, VecDeque};
use std::path::PathBuf;

use ukey_protocol::event::ExecutionState;
use ukey_protocol::ids::{JobId, TokenSerial};
use ukey_protocol::inventory::TokenState;

use super::{DeskView, Match, match_claims, pin_bounds, wrong_token};
use crate::config::ModelConfig;
use crate::daemon::jobs::Waiting;
use crate::daemon::seats::Seat;
use crate::desk::TokenKey;
use crate::token::{PresentToken, TokenFlags};

fn id(s: &str) -> JobId {
    JobId::new(s).unwrap()
}

fn serial(s: &str) -> TokenSerial {
    TokenSerial::new(s).unwrap()
}

fn present(slot: u64, serial: &str, initialized: bool) -> PresentToken {
    PresentToken {
        slot,
        serial: serial.into(),
        label: String::new(),
        model: "m".into(),
        manufacturer: String::new(),
        flags: TokenFlags {
            initialized,
            ..TokenFlags::default()
        },
        min_pin_len: 6,
        max_pin_len: 16,
        slot_description: String::new(),
    }
}

/// A free blank token with a serial (as hsm-sim and real Ukeys have).
fn blank(serial: &str) -> (TokenKey, Seat) {
    (
        TokenKey::Serial(serial.into()),
        Seat::new(0, present(1, serial, false), TokenState::Blank),
    )
}

/// A free initialized token (one a targeted job may name).
fn initialized(serial: &str, state: TokenState) -> (TokenKey, Seat) {
    (
        TokenKey::Serial(serial.into()),
        Seat::new(0, present(2, serial, true), state),
    )
}

fn untargeted(job: &str) -> Waiting {
    Waiting {
        job: id(job),
        target: None,
    }
}

fn targeted(job: &str, target: &str) -> Waiting {
    Waiting {
        job: id(job),
        target: Some(serial(target)),
    }
}

fn claims(queue: Vec<Waiting>, seats: Vec<(TokenKey, Seat)>, revoked: &[&str]) -> Vec<Match> {
    let queue: VecDeque<Waiting> = queue.into();
    let seats: BTreeMap<TokenKey, Seat> = seats.into_iter().collect();
    let revoked: BTreeSet<String> = revoked.iter().map(|s| (*s).to_owned()).collect();
    match_claims(&queue, &seats, &revoked, |_| true)
}

fn claim(job: &str, serial: &str) -> Match {
    Match::Claim(id(job), TokenKey::Serial(serial.into()))
}

#[test]
fn blank_tokens_take_the_oldest_untargeted_jobs_in_seat_order() {
    let got = claims(
        vec![untargeted("j1"), untargeted("j2"), untargeted("j3")],
        vec![blank("B2"), blank("B1")],
        &[],
    );
    assert_eq!(got, vec![claim("j1", "B1"), claim("j2", "B2")]);
}

#[test]
fn a_targeted_job_takes_only_the_token_it_names() {
    let got = claims(
        vec![targeted("renew", "T2"), untargeted("new")],
        vec![
            initialized("T1", TokenState::Active),
            initialized("T2", TokenState::Active),
            blank("B1"),
        ],
        &[],
    );
    assert_eq!(got, vec![claim("renew", "T2"), claim("new", "B1")]);
}

#[test]
fn a_job_waiting_for_its_token_does_not_hold_up_the_jobs_behind_it() {
    let got = claims(
        vec![targeted("renew", "ABSENT"), untargeted("new")],
        vec![blank("B1")],
        &[],
    );
    assert_eq!(got, vec![claim("new", "B1")]);
}

#[test]
fn a_targeted_job_does_not_take_a_busy_damaged_blank_or_revoked_token() {
    let (key, mut busy) = initialized("T1", TokenState::InProduction);
    busy.job = Some(id("other"));
    let cases = vec![
        (key, busy),
        initialized("T2", TokenState::Damaged),
        (
            TokenKey::Serial("T3".into()),
            Seat::new(0, present(3, "T3", false), TokenState::Blank),
        ),
        initialized("T4", TokenState::Active),
    ];
    let got = claims(
        vec![
            targeted("j1", "T1"),
            targeted("j2", "T2"),
            targeted("j3", "T3"),
            targeted("j4", "T4"),
        ],
        cases,
        &["T4"],
    );
    assert_eq!(got, vec![]);
}

#[test]
fn two_jobs_naming_one_token_take_it_once() {
    let got = claims(
        vec![targeted("j1", "T1"), targeted("j2", "T1")],
        vec![initialized("T1", TokenState::Active)],
        &[],
    );
    assert_eq!(got, vec![claim("j1", "T1")]);
}

#[test]
fn a_revoked_or_busy_blank_token_takes_no_job() {
    let (key, mut busy) = blank("B2");
    busy.job = Some(id("other"));
    let got = claims(
        vec![untargeted("j1"), untargeted("j2")],
        vec![blank("B1"), (key, busy), blank("B3")],
        &["B1"],
    );
    assert_eq!(got, vec![claim("j1", "B3")]);
}

#[test]
fn a_job_no_longer_in_the_table_leaves_the_queue() {
    let queue: VecDeque<Waiting> = vec![untargeted("gone"), untargeted("j1")].into();
    let seats: BTreeMap<TokenKey, Seat> = [blank("B1")].into_iter().collect();
    let got = match_claims(&queue, &seats, &BTreeSet::new(), |j| j.as_str() != "gone");
    assert_eq!(got, vec![Match::Stale(id("gone")), claim("j1", "B1")]);
}

#[test]
fn nothing_is_matched_when_no_token_is_free() {
    let (key, mut busy) = blank("B1");
    busy.job = Some(id("other"));
    let got = claims(vec![untargeted("j1")], vec![(key, busy)], &[]);
    assert_eq!(got, vec![]);
}

fn model(pin_min: usize, pin_max: usize) -> ModelConfig {
    ModelConfig {
        name: "m".into(),
        vendor_id: 1,
        product_id: 2,
        module: PathBuf::from("m.so"),
        pin_min,
        pin_max,
        interface: crate::device::Interface::Pkcs11,
    }
}

#[test]
fn pin_bounds_are_the_tokens_narrowed_by_the_models_policy() {
    // Without a model (USB did not say which), the token's own bounds.
    assert_eq!(pin_bounds(4, 32, None), (4, 32));
    // The model narrows both ends.
    assert_eq!(pin_bounds(4, 32, Some(&model(8, 12))), (8, 12));
    // The token's tighter bounds stay.
    assert_eq!(pin_bounds(10, 11, Some(&model(8, 12))), (10, 11));
    // A token that reports no maximum (0) takes the model's.
    assert_eq!(pin_bounds(6, 0, Some(&model(8, 20))), (8, 20));
}

fn view<'a>(
    first: Option<(&'a JobId, &'a TokenSerial)>,
    targets: &[&'a str],
    unconfirmed: &[&'a str],
) -> DeskView<'a> {
    DeskView {
        first_waiting: first,
        targets: targets.iter().copied().collect(),
        unconfirmed: unconfirmed.iter().copied().collect(),
    }
}

#[test]
fn a_free_initialized_token_nobody_waits_for_is_the_wrong_token() {
    let job = id("renew");
    let wanted = serial("T1");
    let (_, seat) = initialized("OTHER", TokenState::Active);
    let got = wrong_token(&seat, &view(Some((&job, &wanted)), &["T1"], &[]));
    assert_eq!(got, Some((job.clone(), wanted.clone())));

    // The token a queued job names, even a later one, is not wrong.
    let (_, named) = initialized("T9", TokenState::Active);
    assert_eq!(
        wrong_token(&named, &view(Some((&job, &wanted)), &["T1", "T9"], &[])),
        None
    );
    // Nothing waits for a token: nothing is wrong.
    assert_eq!(wrong_token(&seat, &view(None, &[], &[])), None);
}

#[test]
fn busy_blank_finished_or_unconfirmed_tokens_are_never_the_wrong_token() {
    let job = id("renew");
    let wanted = serial("T1");
    let v = view(Some((&job, &wanted)), &["T1"], &["DONE"]);
    let (_, mut busy) = initialized("X1", TokenState::InProduction);
    busy.job = Some(id("other"));
    assert_eq!(wrong_token(&busy, &v), None);
    let (_, blank_seat) = blank("X2");
    assert_eq!(wrong_token(&blank_seat, &v), None);
    let (_, mut finished) = initialized("X3", TokenState::Active);
    finished.outcome = Some(ExecutionState::Succeeded);
    assert_eq!(wrong_token(&finished, &v), None);
    let (_, unconfirmed) = initialized("DONE", TokenState::Active);
    assert_eq!(wrong_token(&unconfirmed, &v), None);
}
