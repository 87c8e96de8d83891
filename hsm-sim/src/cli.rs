//! The `hsm-sim` command line: build a rack, plug and pull tokens, inject faults, set
//! latency, inspect. Every command is a thin layer over [`crate::rack::Rack`]; argument
//! errors are reported with what was wrong and what would be accepted.
//!
//! Parsing is clap's; [`run`] executes a parsed command and returns the text to print.

use std::path::PathBuf;

use clap::{Args, Parser, Subcommand};
use cryptoki_sys::CK_RV;

use crate::error::{Error, Result};
use crate::rack::fault::{Fault, FaultAction};
use crate::rack::latency::{Op, Profile};
use crate::rack::object::{attr_name, display_value};
use crate::rack::profile::{self, FactoryState, ModelProfile};
use crate::rack::token::{Interface, TokenSettings};
use crate::rack::{self, InsertOptions, LatencyChange, Rack, RackConfig};

/// A virtual Ukey rack behind a real PKCS#11 module (`libhsm_sim.so`).
///
/// The rack lives in a state directory shared by every process that uses it (this tool,
/// the PKCS#11 module inside the agent, pkcs11-tool, ...). It is a simulator: key material
/// is stored in plain files; never put real secrets in it.
#[derive(Debug, Parser)]
#[command(name = "hsm-sim", version)]
pub struct Cli {
    /// State directory of the rack [default: $HSM_SIM_DIR, else $XDG_STATE_HOME/hsm-sim,
    /// else ~/.local/state/hsm-sim, else ./.hsm-sim]
    #[arg(long, global = true, env = "HSM_SIM_DIR")]
    pub dir: Option<PathBuf>,
    /// What to do.
    #[command(subcommand)]
    pub command: Command,
}

/// The commands.
#[derive(Debug, Subcommand)]
pub enum Command {
    /// Create (or with --force replace) the rack.
    #[command(subcommand)]
    Rack(RackCommand),
    /// Plug a token into a slot: a new one (of --model, in its factory state), or the token
    /// with --serial if the rack knows it.
    Insert {
        /// Slot number (0-based).
        #[arg(long)]
        slot: usize,
        /// Vendor profile of a new token (`hsm-sim models` lists them) [default: default].
        #[arg(long)]
        model: Option<String>,
        /// Token serial (16 letters or digits); a new random one when omitted.
        #[arg(long)]
        serial: Option<String>,
        /// Latency profile of this token (instant, realistic).
        #[arg(long, value_parser = parse_profile)]
        latency: Option<Profile>,
        /// Settings of a new token.
        #[command(flatten)]
        settings: SettingsArgs,
    },
    /// Pull the token out of a slot.
    Remove {
        /// Slot number.
        #[arg(long)]
        slot: usize,
    },
    /// Show slots, serials, states, objects and PIN counters.
    List {
        /// Print JSON instead of a table.
        #[arg(long)]
        json: bool,
    },
    /// Show a token's objects and attributes (never private key values).
    Show {
        /// Token serial.
        #[arg(long, conflicts_with = "slot", required_unless_present = "slot")]
        serial: Option<String>,
        /// Or: the token in this slot.
        #[arg(long)]
        slot: Option<usize>,
    },
    /// Arm a fault on the token in a slot: its NTH call of CALL (and every later one with
    /// --sticky) fails, pulls it, or stalls.
    Fault {
        /// Slot number.
        #[arg(long)]
        slot: usize,
        /// PKCS#11 function, e.g. C_Sign, C_GenerateKeyPair; or SKF function of an SKF
        /// token, e.g. SKF_ECCSignData, SKF_VerifyPIN.
        #[arg(long, required_unless_present = "clear")]
        call: Option<String>,
        /// Which call fails, counted from 1 after arming.
        #[arg(long, default_value_t = 1)]
        nth: u32,
        /// Return this code, e.g. CKR_DEVICE_ERROR (SAR_FAIL for an SKF function), or a number.
        #[arg(long, group = "action")]
        rv: Option<String>,
        /// Pull the token out of its slot on that call.
        #[arg(long, group = "action")]
        pull: bool,
        /// Delay that call by this many milliseconds.
        #[arg(long, group = "action")]
        delay: Option<u64>,
        /// Fire on the NTH call and on every later one, until --clear (a token gone bad).
        #[arg(long)]
        sticky: bool,
        /// Disarm every fault of the token instead.
        #[arg(long, conflicts_with_all = ["call", "action", "sticky"])]
        clear: bool,
    },
    /// Set latency: rack-wide, or for the token in --slot.
    Latency {
        /// The token in this slot (rack-wide when omitted).
        #[arg(long)]
        slot: Option<usize>,
        /// Use this profile (instant, realistic).
        #[arg(long, value_parser = parse_profile, group = "change")]
        profile: Option<Profile>,
        /// Override one operation (with --ms), e.g. keygen-rsa2048, sign-ec, write.
        #[arg(long, requires = "ms", group = "change")]
        op: Option<String>,
        /// Duration of --op in milliseconds.
        #[arg(long)]
        ms: Option<u64>,
        /// Forget the override of this operation.
        #[arg(long, group = "change")]
        clear_op: Option<String>,
        /// Forget all latency settings here.
        #[arg(long, group = "change")]
        reset: bool,
    },
    /// Wipe a token back to blank (what the platform does when the SO PIN is locked).
    Wipe {
        /// Token serial.
        #[arg(long)]
        serial: String,
    },
    /// Show the virtual USB bus (usb.json).
    Usb,
    /// List the built-in vendor profiles (`insert --model NAME`) and what each stands for.
    Models {
        /// Print JSON instead of text.
        #[arg(long)]
        json: bool,
    },
    /// Emulate the desk's indicator panel on a pty and print its lights live.
    Panel(crate::panel::PanelArgs),
    /// The demo moved to its own program: run `cargo run --release -p ukey-demo` (same
    /// options). This command only says so.
    #[command(hide = true)]
    Demo {
        /// Whatever was given: not used.
        #[arg(trailing_var_arg = true, allow_hyphen_values = true)]
        args: Vec<String>,
    },
}

