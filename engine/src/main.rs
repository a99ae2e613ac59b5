//! The `pushedge` binary: `serve`, `ctl`, `--version`.

use std::process::ExitCode;

/// mimalloc: per-thread free lists for the many small allocations of the publish path,
/// and it returns freed memory to the OS (glibc's malloc keeps a flood's memory).
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

use pushedge::config::{split_kv, Config};
use pushedge::{control, error, server};

const USAGE: &str = "\
usage:
  pushedge serve [--config FILE] [--listen ADDR] [--admin ADDR] [--control PATH]
                 [--workers N] [--backend epoll|uring] [--set KEY=VALUE ...]
  pushedge ctl [--control PATH | --config FILE] COMMAND [ARGS...]   (try: pushedge ctl help)
  pushedge --version

With no arguments, `pushedge` is `pushedge serve` on the embedded defaults:
subscribers on 0.0.0.0:8100, admin API on 127.0.0.1:8000, control socket ./pushedge.sock.
";

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    match args.first().map(String::as_str) {
        None | Some("serve") => serve(args.get(1..).unwrap_or(&[])),
        Some("ctl") => match parse_ctl(&args[1..]) {
            Ok((path, command)) => ExitCode::from(control::client(&path, &command) as u8),
            Err(e) => usage_error(&e),
        },
        Some("--version" | "-V" | "version") => {
            println!("pushedge {}", env!("CARGO_PKG_VERSION"));
            ExitCode::SUCCESS
        }
        Some("--help" | "-h" | "help") => {
            print!("{USAGE}");
            ExitCode::SUCCESS
        }
        // Flags without the subcommand: `serve`.
        Some(other) if other.starts_with('-') => serve(&args),
        Some(other) => usage_error(&format!("unknown command '{other}'")),
    }
}

/// `pushedge serve ARGS`: exit 2 for bad arguments, 1 when the server cannot run.
fn serve(args: &[String]) -> ExitCode {
    match parse_serve(args) {
        Ok(cfg) => match server::serve(cfg) {
            Ok(()) => ExitCode::SUCCESS,
            Err(e) => {
                error!("{}", e.message);
                ExitCode::from(e.code)
            }
        },
        Err(e) => usage_error(&e),
    }
}

fn usage_error(msg: &str) -> ExitCode {
    eprintln!("pushedge: {msg}\n\n{USAGE}");
    ExitCode::from(2)
}

/// Splits `--flag=value` or takes the next argument as the value.
fn flag_value<'a>(
    arg: &'a str,
    it: &mut impl Iterator<Item = &'a String>,
) -> Result<(&'a str, Option<String>), String> {
    if let Some((f, v)) = arg.split_once('=') {
        return Ok((f, Some(v.to_string())));
    }
    let needs_value = !matches!(arg, "--help" | "-h");
    if needs_value {
        let v = it.next().ok_or_else(|| format!("{arg} needs a value"))?;
        Ok((arg, Some(v.clone())))
    } else {
        Ok((arg, None))
    }
}

fn parse_serve(args: &[String]) -> Result<Config, String> {
    // The config file first, then flags over it, in order.
    let mut file = None;
    let mut it = args.iter();
    let mut flags: Vec<(String, String)> = Vec::new();
    while let Some(arg) = it.next() {
        if !arg.starts_with("--") {
            return Err(format!("unexpected argument '{arg}'"));
        }
        let (flag, value) = flag_value(arg, &mut it)?;
        let value = value.unwrap_or_default();
        match flag {
            "--config" => file = Some(value),
            "--listen" | "--admin" | "--control" | "--workers" | "--backend" | "--set" => {
                flags.push((flag.to_string(), value))
            }
            _ => return Err(format!("unknown flag '{flag}'")),
        }
    }
    let mut cfg = match file {
        Some(path) => Config::from_file(&path).map_err(|e| e.to_string())?,
        None => Config::default(),
    };
    for (flag, value) in flags {
        let r = match flag.as_str() {
            "--listen" => {
                // The one listener from now on, whatever the file's `[[listener]]`s.
                cfg.listener.clear();
                cfg.set_unchecked("listen", &quote(&value))
            }
            "--admin" => cfg.set_unchecked("admin_listen", &quote(&value)),
            "--control" => cfg.set_unchecked("control_path", &quote(&value)),
            "--workers" => {
                let n: usize = value
                    .parse()
                    .map_err(|_| format!("--workers expects a number, got '{value}'"))?;
                cfg.set_unchecked("workers", &n.to_string())
            }
            "--backend" => match value.as_str() {
                "epoll" | "uring" => cfg.set_unchecked("backend", &quote(&value)),
                _ => return Err(format!("--backend must be epoll or uring, got '{value}'")),
            },
            _ => split_kv(&value).and_then(|(k, v)| cfg.set_unchecked(k, v)),
        };
        r.map_err(|e| format!("{flag} {value}: {e}"))?;
    }
    // Relations between keys are checked once, whatever the order of the flags.
    cfg.validate().map_err(|e| e.to_string())?;
    Ok(cfg)
}

/// A TOML string literal for a raw value.
fn quote(v: &str) -> String {
    format!("\"{}\"", v.replace('\\', "\\\\").replace('"', "\\\""))
}

fn parse_ctl(args: &[String]) -> Result<(String, String), String> {
    let mut path: Option<String> = None;
    let mut it = args.iter();
    let mut rest = Vec::new();
    while let Some(arg) = it.next() {
        if rest.is_empty() && arg.starts_with("--") {
            let (flag, value) = flag_value(arg, &mut it)?;
            let value = value.unwrap_or_default();
            match flag {
                "--control" => path = Some(value),
                "--config" => {
                    let cfg = Config::from_file(&value).map_err(|e| e.to_string())?;
                    path = Some(cfg.control_path);
                }
                _ => return Err(format!("unknown flag '{flag}'")),
            }
        } else {
            rest.push(arg.as_str());
        }
    }
    if rest.is_empty() {
        return Err("ctl needs a command (try: pushedge ctl help)".into());
    }
    let path = path.unwrap_or_else(|| pushedge::config::DEFAULT_CONTROL_PATH.to_string());
    Ok((path, rest.join(" ")))
}
