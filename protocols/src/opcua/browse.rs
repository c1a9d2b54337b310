//! Browsing a server's address space for `causeway opcua browse`: hierarchical references
//! followed breadth-first, a bounded number of requests in flight, continuation points
//! followed and released, a node limit, and each variable's data type.

use std::collections::HashSet;

use futures_util::{StreamExt, stream};
use opcua::{
    client::Session,
    types::{
        AttributeId, BrowseDescription, BrowseDirection, BrowseResultMask, ByteString, DataTypeId,
        NodeClass, NodeClassMask, NodeId, ObjectId, ReadValueId, ReferenceTypeId, StatusCode,
        TimestampsToReturn, VariableId, Variant,
    },
};

use super::{
    convert,
    source::{MAX_PER_CALL, operation_limits},
};

/// Browse requests in flight at once.
pub const CONCURRENCY: usize = 4;
/// Nodes per Browse request.
const PER_BROWSE: usize = 100;
/// Continuation rounds followed per node list before giving up on the rest.
const MAX_CONTINUATIONS: usize = 10_000;

/// One node found.
#[derive(Debug, Clone)]
pub struct Found {
    /// Levels below the start (1 = a child of it).
    pub depth: usize,
    /// Its id.
    pub node: NodeId,
    /// Browse names from the start down to it.
    pub path: Vec<String>,
    /// Object or Variable.
    pub class: NodeClass,
    /// For variables: the data type's name (`Double`), or its node id.
    pub data_type: Option<String>,
}

/// What to browse.
#[derive(Debug, Clone)]
pub struct BrowseOptions {
    /// Where to start (default: the Objects folder).
    pub start: NodeId,
    /// Levels below `start`.
    pub depth: usize,
    /// Stop after this many nodes.
    pub max_nodes: usize,
}

/// What a browse found.
#[derive(Debug, Default)]
pub struct Browsed {
    /// The nodes, breadth-first (sort by path to print a tree).
    pub found: Vec<Found>,
    /// `max_nodes` was reached.
    pub truncated: bool,
    /// Nodes whose children the server would not list, and why.
    pub failures: Vec<(NodeId, StatusCode)>,
}

/// Statuses that mean the session, not a node, failed: the browse stops.
fn fatal(status: StatusCode) -> bool {
    matches!(
        status,
        StatusCode::BadTimeout
            | StatusCode::BadConnectionClosed
            | StatusCode::BadNotConnected
            | StatusCode::BadSessionClosed
            | StatusCode::BadSessionIdInvalid
            | StatusCode::BadSecureChannelClosed
            | StatusCode::BadCommunicationError
            | StatusCode::BadServerHalted
            | StatusCode::BadSecureChannelIdInvalid
            | StatusCode::BadSessionNotActivated
            | StatusCode::BadRequestInterrupted
            | StatusCode::BadShutdown
    )
}

