//! Unit tests of the journal: appends, replay, torn and damaged files, the lock.

use super::*;
use serde::Deserialize;

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
struct Rec {
    job: String,
    step: u32,
}

fn rec(step: u32) -> Rec {
    Rec {
        job: format!("job-{step}"),
        step,
    }
}

fn file_len(path: &Path) -> u64 {
    std::fs::metadata(path).unwrap().len()
}

#[test]
fn the_file_grows_by_zeroed_chunks_and_their_room_survives_a_reopen() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("jobs.journal");
    let mut j = Journal::<Rec>::open(&path).unwrap();
    j.append(&rec(0)).unwrap();
    assert_eq!(
        file_len(&path),
        GROWTH,
        "one chunk, written with the first record"
    );
    let mut i = 1;
    while j.content_len() + 60 < GROWTH {
        j.append_unsynced(&rec(i)).unwrap();
        assert_eq!(file_len(&path), GROWTH, "no size change within the chunk");
        i += 1;
    }
    assert_eq!(content_of(&path).len() as u64, j.content_len());
    drop(j);
    // Reopened: the zeros are room, not a torn tail; appends go after the records.
    let mut j = Journal::<Rec>::open(&path).unwrap();
    assert_eq!(file_len(&path), GROWTH);
    j.append_all(&[rec(i), rec(i + 1), rec(i + 2)]).unwrap();
    assert_eq!(
        file_len(&path),
        2 * GROWTH,
        "the next chunk, with the records past it"
    );
    assert_eq!(content_of(&path).len() as u64, j.content_len());
    drop(j);
    let j = Journal::<Rec>::open(&path).unwrap();
    assert_eq!(j.replay().unwrap(), (0..i + 3).map(rec).collect::<Vec<_>>());
}

#[test]
fn to_hex_is_lower_case_hex() {
    let bytes: Vec<u8> = (0..=255).collect();
    assert_eq!(to_hex(&bytes), hex::encode(&bytes));
    assert_eq!(to_hex(&[0xab, 0x01]), "ab01");
    assert_eq!(to_hex(&[]), "");
}

#[test]
fn appended_records_replay_in_order_after_reopen() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("jobs.journal");
    {
        let mut j = Journal::<Rec>::open(&path).unwrap();
        assert!(j.replay().unwrap().is_empty());
        for i in 0..5 {
            j.append(&rec(i)).unwrap();
        }
        assert_eq!(j.record_count(), 5);
    }
    let j = Journal::<Rec>::open(&path).unwrap();
    assert_eq!(j.replay().unwrap(), (0..5).map(rec).collect::<Vec<_>>());
}

#[test]
fn a_second_open_of_the_same_file_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("jobs.journal");
    let _first = Journal::<Rec>::open(&path).unwrap();
    let second = Journal::<Rec>::open(&path);
    assert!(
        matches!(second, Err(StoreError::Locked { .. })),
        "{second:?}"
    );
}

#[test]
fn every_torn_tail_is_cut_off_and_appending_continues() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("jobs.journal");
    {
        let mut j = Journal::<Rec>::open(&path).unwrap();
        j.append(&rec(0)).unwrap();
        j.append(&rec(1)).unwrap();
    }
    let good = content_of(&path);
    let one = frame(&serde_json::to_vec(&rec(2)).unwrap(), good.len() as u64).unwrap();
    // A crash can stop an append after any number of bytes.
    for cut in 1..one.len() {
        std::fs::write(&path, [&good[..], &one[..cut]].concat()).unwrap();
        let mut j = Journal::<Rec>::open(&path).unwrap();
        assert_eq!(file_len(&path), good.len() as u64, "cut at {cut}");
        assert_eq!(j.replay().unwrap(), vec![rec(0), rec(1)]);
        j.append(&rec(3)).unwrap();
        drop(j);
        let j = Journal::<Rec>::open(&path).unwrap();
        assert_eq!(j.replay().unwrap(), vec![rec(0), rec(1), rec(3)]);
    }
}

