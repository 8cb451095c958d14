use super::*;
use crate::policy::Policies;
use crate::sessions::SessionGuard;
use remora_protocol::RemoteAddr;
use remora_protocol::codec::FrameCodec;
use remora_protocol::env::{EnvReply, EnvRequest};
use remora_protocol::fs::FsRequest;
use std::collections::BTreeMap;
use std::path::Path;
use tokio::io::DuplexStream;
use tokio::task::JoinHandle;
use tokio_util::codec::Framed;

const TARGET: &str = "pid/4242";
const PORT: RemotePort = RemotePort(8080);

/// The client's and the agent's ends of one relayed session.
struct Session {
    client: Framed<DuplexStream, FrameCodec<ServerMessage, ClientMessage>>,
    agent: Framed<DuplexStream, FrameCodec<ClientMessage, ServerMessage>>,
    relay: JoinHandle<Ended>,
    guard: SessionGuard,
}

fn start(user: &str, sessions: &Sessions, policies: PolicyStore) -> Session {
    start_with(user, sessions, policies, None)
}

fn start_with(
    user: &str,
    sessions: &Sessions,
    policies: PolicyStore,
    branches: Option<crate::branches::Branches>,
) -> Session {
    let (client, relay_client) = tokio::io::duplex(1 << 16);
    let (agent, relay_agent) = tokio::io::duplex(1 << 16);
    let (client_sink, client_stream) = Framed::new(
        relay_client,
        FrameCodec::<ClientMessage, ServerMessage>::default(),
    )
    .split();
    let (agent_sink, agent_stream) = Framed::new(
        relay_agent,
        FrameCodec::<ServerMessage, ClientMessage>::default(),
    )
    .split();
    let (guard, commands) = sessions.register(user, TARGET);
    let ctx = SessionContext {
        id: guard.id(),
        user: user.to_owned(),
        target: TARGET.to_owned(),
        sessions: sessions.clone(),
        policies,
        agent_capabilities: Capabilities::ALL,
        branches,
        queue_splitter: None,
        grants: Default::default(),
    };
    let relay = tokio::spawn(run(
        client_sink,
        client_stream,
        agent_sink,
        agent_stream,
        ctx,
        commands,
    ));
    Session {
        client: Framed::new(client, FrameCodec::default()),
        agent: Framed::new(agent, FrameCodec::default()),
        relay,
        guard,
    }
}

fn policies(text: &str) -> PolicyStore {
    PolicyStore::fixed(Policies::parse(text, Path::new("p.toml")).unwrap())
}

async fn next<T>(stream: &mut (impl Stream<Item = Result<T, CodecError>> + Unpin)) -> T {
    tokio::time::timeout(Duration::from_secs(5), stream.next())
        .await
        .expect("a frame in time")
        .expect("the stream is open")
        .expect("a decodable frame")
}

/// The next frame the client gets that is not a log line.
async fn next_reply(s: &mut Session) -> ServerMessage {
    loop {
        match next(&mut s.client).await {
            ServerMessage::Log { .. } => {}
            other => return other,
        }
    }
}

fn ping(id: u64) -> ClientMessage {
    ClientMessage::Request {
        id: RequestId(id),
        request: Request::Ping,
    }
}

fn subscribe(header: &str) -> ClientMessage {
    ClientMessage::Incoming(IncomingClient::Subscribe {
        port: PORT,
        mode: IncomingMode::Steal,
        filter: Some(HttpFilter::Header(header.into())),
    })
}

#[tokio::test]
async fn session_requests_are_answered_by_the_operator_itself() {
    let sessions = Sessions::default();
    let mut s = start("alice", &sessions, PolicyStore::empty());
    let list = ClientMessage::Request {
        id: RequestId(1),
        request: Request::Session(SessionRequest::List),
    };
    s.client.send(list).await.unwrap();
    s.client.send(ping(2)).await.unwrap();
    match next(&mut s.client).await {
        ServerMessage::Response {
            id: RequestId(1),
            result: Ok(Response::Session(SessionReply::Sessions(list))),
        } => {
            assert_eq!(list.len(), 1);
            assert_eq!(list[0].user, "alice");
            assert_eq!(list[0].target, TARGET);
        }
        other => panic!("{other:?}"),
    }
    // The agent only ever saw the ping.
    assert_eq!(next(&mut s.agent).await, ping(2));
}

