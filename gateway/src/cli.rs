//! The command line: `run`, `check`, `demo`, `simulate`.

use std::{
    io::IsTerminal,
    net::SocketAddr,
    path::{Path, PathBuf},
    process::ExitCode,
    time::Duration,
};

use anyhow::{Context, Result};
use clap::{Parser, Subcommand, ValueEnum};
use firmware_config::{SourceConfig, ValidatedConfig, units::HumanDuration};
use gateway::{simulate, topology};
use protocols::modbus::{ReadPlan, ShownPlan};
use tokio_util::{sync::CancellationToken, task::TaskTracker};

/// sysexits.h: configuration error.
const EX_CONFIG: u8 = 78;

/// Causeway: reads PLCs over Modbus, turns tag values into production and quality events,
/// buffers them in SQLite and forwards them to ERP and QMS over HTTPS.
#[derive(Debug, Parser)]
#[command(name = "causeway", version, about)]
struct Cli {
    /// Log format on standard error.
    #[arg(long, global = true, value_enum, default_value_t = LogFormat::Text, env = "CAUSEWAY_LOG_FORMAT")]
    log_format: LogFormat,
    /// Log filter, e.g. "info" or "warn,gateway=debug" (default: info; warn for demo).
    #[arg(long, global = true, env = "CAUSEWAY_LOG")]
    log: Option<String>,
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Clone, Copy, ValueEnum)]
enum LogFormat {
    /// Human-readable lines.
    Text,
    /// One JSON object per line.
    Json,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Run the gateway until SIGTERM or SIGINT.
    Run {
        /// The configuration file.
        #[arg(short, long, env = "CAUSEWAY_CONFIG")]
        config: PathBuf,
    },
    /// Check a configuration file: every problem with file:line:col and a hint; exit 78 on error.
    Check {
        /// The configuration file.
        #[arg(short, long, env = "CAUSEWAY_CONFIG")]
        config: PathBuf,
        /// Also print each Modbus source's read plan (the coalesced requests).
        #[arg(long)]
        plan: bool,
        /// Treat warnings as errors.
        #[arg(long)]
        deny_warnings: bool,
    },
    /// Run a simulated press line through the whole pipeline to a local HTTPS receiver.
    Demo {
        /// How long to run.
        #[arg(long = "for", default_value = "30s")]
        duration: HumanDuration,
    },
    /// Serve the simulated press line over Modbus TCP, for other tools.
    Simulate {
        /// Address to serve Modbus TCP on, e.g. 127.0.0.1:5020.
        #[arg(long)]
        modbus: SocketAddr,
        /// Stop after this long (default: until SIGTERM or SIGINT).
        #[arg(long = "for")]
        duration: Option<HumanDuration>,
    },
}

pub(crate) fn main() -> ExitCode {
    let cli = Cli::parse();
    let default_level = if matches!(cli.command, Command::Demo { .. }) {
        "warn"
    } else {
        "info"
    };
    init_logging(cli.log_format, cli.log.as_deref().unwrap_or(default_level));
    match dispatch(cli.command) {
        Ok(code) => code,
        Err(error) => {
            eprintln!("causeway: {error:#}");
            ExitCode::FAILURE
        }
    }
}

fn init_logging(format: LogFormat, filter: &str) {
    let filter = tracing_subscriber::EnvFilter::try_new(filter).unwrap_or_else(|error| {
        eprintln!("causeway: log filter `{filter}` is invalid ({error}); using \"info\"");
        tracing_subscriber::EnvFilter::new("info")
    });
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    match format {
        LogFormat::Text => builder.with_ansi(std::io::stderr().is_terminal()).init(),
        LogFormat::Json => builder.json().init(),
    }
}

fn runtime() -> Result<tokio::runtime::Runtime> {
    tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .context("starting the async runtime")
}

fn dispatch(command: Command) -> Result<ExitCode> {
    match command {
        Command::Check {
            config,
            plan,
            deny_warnings,
        } => check(&config, plan, deny_warnings),
        Command::Run { config } => run(&config),
        Command::Demo { duration } => {
            let summary = runtime()?.block_on(async {
                let mut out = std::io::stdout();
                gateway::demo::run(duration.0, &mut out).await
            })?;
            Ok(if summary.lost == 0 {
                ExitCode::SUCCESS
            } else {
                ExitCode::FAILURE
            })
        }
        Command::Simulate { modbus, duration } => simulate_line(modbus, duration.map(|d| d.0)),
    }
}

