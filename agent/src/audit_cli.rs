//! `ukey-agent audit verify|show|export`: a thin shell over `ukey_agent::audit`.

use std::io::Write;
use std::path::Path;
use std::process::ExitCode;

use time::OffsetDateTime;
use time::format_description::well_known::Rfc3339;
use ukey_agent::audit::entry::decode_line;
use ukey_agent::audit::verify::{read_files, verify_files};
use ukey_agent::audit::{Report, audit_dir};
use ukey_agent::config::Config;
use ukey_protocol::{ReceiptVerifier, UnsealKey};
use zeroize::Zeroizing;

use crate::AuditCommand;

/// Exit status of a configuration or key that cannot be read.
const BAD_CONFIG: u8 = 3;

pub fn run(command: AuditCommand) -> ExitCode {
    match command {
        AuditCommand::Verify { config } => verify(&config),
        AuditCommand::Show {
            config,
            since,
            token,
            json,
        } => show(&config, since.as_deref(), token.as_deref(), json),
        AuditCommand::Export {
            config,
            output,
            format,
        } => export(&config, output.as_deref(), &format),
    }
}

fn fail(code: u8, text: impl std::fmt::Display) -> ExitCode {
    eprintln!("ukey-agent: {text}");
    ExitCode::from(code)
}

fn load(path: &Path) -> Result<Config, ExitCode> {
    Config::load(path).map_err(|e| fail(BAD_CONFIG, e))
}

/// The station's public key, from its private key file.
fn verifier(config: &Config) -> Result<ReceiptVerifier, ExitCode> {
    let path = &config.trust.station_key;
    let pem = Zeroizing::new(std::fs::read_to_string(path).map_err(|e| {
        fail(
            BAD_CONFIG,
            format!("trust.station_key: cannot read {}: {e}", path.display()),
        )
    })?);
    UnsealKey::from_pkcs8_pem(&pem)
        .and_then(|key| ReceiptVerifier::new(key.recipient()))
        .map_err(|e| {
            fail(
                BAD_CONFIG,
                format!("trust.station_key: {}: {e}", path.display()),
            )
        })
}

/// The audit files, name and bytes, by index.
type Files = Vec<(String, Vec<u8>)>;

fn checked(config: &Config) -> Result<(Files, Report), ExitCode> {
    let keys = verifier(config)?;
    let dir = audit_dir(&config.state_dir);
    let files = read_files(&dir).map_err(|e| fail(1, e))?;
    if files.is_empty() {
        return Err(fail(1, format!("{}: no audit log here", dir.display())));
    }
    let report = verify_files(&files, Some(&keys));
    Ok((files, report))
}

fn summary(report: &Report) -> String {
    format!(
        "{} entries in {} file(s), {} receipt(s) for {} token(s)",
        report.entries,
        report.files,
        report.receipts,
        report.receipts_per_token.len()
    )
}

fn verify(path: &Path) -> ExitCode {
    let config = match load(path) {
        Ok(c) => c,
        Err(code) => return code,
    };
    let (_, report) = match checked(&config) {
        Ok(r) => r,
        Err(code) => return code,
    };
    if report.ok() {
        println!("audit log intact: {}", summary(&report));
        for (token, count) in &report.receipts_per_token {
            println!("  {token}: {count} receipt(s)");
        }
        ExitCode::SUCCESS
    } else {
        println!(
            "audit log BROKEN: {} problem(s); {}",
            report.breaks.len(),
            summary(&report)
        );
        for b in &report.breaks {
            println!("  {b}");
        }
        ExitCode::from(1)
    }
}