/// The tree below `options.start`. `progress` is called with the count found so far after
/// each request. The server's Server object (diagnostics, hundreds of nodes) is skipped unless
/// it is the start. A start node the server does not know is an error; a node deeper down whose
/// children cannot be listed is recorded in [`Browsed::failures`] and the browse goes on.
pub async fn browse(
    session: &Session,
    options: &BrowseOptions,
    mut progress: impl FnMut(usize),
) -> Result<Browsed, StatusCode> {
    let (per_browse, per_read) = limits(session).await;
    // Some servers list no children for a node they do not have: ask for the start itself.
    let start = session
        .read(
            &[ReadValueId {
                node_id: options.start.clone(),
                attribute_id: AttributeId::NodeClass as u32,
                ..ReadValueId::default()
            }],
            TimestampsToReturn::Neither,
            0.0,
        )
        .await?;
    if let Some(status) = start
        .first()
        .and_then(|dv| dv.status)
        .filter(|s| s.is_bad())
    {
        return Err(status);
    }
    let mut out = Browsed::default();
    let mut seen: HashSet<NodeId> = HashSet::from([options.start.clone()]);
    let server = NodeId::from(ObjectId::Server);
    let mut level: Vec<(NodeId, Vec<String>)> = vec![(options.start.clone(), Vec::new())];
    for depth in 1..=options.depth {
        if level.is_empty() {
            break;
        }
        let chunks: Vec<Vec<(NodeId, Vec<String>)>> =
            level.chunks(per_browse).map(<[_]>::to_vec).collect();
        let budget = options.max_nodes.saturating_sub(out.found.len());
        let mut results = stream::iter(chunks)
            .map(|chunk| async move {
                let children = children(session, &chunk, budget).await;
                (chunk, children)
            })
            .buffered(CONCURRENCY);
        let mut next = Vec::new();
        while let Some((chunk, children)) = results.next().await {
            let (children, failures) = match children {
                Ok(c) => c,
                Err(status) if fatal(status) || depth == 1 => return Err(status),
                Err(status) => (
                    Vec::new(),
                    chunk.iter().map(|(n, _)| (n.clone(), status)).collect(),
                ),
            };
            if let (1, Some((_, status))) = (depth, failures.first()) {
                return Err(*status);
            }
            out.failures.extend(failures);
            for (parent_path, reference) in children {
                let Some(node) = reference.0 else { continue };
                if node == server && options.start != server || !seen.insert(node.clone()) {
                    continue;
                }
                if out.found.len() >= options.max_nodes {
                    out.truncated = true;
                    break;
                }
                let mut path = parent_path.clone();
                path.push(reference.1);
                if reference.2 == NodeClass::Object || reference.2 == NodeClass::Variable {
                    next.push((node.clone(), path.clone()));
                }
                out.found.push(Found {
                    depth,
                    node,
                    path,
                    class: reference.2,
                    data_type: None,
                });
            }
            progress(out.found.len());
            if out.truncated {
                break;
            }
        }
        if out.truncated {
            break;
        }
        level = next;
    }
    data_types(session, &mut out.found, per_read).await?;
    Ok(out)
}

/// The server's MaxNodesPerBrowse and MaxNodesPerRead, capped at ours.
async fn limits(session: &Session) -> (usize, usize) {
    let [browse, read] = operation_limits(
        session,
        [
            (
                VariableId::Server_ServerCapabilities_OperationLimits_MaxNodesPerBrowse,
                PER_BROWSE,
            ),
            (
                VariableId::Server_ServerCapabilities_OperationLimits_MaxNodesPerRead,
                MAX_PER_CALL,
            ),
        ],
    )
    .await;
    (browse, read)
}

type Child = (Option<NodeId>, String, NodeClass);
type Children = (Vec<(Vec<String>, Child)>, Vec<(NodeId, StatusCode)>);

/// The children of each node of `chunk`, with their parents' paths, and the nodes the server
/// would not list. Continuation points are followed until `budget` children are in hand, then
/// released.
async fn children(
    session: &Session,
    chunk: &[(NodeId, Vec<String>)],
    budget: usize,
) -> Result<Children, StatusCode> {
    let descriptions: Vec<BrowseDescription> = chunk
        .iter()
        .map(|(node, _)| BrowseDescription {
            node_id: node.clone(),
            browse_direction: BrowseDirection::Forward,
            reference_type_id: ReferenceTypeId::HierarchicalReferences.into(),
            include_subtypes: true,
            node_class_mask: (NodeClassMask::OBJECT | NodeClassMask::VARIABLE).bits(),
            result_mask: BrowseResultMask::All as u32,
        })
        .collect();
    let mut out = Vec::new();
    let mut failures = Vec::new();
    let results = session.browse(&descriptions, 1_000, None).await?;
    let mut pending: Vec<(usize, ByteString)> = Vec::new();
    for (i, result) in results.into_iter().enumerate() {
        let Some((node, path)) = chunk.get(i) else {
            break;
        };
        if result.status_code.is_bad() {
            failures.push((node.clone(), result.status_code));
            continue;
        }
        for r in result.references.into_iter().flatten() {
            out.push((path.clone(), child(&r)));
        }
        if !result.continuation_point.is_null() {
            pending.push((i, result.continuation_point));
        }
    }
    let mut rounds = 0;
    while !pending.is_empty() {
        rounds += 1;
        let points: Vec<ByteString> = pending.iter().map(|(_, p)| p.clone()).collect();
        if rounds > MAX_CONTINUATIONS || out.len() >= budget {
            let _ = session.browse_next(true, &points).await;
            break;
        }
        let results = match session.browse_next(false, &points).await {
            Ok(r) => r,
            Err(status) => {
                let _ = session.browse_next(true, &points).await;
                return Err(status);
            }
        };
        let answered = results.len();
        let mut still = Vec::new();
        for ((i, _), result) in pending.iter().zip(results) {
            if result.status_code.is_bad() {
                // An expired or invalid continuation point: the rest of this node's children
                // are missing, and said so.
                failures.push((chunk[*i].0.clone(), result.status_code));
                continue;
            }
            for r in result.references.into_iter().flatten() {
                out.push((chunk[*i].1.clone(), child(&r)));
            }
            if !result.continuation_point.is_null() {
                still.push((*i, result.continuation_point));
            }
        }
        if answered < pending.len() {
            // Points the server did not answer for: released, and their nodes reported.
            let unanswered: Vec<ByteString> =
                pending[answered..].iter().map(|(_, p)| p.clone()).collect();
            let _ = session.browse_next(true, &unanswered).await;
            for (i, _) in &pending[answered..] {
                failures.push((chunk[*i].0.clone(), StatusCode::BadNoContinuationPoints));
            }
        }
        pending = still;
    }
    Ok((out, failures))
}