/// `hsm-sim rack …`.
#[derive(Debug, Subcommand)]
pub enum RackCommand {
    /// Create a rack of empty slots.
    Init {
        /// Number of slots.
        #[arg(long, default_value_t = 4)]
        slots: usize,
        /// Latency profile of the rack (instant, realistic).
        #[arg(long, value_parser = parse_profile)]
        latency: Option<Profile>,
        /// Replace an existing rack and forget its tokens.
        #[arg(long)]
        force: bool,
        /// Settings of a new token.
        #[command(flatten)]
        settings: SettingsArgs,
    },
}

/// Settings of new tokens.
#[derive(Debug, Args, Default)]
pub struct SettingsArgs {
    /// Wrong user PINs before the user PIN locks [default: 6].
    #[arg(long)]
    user_retries: Option<u32>,
    /// Wrong SO PINs before the SO PIN locks [default: 10].
    #[arg(long)]
    so_retries: Option<u32>,
    /// Shortest PIN [default: 4].
    #[arg(long)]
    pin_min: Option<usize>,
    /// Longest PIN [default: 32].
    #[arg(long)]
    pin_max: Option<usize>,
    /// Most objects a token holds [default: 48].
    #[arg(long)]
    max_objects: Option<usize>,
    /// Bytes of object storage [default: 65536].
    #[arg(long)]
    memory: Option<usize>,
    /// USB vendor id, hex [default: 5553].
    #[arg(long, value_parser = parse_hex16)]
    vendor_id: Option<u16>,
    /// USB product id, hex [default: 4b01; 4b0a with --interface skf].
    #[arg(long, value_parser = parse_hex16)]
    product_id: Option<u16>,
    /// The token's library: pkcs11 (libhsm_sim.so) or skf (libhsm_sim_skf.so, GM/T 0016)
    /// [default: pkcs11].
    #[arg(long, value_parser = parse_interface)]
    interface: Option<Interface>,
}

impl SettingsArgs {
    fn given(&self) -> bool {
        self.user_retries.is_some()
            || self.so_retries.is_some()
            || self.pin_min.is_some()
            || self.pin_max.is_some()
            || self.max_objects.is_some()
            || self.memory.is_some()
            || self.vendor_id.is_some()
            || self.product_id.is_some()
            || self.interface.is_some()
    }