#[test]
fn a_batch_torn_anywhere_keeps_a_prefix_of_its_records() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("jobs.journal");
    {
        let mut j = Journal::<Rec>::open(&path).unwrap();
        j.append(&rec(0)).unwrap();
        j.append_all(&[rec(1), rec(2)]).unwrap();
        j.append_unsynced(&rec(3)).unwrap();
        assert_eq!(j.record_count(), 4);
    }
    let whole = std::fs::read(&path).unwrap();
    let first = frame(&serde_json::to_vec(&rec(0)).unwrap(), 0)
        .unwrap()
        .len();
    let second = frame(&serde_json::to_vec(&rec(1)).unwrap(), 0)
        .unwrap()
        .len();
    let batch_end = first
        + second
        + frame(&serde_json::to_vec(&rec(2)).unwrap(), 0)
            .unwrap()
            .len();
    for cut in first..=batch_end {
        std::fs::write(&path, &whole[..cut]).unwrap();
        let j = Journal::<Rec>::open(&path).unwrap();
        let expected: Vec<Rec> = match cut {
            c if c < first + second => vec![rec(0)],
            c if c < batch_end => vec![rec(0), rec(1)],
            _ => vec![rec(0), rec(1), rec(2)],
        };
        assert_eq!(j.replay().unwrap(), expected, "cut at {cut}");
    }
    std::fs::write(&path, &whole).unwrap();
    let j = Journal::<Rec>::open(&path).unwrap();
    assert_eq!(j.replay().unwrap(), (0..4).map(rec).collect::<Vec<_>>());
}

#[test]
fn a_tail_of_garbage_is_a_torn_write_and_one_of_zeros_is_room() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("jobs.journal");
    {
        let mut j = Journal::<Rec>::open(&path).unwrap();
        j.append(&rec(0)).unwrap();
    }
    let good = content_of(&path);
    for (tail, kept) in [
        (vec![0u8; 4096], 4096),
        (b"UKR1\xff\xff\xff\xff garbage".to_vec(), 0),
        ([&b"UKR1\xff"[..], &[0u8; 100]].concat(), 0),
    ] {
        std::fs::write(&path, [&good[..], &tail[..]].concat()).unwrap();
        let mut j = Journal::<Rec>::open(&path).unwrap();
        assert_eq!(j.replay().unwrap(), vec![rec(0)]);
        assert_eq!(file_len(&path), (good.len() + kept) as u64);
        j.append(&rec(1)).unwrap();
        drop(j);
        let j = Journal::<Rec>::open(&path).unwrap();
        assert_eq!(j.replay().unwrap(), vec![rec(0), rec(1)]);
    }
}

#[test]
fn damage_in_the_middle_is_an_error_not_a_silent_loss() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("jobs.journal");
    {
        let mut j = Journal::<Rec>::open(&path).unwrap();
        for i in 0..3 {
            j.append(&rec(i)).unwrap();
        }
    }
    let mut bytes = std::fs::read(&path).unwrap();
    // Flip a payload byte of the first record.
    bytes[HEADER_LEN + 2] ^= 0x20;
    std::fs::write(&path, &bytes).unwrap();
    let err = Journal::<Rec>::open(&path).unwrap_err();
    // The commit marker says all three were fsync'd.
    assert!(
        matches!(
            err,
            StoreError::Damaged {
                offset: 0,
                record: 1,
                ..
            }
        ),
        "{err:?}"
    );
    // The file is left as it was for an operator to look at.
    assert_eq!(std::fs::read(&path).unwrap(), bytes);

    // Without the marker (it never reached the disk), good records after the bad one still
    // make it damage.
    let records_only = scan(&bytes).err().map(|e| e.offset).unwrap();
    assert_eq!(records_only, 0);
    let mut unmarked = bytes.clone();
    let marker_at_end = unmarked
        .windows(4)
        .rposition(|w| w == MARKER_MAGIC)
        .unwrap();
    unmarked[marker_at_end..].fill(0);
    std::fs::write(&path, &unmarked).unwrap();
    let err = Journal::<Rec>::open(&path).unwrap_err();
    assert!(
        matches!(err, StoreError::Corrupt { offset: 0, .. }),
        "{err:?}"
    );
}

