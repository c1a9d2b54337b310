//! The command line: `run`, `check`, `demo`, `simulate`, `buffer`.

use std::{
    io::IsTerminal,
    net::SocketAddr,
    path::{Path, PathBuf},
    process::ExitCode,
    time::Duration,
};

use anyhow::{Context, Result};
use clap::{Parser, Subcommand, ValueEnum};
use firmware_config::{ValidatedConfig, units::HumanDuration};
use gateway::{demo::simulate, sources, topology};
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
        /// Print the requests this https sink would send for sample events of the types it
        /// routes (its body template rendered), the credential named but not shown.
        #[arg(long, value_name = "SINK")]
        render: Option<String>,
    },
    /// Run a simulated press line through the whole pipeline to a local HTTPS receiver.
    Demo {
        /// How long to run.
        #[arg(long = "for", default_value = "30s")]
        duration: HumanDuration,
    },
    /// Look into the buffer (works while the gateway runs) and act on its dead letters.
    Buffer {
        /// The configuration file (names the buffer and the sinks).
        #[arg(short, long, env = "CAUSEWAY_CONFIG", global = true)]
        config: Option<PathBuf>,
        #[command(subcommand)]
        action: BufferAction,
    },
    /// The audit trail: every delivery attempt per sink (when, which events, where, the
    /// answer), one JSON object per line; with --id, what became of one event at each sink.
    Audit {
        /// The configuration file (names the buffer and the sinks).
        #[arg(short, long, env = "CAUSEWAY_CONFIG")]
        config: PathBuf,
        /// Only this sink's attempts.
        #[arg(long)]
        sink: Option<String>,
        /// Only attempts since: a duration back from now ("2h", "3d") or a time
        /// ("2026-11-28T08:00:00Z").
        #[arg(long)]
        since: Option<String>,
        /// Did the sinks get this event, and when: its status and attempts at each sink.
        #[arg(long)]
        id: Option<String>,
        /// Most attempts shown (the latest).
        #[arg(long, default_value_t = 1000)]
        limit: usize,
    },
    /// MQTT tools for plant engineers.
    Mqtt {
        #[command(subcommand)]
        action: MqttAction,
    },
    /// OPC UA tools for plant engineers.
    Opcua {
        #[command(subcommand)]
        action: OpcuaAction,
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

#[derive(Debug, Subcommand)]
enum MqttAction {
    /// Print what arrives on a broker's topics, one line per message: the topic, then the
    /// payload (compact JSON, or text).
    Sub {
        /// The broker, e.g. mqtts://broker.plant.local:8883 (mqtt:// needs --insecure).
        url: String,
        /// Topic filters; + and # wildcards allowed.
        #[arg(required = true)]
        topics: Vec<String>,
        /// How to show payloads.
        #[arg(long, value_enum, default_value_t = SubFormat::Json)]
        format: SubFormat,
        /// Allow a plain mqtt:// URL.
        #[arg(long)]
        insecure: bool,
        /// PEM CA certificates to trust besides the system's.
        #[arg(long)]
        ca_file: Option<PathBuf>,
        /// Log in as this user (with --password-file or --password-env).
        #[arg(long)]
        username: Option<String>,
        /// File holding the password.
        #[arg(long)]
        password_file: Option<PathBuf>,
        /// Environment variable holding the password.
        #[arg(long)]
        password_env: Option<String>,
        /// PEM client certificate for mutual TLS (with --client-key).
        #[arg(long, requires = "client_key")]
        client_certificate: Option<PathBuf>,
        /// PEM key of --client-certificate.
        #[arg(long, requires = "client_certificate")]
        client_key: Option<PathBuf>,
        /// Stop after this many messages.
        #[arg(long)]
        count: Option<usize>,
        /// Stop after this long (default: until interrupted).
        #[arg(long = "for")]
        duration: Option<HumanDuration>,
        /// Larger payloads are shown by size only.
        #[arg(long, default_value_t = 65_536)]
        max_payload: usize,
    },
}

#[derive(Debug, Clone, Copy, ValueEnum)]
enum SubFormat {
    /// JSON, printed compactly (a malformed message says why).
    Json,
    /// Text, control characters escaped.
    Text,
    /// Sparkplug B, decoded (metrics by alias named from the births seen).
    Sparkplug,
}

#[derive(Debug, Subcommand)]
enum OpcuaAction {
    /// Print a server's address space as a tree (node ids and data types), or with --toml as
    /// tag entries ready to paste into an opcua source.
    Browse {
        /// The server, e.g. opc.tcp://192.168.10.30:4840
        endpoint: String,
        /// Start at this node instead of the Objects folder, e.g. "ns=2;s=Line3".
        #[arg(long)]
        node: Option<String>,
        /// Levels below the start.
        #[arg(long, default_value_t = 3)]
        depth: usize,
        /// Print `tags = [ ... ]` entries instead of a tree.
        #[arg(long)]
        toml: bool,
        /// Stop after this many nodes.
        #[arg(long, default_value_t = 100_000)]
        max_nodes: usize,
        /// None, Basic256Sha256, Aes128_Sha256_RsaOaep or Aes256_Sha256_RsaPss.
        #[arg(long, default_value = "None")]
        security_policy: String,
        /// Sign or SignAndEncrypt (default with a policy: SignAndEncrypt).
        #[arg(long)]
        security_mode: Option<String>,
        /// Log in as this user (with --password-file or --password-env).
        #[arg(long)]
        username: Option<String>,
        /// File holding the password.
        #[arg(long)]
        password_file: Option<PathBuf>,
        /// Environment variable holding the password.
        #[arg(long)]
        password_env: Option<String>,
        /// X.509 user certificate (with --user-key).
        #[arg(long, requires = "user_key")]
        user_certificate: Option<PathBuf>,
        /// Private key of --user-certificate.
        #[arg(long, requires = "user_certificate")]
        user_key: Option<PathBuf>,
        /// The client's certificate folder (own/, trusted/, rejected/); use the one beside the
        /// gateway's buffer so a server trusts both alike.
        #[arg(long, default_value = "pki")]
        pki_dir: PathBuf,
        /// Per-request deadline.
        #[arg(long, default_value = "10s")]
        timeout: HumanDuration,
    },
}

#[derive(Debug, Subcommand)]
enum BufferAction {
    /// Depth, bytes and oldest undelivered age per sink; dead letters; drops by type and reason.
    Stats,
    /// Dead letters with their reasons, one JSON object per line.
    List {
        /// Only this sink's.
        #[arg(long)]
        sink: Option<String>,
    },
    /// Dead letters with the events themselves, as JSON lines.
    Export {
        /// Only this sink's.
        #[arg(long)]
        sink: Option<String>,
    },
    /// Send dead letters again, each to the sink that refused it.
    Requeue {
        /// Every dead letter.
        #[arg(long, conflicts_with_all = ["sink", "id"], required_unless_present_any = ["sink", "id"])]
        all: bool,
        /// Only this sink's.
        #[arg(long)]
        sink: Option<String>,
        /// Only this event id.
        #[arg(long)]
        id: Option<String>,
    },
    /// Delete dead letters for good.
    Purge {
        /// Only this sink's.
        #[arg(long)]
        sink: Option<String>,
        /// Required: purging cannot be undone.
        #[arg(long)]
        yes: bool,
    },
}

pub(crate) fn main() -> ExitCode {
    let cli = Cli::parse();
    let default_level = if matches!(cli.command, Command::Demo { .. }) {
        "warn"
    } else {
        "info"
    };
    // async-opcua logs what Causeway reports itself, with the fix: keep only its errors.
    let default_filter = format!(
        "{default_level},opcua_client=error,opcua_core=error,opcua_crypto=error,opcua_server=error,opcua_nodes=error,opcua_types=error"
    );
    init_logging(
        cli.log_format,
        cli.log.as_deref().unwrap_or(&default_filter),
    );
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
            render,
        } => check(&config, plan, deny_warnings, render.as_deref()),
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
        Command::Opcua { action } => opcua(action),
        Command::Mqtt { action } => mqtt(action),
        Command::Simulate { modbus, duration } => simulate_line(modbus, duration.map(|d| d.0)),
        Command::Audit {
            config,
            sink,
            since,
            id,
            limit,
        } => audit(
            &config,
            sink.as_deref(),
            since.as_deref(),
            id.as_deref(),
            limit,
        ),
        Command::Buffer { config, action } => {
            let config = config.context(
                "give the configuration file: causeway buffer <action> -c causeway.toml",
            )?;
            buffer(&config, action)
        }
    }
}