fn child(r: &opcua::types::ReferenceDescription) -> Child {
    let node = (r.node_id.namespace_uri.is_null() && r.node_id.server_index == 0)
        .then(|| r.node_id.node_id.clone());
    let name = r.browse_name.name.value().clone().unwrap_or_default();
    (node, name, r.node_class)
}

/// Reads the DataType attribute of every variable.
async fn data_types(
    session: &Session,
    found: &mut [Found],
    per_read: usize,
) -> Result<(), StatusCode> {
    let variables: Vec<usize> = (0..found.len())
        .filter(|&i| found[i].class == NodeClass::Variable)
        .collect();
    for chunk in variables.chunks(per_read.max(1)) {
        let read: Vec<ReadValueId> = chunk
            .iter()
            .map(|&i| ReadValueId {
                node_id: found[i].node.clone(),
                attribute_id: AttributeId::DataType as u32,
                ..ReadValueId::default()
            })
            .collect();
        let values = session
            .read(&read, TimestampsToReturn::Neither, 0.0)
            .await?;
        for (&i, dv) in chunk.iter().zip(values) {
            if let Some(Variant::NodeId(id)) = dv.value {
                found[i].data_type = Some(type_name(&id));
            }
        }
    }
    Ok(())
}

/// The name of a built-in data type, else the type's node id.
pub fn type_name(id: &NodeId) -> String {
    if let (0, opcua::types::Identifier::Numeric(n)) = (id.namespace, &id.identifier)
        && let Ok(t) = DataTypeId::try_from(*n)
    {
        return format!("{t:?}");
    }
    id.to_string()
}

/// The config type of a built-in data type name, where one fits.
pub fn config_type(name: &str) -> Option<&'static str> {
    Some(match name {
        "Boolean" => "bool",
        "SByte" => "i8",
        "Byte" => "u8",
        "Int16" => "i16",
        "UInt16" => "u16",
        "Int32" => "i32",
        "UInt32" => "u32",
        "Int64" => "i64",
        "UInt64" => "u64",
        "Float" => "f32",
        "Double" => "f64",
        "String" | "LocalizedText" => "string",
        _ => return None,
    })
}

/// A tag name from a browse path: its parts joined by `_`, each cut to letters, digits, `-`
/// and `_`.
pub fn tag_name(path: &[String]) -> String {
    let name: String = path
        .iter()
        .map(|p| {
            p.chars()
                .map(|c| {
                    if c.is_ascii_alphanumeric() || c == '-' || c == '_' {
                        c
                    } else {
                        '_'
                    }
                })
                .collect::<String>()
        })
        .collect::<Vec<_>>()
        .join("_");
    if name.is_empty() {
        "node".to_owned()
    } else {
        name
    }
}

/// The node as a config writes it.
pub fn node_text(id: &NodeId) -> String {
    convert::config_node_id(id).map_or_else(|| id.to_string(), |n| n.to_string())
}