#[test]
fn a_flipped_bit_in_the_last_synced_record_refuses_to_open_and_says_what_to_do() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("jobs.journal");
    {
        let mut j = Journal::<Rec>::open(&path).unwrap();
        for i in 0..3 {
            j.append(&rec(i)).unwrap();
        }
    }
    let content = content_of(&path);
    let last = content.len()
        - frame(&serde_json::to_vec(&rec(2)).unwrap(), 0)
            .unwrap()
            .len();
    for at in [last, last + 5, last + HEADER_LEN + 3, content.len() - 1] {
        let mut bytes = std::fs::read(&path).unwrap();
        let original = bytes.clone();
        bytes[at] ^= 0x04;
        std::fs::write(&path, &bytes).unwrap();
        let err = Journal::<Rec>::open(&path).unwrap_err();
        assert!(
            matches!(&err, StoreError::Damaged { offset, record: 3, .. } if *offset == last as u64),
            "flip at {at}: {err:?}"
        );
        let message = err.to_string();
        for needed in [
            path.display().to_string(),
            format!("record 3 at byte {last}"),
            "acknowledged".to_string(),
            "backup".to_string(),
            "ukey-agent journal accept-loss".to_string(),
        ] {
            assert!(
                message.contains(&needed),
                "{needed:?} missing from: {message}"
            );
        }
        assert_eq!(
            std::fs::read(&path).unwrap(),
            bytes,
            "the file is left alone"
        );
        std::fs::write(&path, &original).unwrap();
    }
    let j = Journal::<Rec>::open(&path).unwrap();
    assert_eq!(j.replay().unwrap(), vec![rec(0), rec(1), rec(2)]);

    // The documented way out: refused while the journal is open, then a copy and a cut.
    assert!(matches!(accept_loss(&path), Err(StoreError::Locked { .. })));
    drop(j);
    assert_eq!(
        accept_loss(&path).unwrap(),
        AcceptedLoss {
            kept_records: 3,
            dropped_bytes: 0,
            copy: None
        },
        "an undamaged file is left alone"
    );
    let mut bytes = std::fs::read(&path).unwrap();
    bytes[last + 7] ^= 0x80;
    std::fs::write(&path, &bytes).unwrap();
    let accepted = accept_loss(&path).unwrap();
    assert_eq!(accepted.kept_records, 2);
    assert_eq!(accepted.dropped_bytes, (bytes.len() - last) as u64);
    assert_eq!(std::fs::read(accepted.copy.unwrap()).unwrap(), bytes);
    let mut j = Journal::<Rec>::open(&path).unwrap();
    assert_eq!(j.replay().unwrap(), vec![rec(0), rec(1)]);
    j.append(&rec(5)).unwrap();
    drop(j);
    let j = Journal::<Rec>::open(&path).unwrap();
    assert_eq!(j.replay().unwrap(), vec![rec(0), rec(1), rec(5)]);
}

#[test]
fn a_damaged_unsynced_last_record_is_a_torn_tail() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("jobs.journal");
    {
        let mut j = Journal::<Rec>::open(&path).unwrap();
        j.append(&rec(0)).unwrap();
        j.append(&rec(1)).unwrap();
        j.append_unsynced(&rec(2)).unwrap();
    }
    let whole = std::fs::read(&path).unwrap();
    let content = content_of(&path);
    let last = content.len()
        - frame(&serde_json::to_vec(&rec(2)).unwrap(), 0)
            .unwrap()
            .len();
    // The unsynced write cut anywhere, or one of its bits flipped: never acknowledged, so it
    // is dropped as today, and the agent starts.
    let mut damaged: Vec<Vec<u8>> = (last + 1..content.len())
        .map(|cut| whole[..cut].to_vec())
        .collect();
    for at in [last, last + HEADER_LEN + 1, content.len() - 1] {
        let mut bytes = whole.clone();
        bytes[at] ^= 0x01;
        damaged.push(bytes);
    }
    for bytes in damaged {
        std::fs::write(&path, &bytes).unwrap();
        let mut j = Journal::<Rec>::open(&path).unwrap();
        assert_eq!(j.replay().unwrap(), vec![rec(0), rec(1)]);
        j.append(&rec(3)).unwrap();
        drop(j);
        let j = Journal::<Rec>::open(&path).unwrap();
        assert_eq!(j.replay().unwrap(), vec![rec(0), rec(1), rec(3)]);
    }
}