fn buffer(path: &Path, action: BufferAction) -> Result<ExitCode> {
    use gateway::store::admin;
    let (config, base) = match load_with_base(path)? {
        Ok(loaded) => loaded,
        Err(code) => return Ok(code),
    };
    let file = base.join(&config.buffer.path);
    let mut conn = admin::open_existing(&file)
        .with_context(|| format!("opening buffer `{}`", file.display()))?;
    let mut out = std::io::stdout().lock();
    let mut line = |v: &serde_json::Value| -> Result<()> {
        use std::io::Write;
        writeln!(out, "{v}").context("writing to stdout")
    };
    match action {
        BufferAction::Stats => {
            let sinks: Vec<(String, Vec<String>)> = config
                .sinks
                .iter()
                .map(|s| (s.name.clone(), s.routes.clone()))
                .collect();
            let stats = admin::stats(&conn, &sinks)?;
            println!("{}", serde_json::to_string_pretty(&stats)?);
        }
        BufferAction::List { sink } => {
            for v in admin::dead_letters(&conn, sink.as_deref(), false)? {
                line(&v)?;
            }
        }
        BufferAction::Export { sink } => {
            for v in admin::dead_letters(&conn, sink.as_deref(), true)? {
                line(&v)?;
            }
        }
        BufferAction::Requeue { all: _, sink, id } => {
            let n = admin::requeue(&mut conn, sink.as_deref(), id.as_deref())?;
            eprintln!(
                "buffer: requeued {n} dead letters; each goes again to the sink that refused it"
            );
        }
        BufferAction::Purge { sink, yes } => {
            if !yes {
                eprintln!(
                    "buffer: purge deletes dead letters for good; add --yes to do it (export them first: causeway buffer export)"
                );
                return Ok(ExitCode::from(2));
            }
            let n = admin::purge(&conn, sink.as_deref())?;
            eprintln!("buffer: purged {n} dead letters");
        }
    }
    Ok(ExitCode::SUCCESS)
}

