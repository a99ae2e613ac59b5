//! The `pushedge` binary: `serve`, `ctl`, `completions`, `--version` (clap, as loadgen).
//!
//! Exit status: 0 done; 2 a bad command line, key or value (addresses that do not parse
//! included: it cannot work as written); 1 the server could not run where it is (an
//! address in use or not on this machine, a port held by an unrelated process, no
//! permission). `pushedge ctl`: 0 a reply, 1 an error reply, 2 no server.

use clap::{Args, CommandFactory, Parser, Subcommand, ValueEnum};
use std::process::ExitCode;

/// mimalloc: per-thread free lists for the many small allocations of the publish path,
/// and it returns freed memory to the OS (glibc's malloc keeps a flood's memory).
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

use pushedge::config::{self, split_kv, Config};
use pushedge::{control, error, server};

const AFTER_HELP: &str = "\
With no command, `pushedge` is `pushedge serve` (flags without a command are serve's):
subscribers on 0.0.0.0:8100, admin API on 127.0.0.1:8000, control socket
$XDG_RUNTIME_DIR/pushedge.sock, else /run/pushedge/pushedge.sock (root), else
/tmp/pushedge-<uid>/pushedge.sock.

Exit status: 0 done, 2 a bad flag, key or value, 1 the server could not run (an address
in use, a port held by another process, no permission).";

#[derive(Parser, Debug)]
#[command(
    name = "pushedge",
    version,
    about = "A push edge server: WebSocket, SSE, long-poll, HTTP streaming and Socket.IO, with per-channel history",
    after_help = AFTER_HELP,
    args_conflicts_with_subcommands = true,
    // A flag given twice: the last one counts (as scripts that add to a base line expect).
    args_override_self = true
)]
struct Cli {
    #[command(subcommand)]
    cmd: Option<Cmd>,
    /// Flags without a command: `serve`.
    #[command(flatten)]
    serve: ServeArgs,
}

#[derive(Subcommand, Debug)]
enum Cmd {
    /// Run the server (the default command).
    #[command(args_override_self = true)]
    Serve(ServeArgs),
    /// Send one command to a running server's control socket and print its JSON reply.
    #[command(
        after_help = "\
The command is the rest of the line, sent as it is (try: pushedge ctl help):
  stats, info [channel], channels [prefix], conns [limit], config get [key],
  config set <key> <value>, kick <conn-id>, close <channel>, pub <channel> <content>,
  tls reload, drain [seconds], resume, shutdown, upgrade [--binary PATH]

Without --control or --config, the first default location that holds a socket:
$XDG_RUNTIME_DIR/pushedge.sock, /run/pushedge/pushedge.sock, /tmp/pushedge-<uid>/pushedge.sock.

Exit status: 0 a reply, 1 an error reply, 2 no server (or a bad command line).",
        args_override_self = true
    )]
    Ctl(CtlArgs),
    /// Print a shell completion script (e.g. `pushedge completions bash > /etc/bash_completion.d/pushedge`).
    Completions {
        /// The shell.
        #[arg(value_enum)]
        shell: clap_complete::Shell,
    },
    /// Print the version (as --version).
    #[command(hide = true)]
    Version,
}

#[derive(ValueEnum, Clone, Copy, Debug, PartialEq, Eq)]
enum BackendArg {
    Epoll,
    Uring,
}

#[derive(Args, Debug, Default)]
struct ServeArgs {
    /// TOML configuration file (flags override it; every key has an embedded default).
    #[arg(long, value_name = "FILE")]
    config: Option<String>,
    /// Subscriber address (replaces the file's [[listener]] entries), e.g. 0.0.0.0:8100.
    #[arg(long, value_name = "ADDR")]
    listen: Option<String>,
    /// Admin (publisher) API address, e.g. 127.0.0.1:8000.
    #[arg(long, value_name = "ADDR")]
    admin: Option<String>,
    /// Control socket path (mode 0600).
    #[arg(long, value_name = "PATH")]
    control: Option<String>,
    /// Worker threads (0 = one per core).
    #[arg(long, value_name = "N")]
    workers: Option<usize>,
    /// Reactor backend.
    #[arg(long, value_enum)]
    backend: Option<BackendArg>,
    /// Any configuration key (TOML value; a bare word is a string), repeatable; wins over
    /// the file and the flags above. E.g. --set heartbeat_secs=10 --set cluster.redis_url=redis://host
    #[arg(long = "set", value_name = "KEY=VALUE")]
    set: Vec<String>,
}