#[tokio::test]
async fn hidden_files_are_not_found_without_reaching_the_agent() {
    let sessions = Sessions::default();
    let store = policies("[[policy]]\ntargets=[\"pid/*\"]\nfs_not_found=[\"^/srv/secrets/\"]\n");
    let mut s = start("alice", &sessions, store);
    let stat = |id, path: &str| ClientMessage::Request {
        id: RequestId(id),
        request: Request::Fs(FsRequest::Stat {
            path: path.into(),
            follow_symlinks: true,
        }),
    };
    s.client.send(stat(1, "/srv/secrets/token")).await.unwrap();
    s.client.send(stat(2, "/etc/hosts")).await.unwrap();
    // The agent gets the rules first: it decides on resolved paths.
    match next(&mut s.agent).await {
        ClientMessage::SessionPolicy(policy) => {
            assert_eq!(policy.fs_not_found.len(), 1);
            assert_eq!(policy.fs_not_found[0].pattern, "^/srv/secrets/");
            assert_eq!(policy.hide_process_env, None);
        }
        other => panic!("{other:?}"),
    }
    match next_reply(&mut s).await {
        ServerMessage::Response {
            id: RequestId(1),
            result: Err(e),
        } => {
            assert_eq!(e.code, ErrorCode::NotFound);
            assert!(e.message.contains("hidden by policy #1 in p.toml"), "{e}");
        }
        other => panic!("{other:?}"),
    }
    assert_eq!(next(&mut s.agent).await, stat(2, "/etc/hosts"));
}

#[tokio::test]
async fn environment_replies_lose_the_withheld_variables() {
    let sessions = Sessions::default();
    let store = policies("[[policy]]\ntargets=[\"*\"]\nenv_exclude=[\"DB_PASSWORD\", \"AWS_*\"]\n");
    let mut s = start("alice", &sessions, store);
    let request = ClientMessage::Request {
        id: RequestId(7),
        request: Request::Env(EnvRequest {
            include: vec![],
            exclude: vec![],
        }),
    };
    s.client.send(request.clone()).await.unwrap();
    match next(&mut s.agent).await {
        ClientMessage::SessionPolicy(policy) => {
            assert_eq!(
                policy.hide_process_env.as_deref(),
                Some("policy #1 in p.toml")
            );
        }
        other => panic!("{other:?}"),
    }
    assert_eq!(next(&mut s.agent).await, request);
    let vars: BTreeMap<String, String> =
        [("DB_PASSWORD", "x"), ("AWS_KEY", "y"), ("HOME", "/root")]
            .into_iter()
            .map(|(k, v)| (k.to_owned(), v.to_owned()))
            .collect();
    s.agent
        .send(ServerMessage::Response {
            id: RequestId(7),
            result: Ok(Response::Env(EnvReply { vars })),
        })
        .await
        .unwrap();
    match next_reply(&mut s).await {
        ServerMessage::Response {
            result: Ok(Response::Env(reply)),
            ..
        } => assert_eq!(reply.vars.keys().collect::<Vec<_>>(), ["HOME"]),
        other => panic!("{other:?}"),
    }
}

#[tokio::test]
async fn blocked_destinations_are_refused_with_the_policy() {
    let sessions = Sessions::default();
    let store = policies("[[policy]]\ntargets=[\"*\"]\noutgoing_block=[\"10.0.0.0/8:5432\"]\n");
    let mut s = start("alice", &sessions, store);
    let connect = ClientMessage::Outgoing(OutgoingClient::Connect {
        conn: remora_protocol::ConnectionId(3),
        transport: remora_protocol::net::Transport::Tcp,
        remote: RemoteAddr::Ip("10.1.2.3:5432".parse().unwrap()),
    });
    s.client.send(connect).await.unwrap();
    s.client.send(ping(9)).await.unwrap();
    let mut told = false;
    loop {
        match next(&mut s.client).await {
            ServerMessage::Log { message, .. } => told = message.contains("policy #1 in p.toml"),
            ServerMessage::Outgoing(OutgoingServer::Connected { result: Err(e), .. }) => {
                assert_eq!(e.code, ErrorCode::Forbidden);
                break;
            }
            other => panic!("{other:?}"),
        }
    }
    assert!(told, "the user is told which policy refused");
    assert_eq!(next(&mut s.agent).await, ping(9));
}