/// `--since`: a duration back from now, or an RFC 3339 time; ms since the epoch.
fn since_ms(text: &str) -> Result<i64> {
    let at = match humantime::parse_duration(text) {
        Ok(back) => std::time::SystemTime::now()
            .checked_sub(back)
            .unwrap_or(std::time::UNIX_EPOCH),
        Err(_) => humantime::parse_rfc3339_weak(text).map_err(|_| {
            anyhow::anyhow!(
                "--since `{text}` is neither a duration (\"2h\", \"3d\") nor a time (\"2026-11-28T08:00:00Z\")"
            )
        })?,
    };
    Ok(at
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| i64::try_from(d.as_millis()).unwrap_or(i64::MAX)))
}

fn audit(
    path: &Path,
    sink: Option<&str>,
    since: Option<&str>,
    id: Option<&str>,
    limit: usize,
) -> Result<ExitCode> {
    use gateway::store::admin;
    let (config, base) = match load_with_base(path)? {
        Ok(loaded) => loaded,
        Err(code) => return Ok(code),
    };
    if let Some(sink) = sink
        && !config.sinks.iter().any(|s| s.name == sink)
    {
        let names: Vec<&str> = config.sinks.iter().map(|s| s.name.as_str()).collect();
        anyhow::bail!(
            "no sink `{sink}` in `{}`; its sinks: {}",
            path.display(),
            names.join(", ")
        );
    }
    let since = since.map(since_ms).transpose()?;
    let file = base.join(&config.buffer.path);
    let conn = admin::open_existing(&file)
        .with_context(|| format!("opening buffer `{}`", file.display()))?;
    if let Some(id) = id {
        let sinks: Vec<_> = config
            .sinks
            .iter()
            .filter(|s| sink.is_none_or(|n| n == s.name))
            .cloned()
            .collect();
        let answer = admin::audit_event(&conn, id, &sinks)?;
        println!("{}", serde_json::to_string_pretty(&answer)?);
        return Ok(if answer["found"] == true {
            ExitCode::SUCCESS
        } else {
            ExitCode::FAILURE
        });
    }
    let mut out = std::io::stdout().lock();
    for v in admin::audit(&conn, sink, since, limit)? {
        use std::io::Write;
        writeln!(out, "{v}").context("writing to stdout")?;
    }
    Ok(ExitCode::SUCCESS)
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

/// [`load`], and the folder relative paths in the config are taken from.
fn load_with_base(path: &Path) -> Result<Result<(ValidatedConfig, PathBuf), ExitCode>> {
    Ok(load(path)?.map(|config| {
        let base = path
            .parent()
            .map_or_else(|| PathBuf::from("."), Path::to_path_buf);
        (config, base)
    }))
}

fn check(
    path: &Path,
    show_plan: bool,
    deny_warnings: bool,
    render: Option<&str>,
) -> Result<ExitCode> {
    let (config, base) = match load_with_base(path)? {
        Ok(loaded) => loaded,
        Err(code) => return Ok(code),
    };
    let mut failed = false;
    // A webhook source's certificate, key and secret are read now: a start would fail on them.
    for source in &config.sources {
        if let firmware_config::SourceConfig::Webhook(_) = source
            && let Err(why) = sources::preflight(
                source,
                sources::Paths {
                    gateway_id: &config.gateway_id,
                    base: &base,
                    buffer: &base.join(&config.buffer.path),
                },
            )
        {
            eprintln!("error: {why}");
            failed = true;
        }
    }
    // Every body template is loaded and rendered against sample events of the types its sink
    // routes: a template that fails here would fail on real events.
    let samples =
        gateway::sinks::samples::sample_events(&config.gateway_id, std::time::SystemTime::now());
    let mut rendered = None;
    for sink in &config.sinks {
        let templated = matches!(
            &sink.kind,
            firmware_config::SinkKind::Https(h) if matches!(h.body, firmware_config::Body::Template(_))
        );
        if !templated && render != Some(sink.name.as_str()) {
            continue;
        }
        // A sink whose routes take only types no rule makes yet (no sample) has nothing to
        // render: not an error for `check`, but one for `--render`.
        let shown = render == Some(sink.name.as_str());
        if !shown && !samples.iter().any(|e| sink.accepts(&e.event_type)) {
            continue;
        }
        match gateway::sinks::preview(sink, &samples, &base) {
            Ok(requests) => {
                if shown {
                    rendered = Some(requests);
                }
            }
            Err(why) => {
                eprintln!("error: {why}");
                failed = true;
            }
        }
    }
    if let Some(name) = render
        && !config.sinks.iter().any(|s| s.name == name)
    {
        let names: Vec<&str> = config.sinks.iter().map(|s| s.name.as_str()).collect();
        eprintln!(
            "error: no sink `{name}` to render in `{}`; its sinks: {}",
            path.display(),
            names.join(", ")
        );
        failed = true;
    }
    if failed {
        return Ok(ExitCode::from(EX_CONFIG));
    }
    if let Some(requests) = rendered {
        for (i, request) in requests.iter().enumerate() {
            if i > 0 {
                println!();
            }
            println!("{}", request.request_line);
            for (name, value) in &request.headers {
                println!("{name}: {value}");
            }
            println!();
            println!("{}", request.body);
        }
        return Ok(ExitCode::SUCCESS);
    }
    let warnings = config.warnings().warning_count();
    let buffer = base.join(&config.buffer.path);
    let paths = sources::Paths {
        gateway_id: &config.gateway_id,
        base: &base,
        buffer: &buffer,
    };
    let plans: Vec<sources::Planned> = config
        .sources
        .iter()
        .map(|s| sources::plan(s, paths))
        .collect();
    let tags = plans.iter().map(|p| p.tags).sum();
    let reads = plans.iter().map(|p| p.reads).sum();
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
        for plan in &plans {
            print!("{}", plan.shown);
        }
    }
    Ok(if warnings > 0 && deny_warnings {
        ExitCode::from(EX_CONFIG)
    } else {
        ExitCode::SUCCESS
    })
}