#[derive(Args, Debug)]
struct CtlArgs {
    /// The control socket.
    #[arg(long, value_name = "PATH", conflicts_with = "config")]
    control: Option<String>,
    /// Take the control socket from this configuration file's control_path.
    #[arg(long, value_name = "FILE")]
    config: Option<String>,
    /// The command and its arguments (the rest of the line).
    #[arg(
        value_name = "COMMAND",
        required = true,
        num_args = 1..,
        trailing_var_arg = true,
        allow_hyphen_values = true
    )]
    command: Vec<String>,
}

fn main() -> ExitCode {
    let cli = match Cli::try_parse() {
        Ok(c) => c,
        Err(e) => {
            let _ = e.print();
            return ExitCode::from(if e.use_stderr() { 2 } else { 0 });
        }
    };
    match cli.cmd {
        None => serve(cli.serve),
        Some(Cmd::Serve(args)) => serve(args),
        Some(Cmd::Ctl(args)) => match ctl_path(&args) {
            Ok(path) => ExitCode::from(control::client(&path, &args.command.join(" ")) as u8),
            Err(CtlPathError::Usage(e)) => usage_error(&e),
            Err(CtlPathError::NotFound(looked)) => {
                eprintln!(
                    "pushedge ctl: no server found at the default control sockets: {} (is it running? --control PATH or --config FILE names another)",
                    looked.join(", ")
                );
                ExitCode::from(2)
            }
        },
        Some(Cmd::Completions { shell }) => {
            let mut cmd = Cli::command();
            clap_complete::generate(shell, &mut cmd, "pushedge", &mut std::io::stdout());
            ExitCode::SUCCESS
        }
        Some(Cmd::Version) => {
            println!("pushedge {}", env!("CARGO_PKG_VERSION"));
            ExitCode::SUCCESS
        }
    }
}

/// `pushedge serve`: exit 2 for bad arguments, 1 when the server cannot run.
fn serve(args: ServeArgs) -> ExitCode {
    match config_of(args) {
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
    eprintln!("pushedge: {msg}\n\nFor more information, try 'pushedge --help'.");
    ExitCode::from(2)
}

/// The configuration: embedded defaults < the file < the dedicated flags < `--set`.
fn config_of(args: ServeArgs) -> Result<Config, String> {
    let mut cfg = match &args.config {
        Some(path) => Config::from_file(path).map_err(|e| e.to_string())?,
        None => Config::default(),
    };
    let mut flags: Vec<(&str, String)> = Vec::new();
    if let Some(v) = &args.listen {
        // The one listener from now on, whatever the file's `[[listener]]`s.
        cfg.listener.clear();
        flags.push(("listen", quote(v)));
    }
    if let Some(v) = &args.admin {
        flags.push(("admin_listen", quote(v)));
    }
    if let Some(v) = &args.control {
        flags.push(("control_path", quote(v)));
    }
    if let Some(n) = args.workers {
        flags.push(("workers", n.to_string()));
    }
    if let Some(b) = args.backend {
        let name = match b {
            BackendArg::Epoll => "epoll",
            BackendArg::Uring => "uring",
        };
        flags.push(("backend", quote(name)));
    }
    for (key, value) in flags {
        cfg.set_unchecked(key, &value)
            .map_err(|e| format!("--{key} {value}: {e}"))?;
    }
    for kv in &args.set {
        split_kv(kv)
            .and_then(|(k, v)| cfg.set_unchecked(k, v))
            .map_err(|e| format!("--set {kv}: {e}"))?;
    }
    // Relations between keys are checked once, whatever the order of the flags.
    cfg.validate().map_err(|e| e.to_string())?;
    Ok(cfg)
}

/// A TOML string literal for a raw value.
fn quote(v: &str) -> String {
    format!("\"{}\"", v.replace('\\', "\\\\").replace('"', "\\\""))
}

enum CtlPathError {
    /// A bad `--config` file.
    Usage(String),
    /// No socket at any default location (the ones looked at).
    NotFound(Vec<String>),
}

/// The control socket `ctl` talks to: `--control`, the file's `control_path`, or the
/// first default location that holds a socket.
fn ctl_path(args: &CtlArgs) -> Result<String, CtlPathError> {
    if let Some(p) = &args.control {
        return Ok(p.clone());
    }
    if let Some(file) = &args.config {
        let cfg = Config::from_file(file).map_err(|e| CtlPathError::Usage(e.to_string()))?;
        return Ok(cfg.control_path);
    }
    use std::os::unix::fs::FileTypeExt;
    let looked: Vec<String> = config::control_path_candidates()
        .into_iter()
        .map(|(p, _)| p)
        .collect();
    looked
        .iter()
        .find(|p| std::fs::metadata(p).is_ok_and(|m| m.file_type().is_socket()))
        .cloned()
        .ok_or(CtlPathError::NotFound(looked))
}