    fn over(&self, base: &TokenSettings) -> TokenSettings {
        TokenSettings {
            user_retries: self.user_retries.unwrap_or(base.user_retries),
            so_retries: self.so_retries.unwrap_or(base.so_retries),
            pin_min: self.pin_min.unwrap_or(base.pin_min),
            pin_max: self.pin_max.unwrap_or(base.pin_max),
            max_objects: self.max_objects.unwrap_or(base.max_objects),
            max_bytes: self.memory.unwrap_or(base.max_bytes),
            vendor_id: self.vendor_id.unwrap_or(base.vendor_id),
            product_id: self.product_id.unwrap_or(
                // An SKF token is another model: its own product id unless one is given.
                match (self.interface, base.interface) {
                    (Some(Interface::Skf), Interface::Pkcs11) => {
                        crate::rack::token::DEFAULT_SKF_PRODUCT_ID
                    }
                    _ => base.product_id,
                },
            ),
            interface: self.interface.unwrap_or(base.interface),
        }
    }
}

fn parse_profile(s: &str) -> std::result::Result<Profile, String> {
    Profile::parse(s).map_err(|e| e.to_string())
}

fn parse_interface(s: &str) -> std::result::Result<Interface, String> {
    Interface::parse(s).map_err(|e| e.to_string())
}

fn parse_hex16(s: &str) -> std::result::Result<u16, String> {
    u16::from_str_radix(s.trim_start_matches("0x"), 16)
        .map_err(|e| format!("{s:?} is not a 16-bit hex number: {e}"))
}