fn run(path: &Path) -> Result<ExitCode> {
    let (config, base) = match load_with_base(path)? {
        Ok(loaded) => loaded,
        Err(code) => return Ok(code),
    };
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

fn mqtt(action: MqttAction) -> Result<ExitCode> {
    let MqttAction::Sub {
        url,
        topics,
        format,
        insecure,
        ca_file,
        username,
        password_file,
        password_env,
        client_certificate,
        client_key,
        count,
        duration,
        max_payload,
    } = action;
    let parsed = url::Url::parse(&url).with_context(|| format!("`{url}` is not a URL"))?;
    let tls = match parsed.scheme() {
        "mqtts" | "ssl" => true,
        "mqtt" | "tcp" if insecure => false,
        "mqtt" | "tcp" => anyhow::bail!(
            "`{url}` is not encrypted; use mqtts://, or add --insecure on a network you trust"
        ),
        other => anyhow::bail!("`{url}` is not an MQTT URL (scheme `{other}`)"),
    };
    let host = parsed
        .host_str()
        .filter(|h| !h.is_empty())
        .with_context(|| format!("`{url}` has no host"))?
        .trim_matches(['[', ']'])
        .to_owned();
    let port = parsed.port().unwrap_or(if tls { 8883 } else { 1883 });
    let tls = if tls {
        let config = match (&client_certificate, &client_key) {
            (Some(c), Some(k)) => {
                gateway::tls::client_config_with_identity(ca_file.as_deref(), c, k)
            }
            _ => gateway::tls::client_config(ca_file.as_deref()),
        }
        .map_err(|e| anyhow::anyhow!(gateway::error_chain(&e)))?;
        Some(std::sync::Arc::new(config))
    } else {
        None
    };
    let credentials = match (username, password_file, password_env) {
        (None, None, None) => None,
        (Some(user), Some(file), None) => Some((
            user,
            protocols::secret::read_env(
                &firmware_config::Secret::File(file),
                std::path::Path::new(""),
            )
            .map_err(|why| anyhow::anyhow!(why))?,
        )),
        (Some(user), None, Some(env)) => Some((
            user,
            protocols::secret::read_env(
                &firmware_config::Secret::Env(env),
                std::path::Path::new(""),
            )
            .map_err(|why| anyhow::anyhow!(why))?,
        )),
        _ => anyhow::bail!("give --username with one of --password-file or --password-env"),
    };
    let args = gateway::mqtt_sub::SubArgs {
        host,
        port,
        tls,
        credentials,
        topics,
        format: match format {
            SubFormat::Json => gateway::mqtt_sub::Shown::Json,
            SubFormat::Text => gateway::mqtt_sub::Shown::Text,
            SubFormat::Sparkplug => gateway::mqtt_sub::Shown::Sparkplug,
        },
        count,
        duration: duration.map(|d| d.0),
        max_payload: max_payload.clamp(16, 16 << 20),
    };
    runtime()?.block_on(async {
        let mut out = std::io::stdout().lock();
        gateway::mqtt_sub::run(&args, &mut out).await
    })?;
    Ok(ExitCode::SUCCESS)
}

fn opcua(action: OpcuaAction) -> Result<ExitCode> {
    let OpcuaAction::Browse {
        endpoint,
        node,
        depth,
        toml,
        max_nodes,
        security_policy,
        security_mode,
        username,
        password_file,
        password_env,
        user_certificate,
        user_key,
        pki_dir,
        timeout,
    } = action;
    use firmware_config::{Secret, UaIdentity, UaMode, UaNodeId, UaPolicy};
    let names: Vec<&str> = UaPolicy::ALL.iter().map(|(n, _)| *n).collect();
    let policy = UaPolicy::ALL
        .iter()
        .find(|(n, _)| n.eq_ignore_ascii_case(&security_policy))
        .map(|(_, p)| *p)
        .with_context(|| {
            format!(
                "unknown security policy `{security_policy}`; policies: {}",
                names.join(", ")
            )
        })?;
    let mode = match (
        security_mode.as_deref().map(str::to_ascii_lowercase),
        policy,
    ) {
        (None, UaPolicy::None) => UaMode::None,
        (None, _) => UaMode::SignAndEncrypt,
        (Some(m), UaPolicy::None) if m == "none" => UaMode::None,
        (Some(m), p) if p != UaPolicy::None && m == "sign" => UaMode::Sign,
        (Some(m), p) if p != UaPolicy::None && m == "signandencrypt" => UaMode::SignAndEncrypt,
        (Some(m), p) => anyhow::bail!(
            "security mode `{m}` does not go with policy {}: use None with None, Sign or SignAndEncrypt with the others",
            p.name()
        ),
    };
    let identity = match (
        username,
        password_file,
        password_env,
        user_certificate,
        user_key,
    ) {
        (None, None, None, None, None) => UaIdentity::Anonymous,
        (Some(user), Some(file), None, None, None) => UaIdentity::UserName {
            user,
            password: Secret::File(file),
        },
        (Some(user), None, Some(env), None, None) => UaIdentity::UserName {
            user,
            password: Secret::Env(env),
        },
        (None, None, None, Some(certificate), Some(key)) => UaIdentity::X509 { certificate, key },
        _ => anyhow::bail!(
            "give --username with one of --password-file or --password-env, or --user-certificate with --user-key"
        ),
    };
    let node = node
        .map(|text| {
            UaNodeId::parse(&text).with_context(|| {
                format!("`{text}` is not a node id; write it like \"ns=2;s=Line3\" or \"i=85\"")
            })
        })
        .transpose()?;
    if !endpoint.starts_with("opc.tcp://") {
        anyhow::bail!(
            "`{endpoint}` is not an opc.tcp:// endpoint, e.g. opc.tcp://192.168.10.30:4840"
        );
    }
    if !(1..=64).contains(&depth) {
        anyhow::bail!("--depth {depth} is out of range 1..=64");
    }
    if !(Duration::from_millis(100)..=Duration::from_secs(300)).contains(&timeout.0) {
        anyhow::bail!("--timeout must lie between 100ms and 5m");
    }
    let args = gateway::browse::BrowseArgs {
        endpoint,
        policy,
        mode,
        identity,
        pki_dir,
        node,
        depth,
        toml,
        max_nodes: max_nodes.max(1),
        timeout: timeout.0,
    };
    runtime()?.block_on(async {
        let mut out = std::io::stdout().lock();
        let mut err = std::io::stderr();
        gateway::browse::run(&args, &mut out, &mut err).await
    })?;
    Ok(ExitCode::SUCCESS)
}

fn simulate_line(addr: SocketAddr, duration: Option<Duration>) -> Result<ExitCode> {
    runtime()?.block_on(async {
        let listener = tokio::net::TcpListener::bind(addr).await.with_context(|| format!("cannot listen on {addr}"))?;
        let tasks = TaskTracker::new();
        let cancel = CancellationToken::new();
        simulate::spawn(listener, None, &tasks, cancel.clone());
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