#[test]
fn a_page_written_twice_never_replays_a_record_twice() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("jobs.journal");
    // Records of 64 bytes: every page starts on a record boundary, so a copy of page 0 over
    // page 1 puts whole, well-formed records where the scan expects the next one.
    let sized = |step: u32| {
        let mut r = Rec {
            job: String::new(),
            step,
        };
        while frame(&serde_json::to_vec(&r).unwrap(), 0).unwrap().len() < 64 {
            r.job.push('j');
        }
        assert_eq!(
            frame(&serde_json::to_vec(&r).unwrap(), 0).unwrap().len(),
            64
        );
        r
    };
    let records: Vec<Rec> = (1000..1200).map(sized).collect();
    {
        let mut j = Journal::<Rec>::open(&path).unwrap();
        // Unsynced, so that no commit marker vouches for the records: the framing alone must
        // catch the copy.
        j.append_all_unsynced(&records).unwrap();
    }
    let mut bytes = std::fs::read(&path).unwrap();
    let first_page = bytes[..PAGE].to_vec();
    bytes[PAGE..2 * PAGE].copy_from_slice(&first_page);
    std::fs::write(&path, &bytes).unwrap();
    match Journal::<Rec>::open(&path).and_then(|j| j.replay()) {
        Ok(got) => assert_eq!(got, records[..got.len()], "a prefix, no repeated record"),
        Err(e) => assert!(
            matches!(e, StoreError::Corrupt { offset, .. } if offset == PAGE as u64),
            "{e:?}"
        ),
    }
}

#[test]
fn files_of_the_old_record_format_still_open() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("jobs.journal");
    let mut old = Vec::new();
    for i in 0..3 {
        let payload = serde_json::to_vec(&rec(i)).unwrap();
        let len = payload.len() as u32;
        old.extend_from_slice(&MAGIC_V1);
        old.extend_from_slice(&len.to_le_bytes());
        old.extend_from_slice(&checksum(None, len, &payload));
        old.extend_from_slice(&payload);
    }
    std::fs::write(&path, &old).unwrap();
    let mut j = Journal::<Rec>::open(&path).unwrap();
    assert_eq!(j.replay().unwrap(), vec![rec(0), rec(1), rec(2)]);
    j.append(&rec(3)).unwrap();
    drop(j);
    let j = Journal::<Rec>::open(&path).unwrap();
    assert_eq!(j.replay().unwrap(), (0..4).map(rec).collect::<Vec<_>>());
}

#[test]
fn a_page_never_written_back_ends_the_log_like_a_torn_tail() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("jobs.journal");
    {
        let mut j = Journal::<Rec>::open(&path).unwrap();
        j.append(&rec(0)).unwrap();
        for i in 1..400 {
            j.append_unsynced(&rec(i)).unwrap();
        }
    }
    let mut bytes = std::fs::read(&path).unwrap();
    assert!(bytes.len() > 3 * PAGE, "records span several pages");
    // A power loss wrote pages 0 and 2 back, page 1 never: it reads as zeros.
    bytes[PAGE..2 * PAGE].fill(0);
    std::fs::write(&path, &bytes).unwrap();
    let j = Journal::<Rec>::open(&path).unwrap();
    let kept = j.replay().unwrap();
    assert!(!kept.is_empty() && kept.len() < 400, "{} kept", kept.len());
    assert_eq!(kept, (0..kept.len() as u32).map(rec).collect::<Vec<_>>());
    assert!(file_len(&path) <= PAGE as u64, "cut at the hole");

    // The rest of a page zeroed from inside a record: the same.
    let mut bytes = std::fs::read(&path).unwrap();
    let cut = bytes.len();
    drop(j);
    {
        let mut j = Journal::<Rec>::open(&path).unwrap();
        for i in 0..400 {
            j.append_unsynced(&rec(1000 + i)).unwrap();
        }
    }
    bytes = std::fs::read(&path).unwrap();
    let hole_end = (cut / PAGE + 2) * PAGE;
    assert!(bytes.len() > hole_end + PAGE);
    bytes[cut + 10..hole_end].fill(0);
    std::fs::write(&path, &bytes).unwrap();
    let j = Journal::<Rec>::open(&path).unwrap();
    assert_eq!(j.replay().unwrap(), kept);
}

#[test]
fn a_record_of_another_type_is_reported_as_corrupt() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("jobs.journal");
    {
        let mut j = Journal::<String>::open(&path).unwrap();
        j.append(&"not a Rec".to_string()).unwrap();
    }
    let j = Journal::<Rec>::open(&path).unwrap();
    assert!(matches!(j.replay(), Err(StoreError::Corrupt { .. })));
}