/// Runs a parsed command; returns what to print.
pub fn run(cli: Cli) -> Result<String> {
    let command = match cli.command {
        Command::Demo { .. } => return Err(Error::DemoMoved),
        command => command,
    };
    let dir = cli.dir.unwrap_or_else(rack::default_dir);
    match command {
        Command::Rack(RackCommand::Init {
            slots,
            latency,
            force,
            settings,
        }) => {
            let config = RackConfig {
                slots,
                latency,
                defaults: settings.over(&TokenSettings::default()),
            };
            Rack::init(&dir, config, force)?;
            Ok(format!("rack of {slots} slots in {}\n", dir.display()))
        }
        Command::Insert {
            slot,
            model,
            serial,
            latency,
            settings,
        } => {
            let rack = Rack::open(&dir)?;
            // Options given on the command line change the model's settings, else the rack's.
            let base = match &model {
                Some(name) => profile::by_name(name)
                    .map(|m| m.settings)
                    .unwrap_or_default(),
                None => rack.defaults()?,
            };
            let options = InsertOptions {
                serial,
                settings: settings.given().then(|| settings.over(&base)),
                latency,
                model,
            };
            let serial = rack.insert(slot, options)?;
            let token = rack.token(&serial)?;
            Ok(format!(
                "slot {slot} (USB {}): token {serial} ({})\n",
                rack::port_path(slot),
                token.profile().name
            ))
        }
        Command::Remove { slot } => {
            let serial = Rack::open(&dir)?.remove(slot)?;
            Ok(format!("slot {slot}: token {serial} removed\n"))
        }
        Command::List { json } => {
            let list = Rack::open(&dir)?.list()?;
            if json {
                return serde_json::to_string_pretty(&list)
                    .map(|s| s + "\n")
                    .map_err(|e| Error::Encode(e.to_string()));
            }
            let mut out = format!(
                "{:<4} {:<8} {:<6} {:<16} {:<12} {:<12} {:<16} {:>7} {:>11} {:>6} {:>6}\n",
                "SLOT",
                "USB",
                "ID",
                "SERIAL",
                "MODEL",
                "STATE",
                "LABEL",
                "OBJECTS",
                "BYTES",
                "USER",
                "SO"
            );
            for s in list {
                match s.token {
                    None => out += &format!("{:<4} {:<8} {:<6} -\n", s.slot, s.port, s.slot_id),
                    Some(t) => {
                        out += &format!(
                            "{:<4} {:<8} {:<6} {:<16} {:<12} {:<12} {:<16} {:>7} {:>11} {:>6} {:>6}\n",
                            s.slot,
                            s.port,
                            s.slot_id,
                            t.serial,
                            t.model,
                            t.state,
                            t.label,
                            t.objects,
                            format!("{}/{}", t.used_bytes, t.max_bytes),
                            format!("{}/{}", t.user_retries.0, t.user_retries.1),
                            format!("{}/{}", t.so_retries.0, t.so_retries.1),
                        );
                        if t.interface != "pkcs11" {
                            out += &format!("     interface: {}\n", t.interface);
                        }
                        for f in t.faults {
                            out += &format!("     fault: {f}\n");
                        }
                    }
                }
            }
            Ok(out)
        }
        Command::Show { serial, slot } => {
            let rack = Rack::open(&dir)?;
            let serial = match (serial, slot) {
                (Some(s), _) => s,
                (None, Some(slot)) => rack.serial_in(slot)?.ok_or(Error::SlotEmpty { slot })?,
                (None, None) => unreachable!("clap requires one"),
            };
            let t = rack.token(&serial)?;
            let mut out = format!(
                "token {} label {:?} initialized {} user PIN set {}\n",
                t.serial(),
                t.label(),
                t.is_initialized(),
                t.user_pin_initialized()
            );
            for f in t.faults() {
                out += &format!("fault: {}\n", f.describe());
            }
            if let Some(dev) = t.skf() {
                out += &dev.describe();
            }
            for (h, o) in t.objects() {
                out += &format!("object {h}:\n");
                for (ty, v) in o.attrs() {
                    out += &format!("  {:<26} {}\n", attr_name(*ty), display_value(*ty, v));
                }
                if o.key().is_some() {
                    out += "  (private key material: not shown)\n";
                }
            }
            Ok(out)
        }
        Command::Fault {
            slot,
            call,
            nth,
            rv,
            pull,
            delay,
            sticky,
            clear,
        } => {
            let rack = Rack::open(&dir)?;
            if clear {
                rack.clear_faults(slot)?;
                return Ok(format!("slot {slot}: faults cleared\n"));
            }
            let call = call.unwrap_or_default();
            let action = match (rv, pull, delay) {
                (Some(rv), false, None) if call.trim().to_ascii_uppercase().starts_with("SKF_") => {
                    FaultAction::Fail {
                        rv: CK_RV::from(crate::skf::consts::parse_sar(&rv)?),
                    }
                }
                (Some(rv), false, None) => FaultAction::Fail {
                    rv: rack::names::parse_rv(&rv)? as CK_RV,
                },
                (None, true, None) => FaultAction::Pull,
                (None, false, Some(ms)) => FaultAction::Delay { ms },
                _ => {
                    return Err(Error::InvalidSetting {
                        name: "fault",
                        reason: "give one of --rv CKR_..., --pull, --delay MS".into(),
                    });
                }
            };
            let mut fault = Fault::new(&call, nth, action)?;
            if sticky {
                fault = fault.sticky();
            }
            let text = fault.describe();
            rack.set_fault(slot, fault)?;
            Ok(format!("slot {slot}: armed {text}\n"))
        }
        Command::Latency {
            slot,
            profile,
            op,
            ms,
            clear_op,
            reset,
        } => {
            let change = match (profile, op, clear_op, reset) {
                (Some(p), None, None, false) => LatencyChange::Profile(p),
                (None, Some(op), None, false) => {
                    LatencyChange::Op(Op::parse(&op)?, ms.unwrap_or(0))
                }
                (None, None, Some(op), false) => LatencyChange::ClearOp(Op::parse(&op)?),
                (None, None, None, true) => LatencyChange::Reset,
                _ => {
                    return Err(Error::InvalidSetting {
                        name: "latency",
                        reason: "give one of --profile, --op OP --ms MS, --clear-op OP, --reset"
                            .into(),
                    });
                }
            };
            Rack::open(&dir)?.set_latency(slot, change)?;
            let scope = slot
                .map(|s| format!("slot {s}"))
                .unwrap_or_else(|| "rack".into());
            Ok(format!("{scope}: latency {change:?}\n"))
        }
        Command::Wipe { serial } => {
            Rack::open(&dir)?.wipe(&serial)?;
            Ok(format!("token {serial} wiped to blank\n"))
        }
        Command::Demo { .. } => Err(Error::DemoMoved),
        Command::Usb => {
            let bus = crate::usb::attached(&dir)?;
            serde_json::to_string_pretty(&bus)
                .map(|s| s + "\n")
                .map_err(|e| Error::Encode(e.to_string()))
        }
        Command::Panel(args) => crate::panel::run(args),
        Command::Models { json } => models(json),
    }
}

/// `hsm-sim models`: every built-in vendor profile.
fn models(json: bool) -> Result<String> {
    let all = profile::all();
    if json {
        return serde_json::to_string_pretty(&all)
            .map(|s| s + "\n")
            .map_err(|e| Error::Encode(e.to_string()));
    }
    Ok(all
        .iter()
        .map(describe_model)
        .collect::<Vec<_>>()
        .join("\n"))
}