#[tokio::test]
async fn a_held_filter_is_refused_without_reaching_the_agent() {
    let sessions = Sessions::default();
    let mut alice = start("alice", &sessions, PolicyStore::empty());
    alice
        .client
        .send(subscribe("^x-user: alice$"))
        .await
        .unwrap();
    assert_eq!(next(&mut alice.agent).await, subscribe("^x-user: alice$"));
    alice
        .agent
        .send(ServerMessage::Incoming(IncomingServer::Subscribed {
            port: PORT,
            result: Ok(()),
        }))
        .await
        .unwrap();
    next(&mut alice.client).await;
    let listed = sessions.list();
    assert_eq!(
        listed[0].subscriptions.len(),
        1,
        "granted subscriptions are listed"
    );

    let mut bob = start("bob", &sessions, PolicyStore::empty());
    bob.client.send(subscribe("^X-User: alice$")).await.unwrap();
    bob.client.send(ping(1)).await.unwrap();
    match next_reply(&mut bob).await {
        ServerMessage::Incoming(IncomingServer::Subscribed {
            port: PORT,
            result: Err(e),
        }) => assert!(
            e.message
                .contains(&format!("held by alice (session {}", alice.guard.id())),
            "{e}"
        ),
        other => panic!("{other:?}"),
    }
    assert_eq!(next(&mut bob.agent).await, ping(1));
}

#[tokio::test]
async fn override_makes_the_holder_let_go_first_and_tells_it() {
    let sessions = Sessions::default();
    let mut alice = start("alice", &sessions, PolicyStore::empty());
    alice
        .client
        .send(subscribe("^x-user: alice$"))
        .await
        .unwrap();
    next(&mut alice.agent).await;

    let mut bob = start("bob", &sessions, PolicyStore::empty());
    let wish = ClientMessage::SubscribeOverride {
        port: PORT,
        mode: IncomingMode::Steal,
        filter: Some(HttpFilter::Header("^x-user: alice$".into())),
    };
    bob.client.send(wish).await.unwrap();
    // Alice's agent connection unsubscribes, then the operator pings it.
    assert_eq!(
        next(&mut alice.agent).await,
        ClientMessage::Incoming(IncomingClient::Unsubscribe { port: PORT })
    );
    let ClientMessage::Request {
        id,
        request: Request::Ping,
    } = next(&mut alice.agent).await
    else {
        panic!("expected the operator's ping");
    };
    assert!(id.0 >= OPERATOR_REQUEST_BASE);
    alice
        .agent
        .send(ServerMessage::Response {
            id,
            result: Ok(Response::Pong),
        })
        .await
        .unwrap();
    // Only then does bob's subscription reach the agent, as a plain one.
    assert_eq!(next(&mut bob.agent).await, subscribe("^x-user: alice$"));
    match next(&mut alice.client).await {
        ServerMessage::Log { level, message } => {
            assert_eq!(level, LogLevel::Warn);
            assert!(message.contains("taken over by bob (session"), "{message}");
        }
        other => panic!("{other:?}"),
    }
}

#[tokio::test]
async fn a_killed_session_is_told_and_its_agent_connection_closes() {
    let sessions = Sessions::default();
    let mut s = start("alice", &sessions, PolicyStore::empty());
    sessions
        .kill(s.guard.id(), "session killed by root".into())
        .unwrap();
    match next(&mut s.client).await {
        ServerMessage::Closing { reason } => assert_eq!(reason, "session killed by root"),
        other => panic!("{other:?}"),
    }
    assert_eq!(next(&mut s.agent).await, ClientMessage::Bye);
    let end = tokio::time::timeout(Duration::from_secs(5), s.agent.next())
        .await
        .unwrap();
    assert!(end.is_none(), "the agent connection is closed: {end:?}");
    assert_eq!(
        s.relay.await.unwrap(),
        Ended::Killed("session killed by root".into())
    );
}

#[tokio::test]
async fn a_vanished_client_ends_the_session() {
    let sessions = Sessions::default();
    let Session {
        client,
        mut agent,
        relay,
        guard: _guard,
    } = start("alice", &sessions, PolicyStore::empty());
    drop(client);
    assert_eq!(relay.await.unwrap(), Ended::ClientGone);
    assert_eq!(next(&mut agent).await, ClientMessage::Bye);
}

