//! `causeway opcua browse` against an in-process OPC UA server: the tree, tag entries that load
//! as a source's tags, the node limit, and a large address space with its progress line.

use std::time::Duration;

use firmware_config::{SourceConfig, UaIdentity, UaMode, UaPolicy};
use gateway::browse::{BrowseArgs, run};
use protocols::opcua::server::{ServerOptions, UaServer};

async fn server(dir: &std::path::Path, options: ServerOptions) -> UaServer {
    let _ = dir;
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    UaServer::start(&options, listener).unwrap()
}

fn args(endpoint: String, pki: std::path::PathBuf) -> BrowseArgs {
    BrowseArgs {
        endpoint,
        policy: UaPolicy::None,
        mode: UaMode::None,
        identity: UaIdentity::Anonymous,
        pki_dir: pki,
        node: None,
        depth: 3,
        toml: false,
        max_nodes: 100_000,
        timeout: Duration::from_secs(10),
    }
}

async fn browse(args: &BrowseArgs) -> (String, String) {
    let (mut out, mut progress) = (Vec::new(), Vec::new());
    tokio::time::timeout(Duration::from_secs(120), run(args, &mut out, &mut progress))
        .await
        .expect("browsing ends")
        .expect("browsing works");
    (
        String::from_utf8(out).unwrap(),
        String::from_utf8(progress).unwrap(),
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_tree_shows_node_ids_and_types_and_toml_loads_as_tags() {
    let dir = tempfile::tempdir().unwrap();
    let ua = server(
        dir.path(),
        ServerOptions::new(dir.path().join("server"))
            .variable("Press.Force", 47.5f64)
            .variable("Press.Parts", 7u32)
            .variable("Press.Order", "PO-1")
            .variable("Press \"quoted\"", true),
    )
    .await;
    let mut a = args(ua.endpoint(), dir.path().join("pki"));
    let (tree, progress) = browse(&a).await;
    assert!(tree.starts_with("i=85\n"), "{tree}");
    assert!(tree.contains("  Causeway/  ns=2;s=Causeway"), "{tree}");
    assert!(
        tree.contains("    Press.Force  ns=2;s=Press.Force  Double"),
        "{tree}"
    );
    assert!(
        tree.contains("    Press.Parts  ns=2;s=Press.Parts  UInt32"),
        "{tree}"
    );
    assert!(
        !tree.contains("Server"),
        "the Server object is skipped: {tree}"
    );
    assert!(progress.contains("browsed"), "{progress}");

    a.toml = true;
    let (toml, _) = browse(&a).await;
    assert!(
        toml.contains("node = \"ns=2;s=Press.Force\", type = \"f64\""),
        "{toml}"
    );
    // Pasted into a source, the entries load and name the same nodes.
    let config = format!(
        "gateway_id = \"g\"\n[[source]]\nname = \"ua\"\nkind = \"opcua\"\nendpoint = \"{}\"\n{toml}\n[[sink]]\nname = \"o\"\nkind = \"stdout\"\nroutes = [\"*\"]\n",
        ua.endpoint()
    );
    let loaded = firmware_config::load("pasted.toml", &config)
        .unwrap_or_else(|r| panic!("{}\n{config}", r.render(false)));
    let SourceConfig::OpcUa(source) = &loaded.config().sources[0] else {
        panic!("an opcua source")
    };
    let mut nodes: Vec<String> = source.tags.iter().map(|t| t.node.to_string()).collect();
    nodes.sort();
    assert_eq!(
        nodes,
        [
            "ns=2;s=Press \"quoted\"",
            "ns=2;s=Press.Force",
            "ns=2;s=Press.Order",
            "ns=2;s=Press.Parts"
        ]
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_large_address_space_is_browsed_to_the_end_or_to_the_limit() {
    const N: usize = 20_000;
    let dir = tempfile::tempdir().unwrap();
    let mut options = ServerOptions::new(dir.path().join("server"));
    for i in 0..N {
        options = options.variable(format!("V{i:05}"), i as i32);
    }
    let ua = server(dir.path(), options).await;
    let mut a = args(ua.endpoint(), dir.path().join("pki"));
    a.toml = true;
    let (toml, progress) = browse(&a).await;
    assert_eq!(
        toml.matches("type = \"i32\"").count(),
        N,
        "every variable, each once"
    );
    let browsed: usize = progress
        .rsplit("browsed ")
        .next()
        .and_then(|t| t.split_whitespace().next())
        .and_then(|n| n.parse().ok())
        .expect("a progress line");
    assert!(browsed > N, "{progress}");

    a.max_nodes = 5_000;
    let (toml, progress) = browse(&a).await;
    assert!(toml.matches("type = \"i32\"").count() < 5_000);
    assert!(progress.contains("stopped at 5000 nodes"), "{progress}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_start_node_the_server_does_not_know_is_an_error_not_an_empty_tree() {
    let dir = tempfile::tempdir().unwrap();
    let ua = server(
        dir.path(),
        ServerOptions::new(dir.path().join("server")).variable("A", 1i32),
    )
    .await;
    let mut a = args(ua.endpoint(), dir.path().join("pki"));
    a.node = firmware_config::UaNodeId::parse("ns=2;s=Nowhere");
    let (mut out, mut progress) = (Vec::new(), Vec::new());
    let error = tokio::time::timeout(Duration::from_secs(60), run(&a, &mut out, &mut progress))
        .await
        .expect("browsing ends")
        .expect_err("an unknown start node fails");
    assert!(
        format!("{error:#}").contains("has no node ns=2;s=Nowhere"),
        "{error:#}"
    );
    // Started below the folder, only its variables are listed.
    a.node = firmware_config::UaNodeId::parse("ns=2;s=Causeway");
    let (tree, _) = browse(&a).await;
    assert_eq!(tree, "ns=2;s=Causeway\n  A  ns=2;s=A  Int32\n");
}