#[test]
fn rewrite_replaces_the_content_atomically_and_appends_follow_it() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("jobs.journal");
    let mut j = Journal::<Rec>::open(&path).unwrap();
    for i in 0..10 {
        j.append(&rec(i)).unwrap();
    }
    j.rewrite(&[rec(7), rec(9)]).unwrap();
    assert_eq!(j.record_count(), 2);
    j.append(&rec(10)).unwrap();
    assert_eq!(j.replay().unwrap(), vec![rec(7), rec(9), rec(10)]);
    // The lock moved to the new file with the rewrite.
    assert!(matches!(
        Journal::<Rec>::open(&path),
        Err(StoreError::Locked { .. })
    ));
    drop(j);
    let j = Journal::<Rec>::open(&path).unwrap();
    assert_eq!(j.replay().unwrap(), vec![rec(7), rec(9), rec(10)]);
    let leftovers: Vec<_> = std::fs::read_dir(dir.path())
        .unwrap()
        .map(|e| e.unwrap().file_name())
        .collect();
    assert_eq!(leftovers.len(), 1, "{leftovers:?}");
}

#[test]
fn a_crash_before_the_rename_leaves_the_old_journal() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("jobs.journal");
    {
        let mut j = Journal::<Rec>::open(&path).unwrap();
        j.append(&rec(1)).unwrap();
    }
    // A half-written rewrite file next to it is ignored (and replaced by the next rewrite).
    std::fs::write(dir.path().join("jobs.journal.rewrite"), b"UKR1 half").unwrap();
    let mut j = Journal::<Rec>::open(&path).unwrap();
    assert_eq!(j.replay().unwrap(), vec![rec(1)]);
    j.rewrite(&[rec(2)]).unwrap();
    assert_eq!(j.replay().unwrap(), vec![rec(2)]);
}

/// One way a valid journal file gets damaged.
#[derive(Debug, Clone)]
enum Damage {
    /// One bit flipped at this fraction of the content.
    Flip { at: f64, bit: u8 },
    /// Cut at this fraction of the content.
    Cut { at: f64 },
    /// A 4 KiB page zeroed, the one holding this fraction.
    ZeroPage { at: f64 },
    /// The first page written again over the page holding this fraction.
    DuplicatePage { at: f64 },
}

fn damage() -> impl proptest::strategy::Strategy<Value = Damage> {
    use proptest::prelude::*;
    prop_oneof![
        (0.0..1.0f64, 0..8u8).prop_map(|(at, bit)| Damage::Flip { at, bit }),
        (0.0..1.0f64).prop_map(|at| Damage::Cut { at }),
        (0.0..1.0f64).prop_map(|at| Damage::ZeroPage { at }),
        (0.0..1.0f64).prop_map(|at| Damage::DuplicatePage { at }),
    ]
}

proptest::proptest! {
    #![proptest_config(proptest::prelude::ProptestConfig::with_cases(96))]

    /// Whatever the damage, opening and replaying give the records in order up to some point
    /// (a torn tail cut off) or a `Corrupt` error: never a record that was not written, never
    /// one out of its place, never a panic.
    #[test]
    fn a_damaged_journal_gives_a_prefix_or_corrupt(
        steps in proptest::collection::vec(0..5000u32, 1..40),
        damage in damage(),
    ) {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("jobs.journal");
        let records: Vec<Rec> = steps.iter().map(|s| Rec { job: "j".repeat((*s % 300) as usize + 1), step: *s }).collect();
        let content_len = {
            let mut j = Journal::<Rec>::open(&path).unwrap();
            j.append_all(&records).unwrap();
            j.content_len()
        };
        let mut bytes = std::fs::read(&path).unwrap();
        let pick = |at: f64| ((content_len as f64 * at) as usize).min(content_len.saturating_sub(1) as usize);
        const PAGE: usize = 4096;
        match damage {
            Damage::Flip { at, bit } => bytes[pick(at)] ^= 1 << bit,
            Damage::Cut { at } => bytes.truncate(pick(at)),
            Damage::ZeroPage { at } => {
                let start = pick(at) / PAGE * PAGE;
                let end = (start + PAGE).min(bytes.len());
                bytes[start..end].fill(0);
            }
            Damage::DuplicatePage { at } => {
                let start = pick(at) / PAGE * PAGE;
                let end = (start + PAGE).min(bytes.len());
                let first: Vec<u8> = bytes[..end - start].to_vec();
                bytes[start..end].copy_from_slice(&first);
            }
        }
        std::fs::write(&path, &bytes).unwrap();
        match Journal::<Rec>::open(&path).and_then(|j| j.replay()) {
            Ok(got) => {
                proptest::prop_assert!(got.len() <= records.len());
                proptest::prop_assert_eq!(&got[..], &records[..got.len()]);
            }
            Err(StoreError::Corrupt { .. } | StoreError::Damaged { .. }) => {}
            Err(other) => proptest::prop_assert!(false, "not a Corrupt error: {other:?}"),
        }
    }
}