#[tokio::test]
async fn a_blocked_name_blocks_the_addresses_it_resolved_to() {
    use remora_protocol::dns::{AddrFamily, LookupReply, LookupRequest, SockType};
    let sessions = Sessions::default();
    let store = policies("[[policy]]\ntargets=[\"*\"]\noutgoing_block=[\"db.internal:5432\"]\n");
    let mut s = start("alice", &sessions, store);
    let lookup = ClientMessage::Request {
        id: RequestId(4),
        request: Request::Lookup(LookupRequest {
            name: "db.internal".into(),
            family: AddrFamily::Any,
            socktype: SockType::Stream,
            flags: 0,
        }),
    };
    s.client.send(lookup.clone()).await.unwrap();
    assert_eq!(next(&mut s.agent).await, lookup);
    s.agent
        .send(ServerMessage::Response {
            id: RequestId(4),
            result: Ok(Response::Lookup(LookupReply {
                canonical_name: None,
                addresses: vec!["10.9.9.9".parse().unwrap()],
            })),
        })
        .await
        .unwrap();
    next_reply(&mut s).await;
    let connect = |conn, addr: &str| {
        ClientMessage::Outgoing(OutgoingClient::Connect {
            conn: remora_protocol::ConnectionId(conn),
            transport: remora_protocol::net::Transport::Tcp,
            remote: RemoteAddr::Ip(addr.parse().unwrap()),
        })
    };
    s.client.send(connect(1, "10.9.9.9:5432")).await.unwrap();
    s.client.send(connect(2, "10.9.9.9:80")).await.unwrap();
    match next_reply(&mut s).await {
        ServerMessage::Outgoing(OutgoingServer::Connected { result: Err(e), .. }) => {
            assert!(
                e.message.contains("(db.internal)") && e.message.contains("policy #1 in p.toml"),
                "{e}"
            )
        }
        other => panic!("{other:?}"),
    }
    assert_eq!(next(&mut s.agent).await, connect(2, "10.9.9.9:80"));
}

#[tokio::test]
async fn a_client_cannot_send_a_session_policy() {
    let sessions = Sessions::default();
    let store = policies("[[policy]]\ntargets=[\"pid/*\"]\nfs_not_found=[\"^/srv/secrets/\"]\n");
    let mut s = start("mallory", &sessions, store);
    match next(&mut s.agent).await {
        ClientMessage::SessionPolicy(_) => {}
        other => panic!("{other:?}"),
    }
    let empty = ClientMessage::SessionPolicy(SessionPolicy::default());
    s.client.send(empty).await.unwrap();
    match next(&mut s.client).await {
        ServerMessage::Closing { reason } => {
            assert!(reason.contains("may not send session policies"), "{reason}");
        }
        other => panic!("{other:?}"),
    }
    // The agent never saw it: the next frame is the goodbye.
    assert_eq!(next(&mut s.agent).await, ClientMessage::Bye);
}

#[tokio::test]
async fn file_requests_are_refused_when_the_agent_cannot_enforce_the_rules() {
    let (client, relay_client) = tokio::io::duplex(1 << 16);
    let (agent, relay_agent) = tokio::io::duplex(1 << 16);
    let (client_sink, client_stream) = Framed::new(
        relay_client,
        FrameCodec::<ClientMessage, ServerMessage>::default(),
    )
    .split();
    let (agent_sink, agent_stream) = Framed::new(
        relay_agent,
        FrameCodec::<ServerMessage, ClientMessage>::default(),
    )
    .split();
    let sessions = Sessions::default();
    let (guard, commands) = sessions.register("alice", TARGET);
    let ctx = SessionContext {
        id: guard.id(),
        user: "alice".into(),
        target: TARGET.into(),
        sessions: sessions.clone(),
        policies: policies("[[policy]]\ntargets=[\"*\"]\nfs_not_found=[\"^/srv/\"]\n"),
        agent_capabilities: Capabilities(Capabilities::ALL.0 & !Capabilities::SESSION_POLICY.0),
        branches: None,
        queue_splitter: None,
        grants: Default::default(),
    };
    let _relay = tokio::spawn(run(
        client_sink,
        client_stream,
        agent_sink,
        agent_stream,
        ctx,
        commands,
    ));
    let mut client = Framed::new(
        client,
        FrameCodec::<ServerMessage, ClientMessage>::default(),
    );
    let mut agent = Framed::new(agent, FrameCodec::<ClientMessage, ServerMessage>::default());
    let stat = ClientMessage::Request {
        id: RequestId(1),
        request: Request::Fs(FsRequest::Stat {
            path: "/etc/hosts".into(),
            follow_symlinks: true,
        }),
    };
    client.send(stat).await.unwrap();
    client.send(ping(2)).await.unwrap();
    loop {
        match next(&mut client).await {
            ServerMessage::Log { .. } => {}
            ServerMessage::Response {
                id: RequestId(1),
                result: Err(e),
            } => {
                assert_eq!(e.code, ErrorCode::Forbidden);
                assert!(e.message.contains("protocol v2"), "{e}");
                break;
            }
            other => panic!("{other:?}"),
        }
    }
    assert_eq!(next(&mut agent).await, ping(2));
    drop(guard);
}