fn describe_model(m: &ModelProfile) -> String {
    let s = &m.settings;
    let factory = match m.factory {
        FactoryState::Uninitialized => "uninitialized".to_string(),
        FactoryState::Initialized {
            so_pin,
            user_pin,
            label,
            objects,
        } => format!(
            "initialized, label {label:?}, transport SO PIN {so_pin}, user PIN {}, objects: {}",
            user_pin.unwrap_or("none"),
            if objects.is_empty() {
                "none".to_string()
            } else {
                objects
                    .iter()
                    .map(|o| o.label)
                    .collect::<Vec<_>>()
                    .join(", ")
            }
        ),
    };
    format!(
        "{name}: {summary}\n  USB {vid:04x}:{pid:04x} {product:?}, USB serial {serial:?}, slots {slots:?}, \
         slot description {desc:?}\n  factory: {factory}; C_InitToken {init}\n  PIN {pmin}..={pmax}, \
         retries user {ur} SO {sr}, storage {objs} objects / {bytes} bytes, mechanisms {mechs:?}, \
         latency {lat}\n  stands for: {stands}\n",
        name = m.name,
        summary = m.summary,
        vid = m.vendor_id,
        pid = m.product_id,
        product = m.product,
        serial = m.usb_serial,
        slots = m.slots,
        desc = m.slot_description,
        init = if m.init_token { "yes" } else { "not supported" },
        pmin = s.pin_min,
        pmax = s.pin_max,
        ur = s.user_retries,
        sr = s.so_retries,
        objs = s.max_objects,
        bytes = s.max_bytes,
        mechs = m.mechanisms,
        lat = m.latency.name(),
        stands = m.stands_for,
    )
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used)]
    use super::*;

    fn sim(dir: &std::path::Path, args: &[&str]) -> Result<String> {
        let mut argv = vec!["hsm-sim", "--dir", dir.to_str().unwrap()];
        argv.extend_from_slice(args);
        run(Cli::try_parse_from(argv).unwrap())
    }

    #[test]
    fn skf_tokens_through_the_cli() {
        let dir = tempfile::tempdir().unwrap();
        let d = dir.path();
        sim(d, &["rack", "init", "--slots", "2"]).unwrap();
        sim(d, &["insert", "--slot", "1", "--interface", "skf"]).unwrap();
        sim(d, &["insert", "--slot", "0"]).unwrap();
        let list = sim(d, &["list"]).unwrap();
        assert_eq!(list.matches("interface: skf").count(), 1, "{list}");
        let json = sim(d, &["list", "--json"]).unwrap();
        assert!(json.contains("\"interface\": \"skf\""), "{json}");
        let usb = sim(d, &["usb"]).unwrap();
        assert!(
            usb.contains("19210") && usb.contains("Ukey-Sim GM"),
            "{usb}"
        );
        let shown = sim(d, &["show", "--slot", "1"]).unwrap();
        assert!(
            shown.contains("SKF device label \"\", device key factory"),
            "{shown}"
        );
        let armed = sim(
            d,
            &[
                "fault",
                "--slot",
                "1",
                "--call",
                "skf_eccsigndata",
                "--rv",
                "sar_pin_locked",
            ],
        )
        .unwrap();
        assert!(
            armed.contains("SKF_ECCSignData call #1 -> SAR_PIN_LOCKED"),
            "{armed}"
        );
        assert!(matches!(
            sim(
                d,
                &[
                    "fault", "--slot", "1", "--call", "SKF_Nope", "--rv", "SAR_FAIL"
                ]
            ),
            Err(Error::UnknownFunction { .. })
        ));
        assert!(matches!(
            sim(
                d,
                &[
                    "fault",
                    "--slot",
                    "1",
                    "--call",
                    "SKF_GenRandom",
                    "--rv",
                    "CKR_DEVICE_ERROR"
                ]
            ),
            Err(Error::UnknownRv { .. })
        ));
        assert!(
            Cli::try_parse_from(["hsm-sim", "insert", "--slot", "0", "--interface", "usb"])
                .is_err()
        );
        let latency = sim(
            d,
            &["latency", "--slot", "1", "--op", "keygen-sm2", "--ms", "5"],
        )
        .unwrap();
        assert!(latency.contains("KeygenSm2"), "{latency}");
    }
}