fn show(path: &Path, since: Option<&str>, token: Option<&str>, json: bool) -> ExitCode {
    let config = match load(path) {
        Ok(c) => c,
        Err(code) => return code,
    };
    let since = match since
        .map(|t| OffsetDateTime::parse(t, &Rfc3339))
        .transpose()
    {
        Ok(t) => t,
        Err(e) => return fail(2, format!("--since: not an RFC 3339 time: {e}")),
    };
    let files = match read_files(&audit_dir(&config.state_dir)) {
        Ok(f) => f,
        Err(e) => return fail(1, e),
    };
    let mut out = std::io::stdout().lock();
    let mut unreadable = 0usize;
    for (name, bytes) in &files {
        for (number, line) in bytes.split(|b| *b == b'\n').enumerate() {
            if line.is_empty() {
                continue;
            }
            let Ok(read) = decode_line(line) else {
                unreadable += 1;
                eprintln!(
                    "{name}:{}: not an audit entry (run `ukey-agent audit verify`)",
                    number + 1
                );
                continue;
            };
            let entry = read.entry;
            if since.is_some_and(|t| entry.at < t) {
                continue;
            }
            let entry_token = entry.event.token();
            if let Some(wanted) = token
                && entry_token.as_ref().map(|t| t.as_str()) != Some(wanted)
            {
                continue;
            }
            let written = if json {
                out.write_all(line).and_then(|()| out.write_all(b"\n"))
            } else {
                let at = entry.at.format(&Rfc3339).unwrap_or_default();
                let details = serde_json::to_value(&entry.event)
                    .ok()
                    .and_then(|v| v.as_object().cloned())
                    .map(|mut fields| {
                        fields.remove("type");
                        if fields.contains_key("receipt") {
                            describe_receipt(&entry.event)
                        } else {
                            fields
                                .iter()
                                .map(|(k, v)| format!("{k}={v}"))
                                .collect::<Vec<_>>()
                                .join(" ")
                        }
                    })
                    .unwrap_or_default();
                writeln!(
                    out,
                    "{at}  #{:<6} {:<20} {}",
                    entry.seq,
                    entry.event.kind(),
                    details
                )
            };
            if written.is_err() {
                return ExitCode::from(1);
            }
        }
    }
    if unreadable > 0 {
        ExitCode::from(1)
    } else {
        ExitCode::SUCCESS
    }
}

fn describe_receipt(event: &ukey_agent::audit::AuditEvent) -> String {
    let ukey_agent::audit::AuditEvent::Receipt { receipt } = event else {
        return String::new();
    };
    match receipt.receipt_unverified() {
        Ok(r) => format!(
            "job={} kind={} token={} model={} outcome={} certificates={}",
            r.job_id,
            serde_json::to_value(r.kind)
                .ok()
                .and_then(|v| v.as_str().map(str::to_owned))
                .unwrap_or_default(),
            r.token_serial,
            r.token_model,
            match &r.outcome {
                ukey_protocol::ReceiptOutcome::Succeeded => "succeeded".to_owned(),
                ukey_protocol::ReceiptOutcome::Failed { code, .. } => format!("failed ({code})"),
            },
            r.certificates.len()
        ),
        Err(e) => format!("unreadable receipt: {e}"),
    }
}

fn export(path: &Path, output: Option<&Path>, format: &str) -> ExitCode {
    let config = match load(path) {
        Ok(c) => c,
        Err(code) => return code,
    };
    let (files, report) = match checked(&config) {
        Ok(r) => r,
        Err(code) => return code,
    };
    let verification = serde_json::json!({
        "station_id": config.station_id,
        "exported_at": OffsetDateTime::now_utc().format(&Rfc3339).unwrap_or_default(),
        "ok": report.ok(),
        "files": report.files,
        "entries": report.entries,
        "receipts": report.receipts,
        "receipts_per_token": report.receipts_per_token,
        "breaks": report.breaks,
    });
    let mut text = Vec::new();
    if format == "json" {
        let entries: Vec<serde_json::Value> = files
            .iter()
            .flat_map(|(_, bytes)| bytes.split(|b| *b == b'\n'))
            .filter(|l| !l.is_empty())
            .map(|l| {
                serde_json::from_slice(l).unwrap_or_else(|_| {
                    serde_json::Value::String(String::from_utf8_lossy(l).into_owned())
                })
            })
            .collect();
        let doc = serde_json::json!({ "verification": verification, "entries": entries });
        text = serde_json::to_vec_pretty(&doc).unwrap_or_default();
        text.push(b'\n');
    } else {
        text.extend_from_slice(
            serde_json::to_string(&serde_json::json!({ "verification": verification }))
                .unwrap_or_default()
                .as_bytes(),
        );
        text.push(b'\n');
        for (_, bytes) in &files {
            text.extend_from_slice(bytes);
            if !bytes.is_empty() && !bytes.ends_with(b"\n") {
                text.push(b'\n');
            }
        }
    }
    let written = match output {
        Some(file) => {
            std::fs::write(file, &text).map_err(|e| format!("cannot write {}: {e}", file.display()))
        }
        None => std::io::stdout()
            .lock()
            .write_all(&text)
            .map_err(|e| format!("cannot write: {e}")),
    };
    if let Err(e) = written {
        return fail(1, e);
    }
    if report.ok() {
        ExitCode::SUCCESS
    } else {
        eprintln!(
            "ukey-agent: exported, but the audit log is BROKEN ({} problem(s); run `ukey-agent audit verify`)",
            report.breaks.len()
        );
        ExitCode::from(1)
    }
}
