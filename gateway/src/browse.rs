//! `causeway opcua browse`: a server's address space as a tree, or as tag entries to paste
//! into a source's `tags`.

use std::{collections::HashSet, io::Write, path::PathBuf, sync::Arc, time::Duration};

use anyhow::{Context, Result, bail};
use firmware_config::{OpcUaConfig, UaIdentity, UaMode, UaNodeId, UaPolicy, UaReading};
use protocols::opcua::{
    browse::{self, BrowseOptions, Found},
    connect::Connector,
    convert,
};

/// What to browse and how to connect.
#[derive(Debug, Clone)]
pub struct BrowseArgs {
    /// `opc.tcp://host:port[/path]`.
    pub endpoint: String,
    /// As a source's `security_policy`.
    pub policy: UaPolicy,
    /// As a source's `security_mode`.
    pub mode: UaMode,
    /// As a source's identity.
    pub identity: UaIdentity,
    /// The client's certificates.
    pub pki_dir: PathBuf,
    /// Where to start (default: the Objects folder).
    pub node: Option<UaNodeId>,
    /// Levels below the start.
    pub depth: usize,
    /// Print tag entries instead of a tree.
    pub toml: bool,
    /// Stop after this many nodes.
    pub max_nodes: usize,
    /// Per-request deadline.
    pub timeout: Duration,
}

/// Connects, browses and prints. Progress goes to `progress` (standard error), the result to
/// `out`.
pub async fn run(args: &BrowseArgs, out: &mut dyn Write, progress: &mut dyn Write) -> Result<()> {
    let config = OpcUaConfig {
        name: "browse".into(),
        endpoint: args.endpoint.clone(),
        policy: args.policy,
        mode: args.mode,
        identity: args.identity.clone(),
        pki_dir: Some(args.pki_dir.clone()),
        reading: UaReading::Poll {
            interval: Duration::from_secs(1),
        },
        timeout: args.timeout,
        tags: Vec::new(),
    };
    let pki = args.pki_dir.clone();
    let config = Arc::new(config);
    let mut connector = tokio::task::spawn_blocking({
        let config = config.clone();
        move || Connector::new(config, pki)
    })
    .await?
    .map_err(anyhow::Error::msg)
    .context("setting up the OPC UA certificate folder")?;
    let live = connector
        .connect()
        .await
        .with_context(|| format!("connecting to {}", args.endpoint))?;
    let start = args
        .node
        .as_ref()
        .map_or_else(opcua::types::NodeId::objects_folder_id, convert::node_id);
    let options = BrowseOptions {
        start: start.clone(),
        depth: args.depth,
        max_nodes: args.max_nodes,
    };
    let mut last = 0;
    let result = browse::browse(&live.session, &options, |n| {
        if n >= last + 1_000 || n == 0 {
            let _ = write!(progress, "\rbrowsed {n} nodes");
            let _ = progress.flush();
            last = n;
        }
    })
    .await;
    live.close().await;
    let browse::Browsed {
        mut found,
        truncated,
        failures,
    } = match result {
        Ok(r) => r,
        Err(opcua::types::StatusCode::BadNodeIdUnknown) => bail!(
            "the server has no node {}; browse without --node to see its address space",
            browse::node_text(&start)
        ),
        Err(status) => bail!("browsing {} failed: {status}", args.endpoint),
    };
    if let Some((node, status)) = failures.first() {
        let _ = writeln!(
            progress,
            "the server would not list the children of {} node(s), e.g. {} ({status}); they are missing below",
            failures.len(),
            browse::node_text(node)
        );
    }
    let _ = writeln!(progress, "\rbrowsed {} nodes", found.len());
    if truncated {
        let _ = writeln!(
            progress,
            "stopped at {} nodes (--max-nodes); start lower with --node, or raise --max-nodes",
            args.max_nodes
        );
    }
    found.sort_by(|a, b| a.path.cmp(&b.path));
    let start_text = browse::node_text(&start);
    if args.toml {
        write_toml(&found, &args.endpoint, &start_text, out)?;
    } else {
        write_tree(&found, &start_text, out)?;
    }
    Ok(())
}

fn write_tree(found: &[Found], start: &str, out: &mut dyn Write) -> Result<()> {
    writeln!(out, "{start}")?;
    for f in found {
        let indent = "  ".repeat(f.depth);
        let name = f.path.last().map_or("", String::as_str);
        match &f.data_type {
            Some(t) => writeln!(out, "{indent}{name}  {}  {t}", browse::node_text(&f.node))?,
            None => writeln!(out, "{indent}{name}/  {}", browse::node_text(&f.node))?,
        }
    }
    Ok(())
}

fn write_toml(found: &[Found], endpoint: &str, start: &str, out: &mut dyn Write) -> Result<()> {
    let variables: Vec<&Found> = found.iter().filter(|f| f.data_type.is_some()).collect();
    writeln!(
        out,
        "# {} variables under {start} on {endpoint} (causeway opcua browse --toml)",
        variables.len()
    )?;
    writeln!(out, "tags = [")?;
    let mut names = HashSet::new();
    for f in variables {
        let node = browse::node_text(&f.node);
        let data_type = f.data_type.as_deref().unwrap_or_default();
        let base = browse::tag_name(&f.path);
        let mut name = base.clone();
        let mut n = 1;
        while !names.insert(name.clone()) {
            n += 1;
            name = format!("{base}_{n}");
        }
        let node_literal = toml_string(&node);
        match browse::config_type(data_type) {
            Some(t) => writeln!(
                out,
                "  {{ name = \"{name}\", node = {node_literal}, type = \"{t}\" }},"
            )?,
            None => writeln!(
                out,
                "  # {name}: {node} is a {data_type}, not a value Causeway reads (choose a scalar member)"
            )?,
        }
    }
    writeln!(out, "]")?;
    Ok(())
}

/// A TOML basic string.
fn toml_string(text: &str) -> String {
    let mut s = String::with_capacity(text.len() + 2);
    s.push('"');
    for c in text.chars() {
        match c {
            '"' => s.push_str("\\\""),
            '\\' => s.push_str("\\\\"),
            c if c.is_control() => s.push_str(&format!("\\u{:04X}", u32::from(c))),
            c => s.push(c),
        }
    }
    s.push('"');
    s
}