/// Reads and validates; on errors prints the report and returns the exit code to use.
fn load(path: &Path) -> Result<Result<ValidatedConfig, ExitCode>> {
    let text = std::fs::read_to_string(path)
        .with_context(|| format!("cannot read config `{}`", path.display()))?;
    let name = path.display().to_string();
    let color = std::io::stderr().is_terminal();
    Ok(match firmware_config::load(&name, &text) {
        Ok(config) => {
            if !config.warnings().problems.is_empty() {
                eprint!("{}", config.warnings().render(color));
            }
            Ok(config)
        }
        Err(report) => {
            eprint!("{}", report.render(color));
            eprintln!("{report}");
            Err(ExitCode::from(EX_CONFIG))
        }
    })
}

fn check(path: &Path, show_plan: bool, deny_warnings: bool) -> Result<ExitCode> {
    let config = match load(path)? {
        Ok(config) => config,
        Err(code) => return Ok(code),
    };
    let warnings = config.warnings().warning_count();
    let mut tags = 0;
    let mut reads = 0;
    let mut plans = Vec::new();
    for source in &config.sources {
        match source {
            SourceConfig::ModbusTcp(m) => {
                let plan = ReadPlan::new(&m.tags, m.max_gap);
                tags += m.tags.len();
                reads += plan.requests.len();
                plans.push((m, plan));
            }
        }
    }
    let plural = |n: usize, word: &str| format!("{n} {word}{}", if n == 1 { "" } else { "s" });
    let verdict = match (warnings, deny_warnings) {
        (0, _) => "ok".to_owned(),
        (n, false) => format!("ok with {}", plural(n, "warning")),
        (n, true) => format!("refused: {} (--deny-warnings)", plural(n, "warning")),
    };
    println!(
        "{}: {verdict}: {} ({} in {}), {}, {}",
        path.display(),
        plural(config.sources.len(), "source"),
        plural(tags, "tag"),
        plural(reads, "read"),
        plural(config.rules.len(), "rule"),
        plural(config.sinks.len(), "sink"),
    );
    if show_plan {
        for (source, plan) in &plans {
            print!("{}", ShownPlan { source, plan });
        }
    }
    Ok(if warnings > 0 && deny_warnings {
        ExitCode::from(EX_CONFIG)
    } else {
        ExitCode::SUCCESS
    })
}

fn run(path: &Path) -> Result<ExitCode> {
    let config = match load(path)? {
        Ok(config) => config,
        Err(code) => return Ok(code),
    };
    let base = path
        .parent()
        .map_or_else(|| PathBuf::from("."), Path::to_path_buf);
    runtime()?.block_on(async {
        let running = topology::start(&config, &base).context("starting the pipeline")?;
        shutdown_signal()
            .await
            .context("installing signal handlers")?;
        tracing::info!("Shutting down: stopping sources, draining the buffer.");
        let drained = running.shutdown().await;
        tracing::info!(?drained, "Stopped.");
        Ok(ExitCode::SUCCESS)
    })
}

fn simulate_line(addr: SocketAddr, duration: Option<Duration>) -> Result<ExitCode> {
    runtime()?.block_on(async {
        let listener = tokio::net::TcpListener::bind(addr).await.with_context(|| format!("cannot listen on {addr}"))?;
        let tasks = TaskTracker::new();
        let cancel = CancellationToken::new();
        simulate::spawn(listener, &tasks, cancel.clone());
        tasks.close();
        println!("simulate: press line on modbus-tcp {addr}, unit 1 (register map: causeway simulate --help, docs/simulator.md)");
        match duration {
            Some(d) => tokio::time::sleep(d).await,
            None => shutdown_signal().await.context("installing signal handlers")?,
        }
        cancel.cancel();
        tasks.wait().await;
        Ok(ExitCode::SUCCESS)
    })
}

/// Resolves on SIGTERM or SIGINT.
async fn shutdown_signal() -> std::io::Result<()> {
    #[cfg(unix)]
    {
        let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())?;
        tokio::select! {
            _ = term.recv() => Ok(()),
            result = tokio::signal::ctrl_c() => result,
        }
    }
    #[cfg(not(unix))]
    {
        tokio::signal::ctrl_c().await
    }
}