#[tokio::test]
async fn the_required_header_is_anded_with_the_sessions_filter() {
    let sessions = Sessions::default();
    let store = policies("[[policy]]\ntargets=[\"*\"]\nrequire_header_filter=\"^x-user: .+$\"\n");
    let mut s = start("mallory", &sessions, store);
    s.client.send(subscribe("x-user: a|.*")).await.unwrap();
    assert_eq!(
        next(&mut s.agent).await,
        ClientMessage::Incoming(IncomingClient::Subscribe {
            port: PORT,
            mode: IncomingMode::Steal,
            filter: Some(HttpFilter::AllOf(vec![
                HttpFilter::Header("^x-user: .+$".into()),
                HttpFilter::Header("x-user: a|.*".into()),
            ])),
        })
    );
}

#[test]
fn the_question_of_a_dns_reply_is_read_for_outgoing_block() {
    // id, flags, 1 question, 1 answer; "Orders.Pod.Test" A IN, then an answer.
    let mut msg = vec![0x12, 0x34, 0x81, 0x80, 0, 1, 0, 1, 0, 0, 0, 0];
    for label in ["Orders", "Pod", "Test"] {
        msg.push(label.len() as u8);
        msg.extend_from_slice(label.as_bytes());
    }
    msg.extend_from_slice(&[0, 0, 1, 0, 1, 0xc0, 0x0c]);
    assert_eq!(question_name(&msg).as_deref(), Some("orders.pod.test"));
    assert_eq!(question_name(&msg[..14]), None);
    let mut none = msg.clone();
    none[5] = 0;
    assert_eq!(question_name(&none), None);
}

/// A platform that starts no agents (branch requests need only `dial`).
#[derive(Debug)]
struct NoAgents;

impl crate::platform::Platform for NoAgents {
    fn name(&self) -> &'static str {
        "test"
    }
    fn resolve(&self, target: &str) -> crate::Result<crate::platform::ResolvedTarget> {
        Ok(crate::platform::ResolvedTarget {
            name: target.to_owned(),
        })
    }
    fn start_agent(
        &self,
        _: &crate::platform::ResolvedTarget,
    ) -> futures::future::BoxFuture<'static, crate::Result<crate::platform::StartedAgent>> {
        Box::pin(async { Err(crate::Error::Unsupported("no agents here".into())) })
    }
    fn dial(&self, _: &str, program: &str) -> std::process::Command {
        std::process::Command::new(program)
    }
}

#[tokio::test]
async fn a_branch_reads_the_targets_environment_from_its_agent_under_an_operator_id() {
    use remora_protocol::db::{BranchSpec, CopyMode, DbConnection, DbKind, DbRequest};
    let sessions = Sessions::default();
    let branches = crate::branches::Branches::start(
        Arc::new(NoAgents),
        None,
        Vec::new(),
        crate::branches::settings::DbSettings::default(),
        tokio_util::sync::CancellationToken::new(),
    );
    let mut s = start_with("alice", &sessions, PolicyStore::empty(), Some(branches));
    let spec = BranchSpec {
        kind: DbKind::Postgres,
        name: "shop".into(),
        connection: DbConnection::Url {
            env: "DATABASE_URL".into(),
        },
        mode: CopyMode::Schema,
        filters: BTreeMap::new(),
        ttl_secs: 60,
        id: None,
    };
    let request = Request::Db(DbRequest::Branch(vec![spec]));
    s.client
        .send(ClientMessage::Request {
            id: RequestId(1),
            request,
        })
        .await
        .unwrap();
    // The operator asks the agent for the whole environment, with an id
    // of its own.
    let id = match next(&mut s.agent).await {
        ClientMessage::Request {
            id,
            request: Request::Env(EnvRequest { include, exclude }),
        } if include.is_empty() && exclude.is_empty() => id,
        other => panic!("{other:?}"),
    };
    assert!(id.0 >= OPERATOR_REQUEST_BASE, "{id:?}");
    let vars = BTreeMap::from([("DATABASE_URL".to_owned(), "not-a-url".to_owned())]);
    s.agent
        .send(ServerMessage::Response {
            id,
            result: Ok(Response::Env(EnvReply { vars })),
        })
        .await
        .unwrap();
    // The client gets only the branch's answer, made from that
    // environment: the variable was found, its value is no URL.
    match next_reply(&mut s).await {
        ServerMessage::Response {
            id: RequestId(1),
            result: Err(e),
        } => {
            assert_eq!(e.code, ErrorCode::InvalidInput, "{e:?}");
            assert!(
                e.message.contains("DATABASE_URL: not a URL"),
                "{}",
                e.message
            );
        }
        other => panic!("{other:?}"),
    }
}
