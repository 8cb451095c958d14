//! Finding a container's process through the runtimes' APIs: CRI-O's CRI
//! `ContainerStatus` (gRPC over HTTP/2) and Docker's Engine API (HTTP/1.1),
//! each against a fake server on a real unix socket speaking the real wire
//! protocol and answering with a real process's pid; then the order the
//! agent asks them in and its fallback, in the library and in the binary's log.

use bytes::{Buf, BufMut, Bytes, BytesMut};
use http_body_util::{BodyExt, Full, StreamBody, combinators::BoxBody};
use hyper::body::{Frame, Incoming};
use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo};
use remora_agent::container::{Found, Lookup, Runtime, crio, docker};
use std::convert::Infallible;
use std::path::{Path, PathBuf};
use std::process::{Child, Command};
use std::sync::{Arc, Mutex};

const ID: &str = "4f1c2ab3d5e6f7089a0b1c2d3e4f5a6b7c8d9e0f1a2b3c4d5e6f7a8b9c0d1e2f";
const OTHER: &str = "0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef";

/// A real process whose pid the fake runtimes give.
struct Process(Child);

impl Process {
    fn sleep() -> Process {
        Process(
            Command::new("sleep")
                .arg("300")
                .spawn()
                .expect("spawn sleep"),
        )
    }

    fn pid(&self) -> u32 {
        self.0.id()
    }
}

impl Drop for Process {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

type Body = BoxBody<Bytes, Infallible>;

/// What a fake runtime was asked: (path, header `content-type`, body).
type Seen = Arc<Mutex<Vec<(String, String, Bytes)>>>;

fn full(bytes: impl Into<Bytes>) -> Body {
    Full::new(bytes.into()).boxed()
}

// ------------------------------------------------------------ protobuf

fn put_varint(buf: &mut BytesMut, mut v: u64) {
    while v >= 0x80 {
        buf.put_u8((v as u8) | 0x80);
        v >>= 7;
    }
    buf.put_u8(v as u8);
}

fn put_field(buf: &mut BytesMut, number: u64, bytes: &[u8]) {
    put_varint(buf, number << 3 | 2);
    put_varint(buf, bytes.len() as u64);
    buf.put_slice(bytes);
}

fn varint(buf: &mut &[u8]) -> u64 {
    let mut v = 0;
    for shift in (0..64).step_by(7) {
        let b = buf.get_u8();
        v |= u64::from(b & 0x7f) << shift;
        if b & 0x80 == 0 {
            break;
        }
    }
    v
}

/// Decode `ContainerStatusRequest { string container_id = 1; bool verbose = 2; }`
/// from a gRPC frame, as CRI-O would.
fn decode_status_request(framed: &[u8]) -> (String, bool) {
    assert_eq!(framed[0], 0, "a compressed frame");
    let len = u32::from_be_bytes(framed[1..5].try_into().unwrap()) as usize;
    let mut msg = &framed[5..];
    assert_eq!(msg.len(), len, "one whole message");
    let (mut id, mut verbose) = (String::new(), false);
    while msg.has_remaining() {
        let key = varint(&mut msg);
        match (key >> 3, key & 7) {
            (1, 2) => {
                let n = varint(&mut msg) as usize;
                id = String::from_utf8(msg[..n].to_vec()).unwrap();
                msg.advance(n);
            }
            (2, 0) => verbose = varint(&mut msg) == 1,
            other => panic!("unexpected field {other:?}"),
        }
    }
    (id, verbose)
}

/// `ContainerStatusResponse { ContainerStatus status = 1; map<string, string> info = 2; }`
/// as CRI-O sends it for a running container with `pid`, gRPC-framed.
fn status_response(id: &str, pid: u32) -> Bytes {
    let mut status = BytesMut::new();
    put_field(&mut status, 1, id.as_bytes()); // id
    put_varint(&mut status, 4 << 3); // state = CONTAINER_RUNNING
    put_varint(&mut status, 1);
    let info = serde_json::json!({
        "sandboxID": "5e1f", "pid": pid, "privileged": false,
        "runtimeSpec": {"ociVersion": "1.0.2", "process": {"args": ["sleep", "300"]}},
    })
    .to_string();
    let mut msg = BytesMut::new();
    put_field(&mut msg, 1, &status);
    // Another entry first: the agent must pick the "info" key.
    for (key, value) in [("other", "{\"pid\": 1}"), ("info", info.as_str())] {
        let mut entry = BytesMut::new();
        put_field(&mut entry, 1, key.as_bytes());
        put_field(&mut entry, 2, value.as_bytes());
        put_field(&mut msg, 2, &entry);
    }
    let mut framed = BytesMut::new();
    framed.put_u8(0);
    framed.put_u32(msg.len() as u32);
    framed.put_slice(&msg);
    framed.freeze()
}

// ------------------------------------------------------------ fake servers

/// A unix socket in a fresh directory, served by `serve` for each connection.
struct Fake {
    _dir: tempfile::TempDir,
    socket: PathBuf,
    seen: Seen,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for Fake {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl Fake {
    fn asked(&self) -> usize {
        self.seen.lock().unwrap().len()
    }
}

/// A fake CRI-O: `ContainerStatus` knows `known` with pid `pid`; any other id
/// is NotFound (a trailers-only answer, as grpc-go sends it).
fn fake_crio(known: &'static str, pid: u32) -> Fake {
    let dir = tempfile::tempdir().unwrap();
    let socket = dir.path().join("crio.sock");
    let listener = tokio::net::UnixListener::bind(&socket).unwrap();
    let seen: Seen = Arc::default();
    let log = seen.clone();
    let task = tokio::spawn(async move {
        loop {
            let Ok((stream, _)) = listener.accept().await else {
                return;
            };
            let log = log.clone();
            let service = service_fn(move |req: hyper::Request<Incoming>| {
                let log = log.clone();
                async move {
                    let path = req.uri().path().to_owned();
                    let ctype = header(&req, "content-type");
                    let body = req.into_body().collect().await.unwrap().to_bytes();
                    log.lock()
                        .unwrap()
                        .push((path.clone(), ctype, body.clone()));
                    let grpc = |code: &str, message: &str| {
                        hyper::Response::builder()
                            .header("content-type", "application/grpc")
                            .header("grpc-status", code)
                            .header("grpc-message", message)
                            .body(full(Bytes::new()))
                            .unwrap()
                    };
                    if path != crio::CONTAINER_STATUS {
                        return Ok::<_, Infallible>(grpc("12", "unknown method"));
                    }
                    let (id, verbose) = decode_status_request(&body);
                    if id != known {
                        return Ok(grpc("5", &format!("could not find container \"{id}\"")));
                    }
                    assert!(verbose, "the pid is only in the verbose answer");
                    let mut trailers = hyper::HeaderMap::new();
                    trailers.insert("grpc-status", "0".parse().unwrap());
                    let frames = vec![
                        Ok(Frame::data(status_response(&id, pid))),
                        Ok(Frame::trailers(trailers)),
                    ];
                    Ok(hyper::Response::builder()
                        .header("content-type", "application/grpc")
                        .body(StreamBody::new(futures::stream::iter(frames)).boxed())
                        .unwrap())
                }
            });
            tokio::spawn(
                hyper::server::conn::http2::Builder::new(TokioExecutor::new())
                    .serve_connection(TokioIo::new(stream), service),
            );
        }
    });
    Fake {
        _dir: dir,
        socket,
        seen,
        task,
    }
}

/// A fake Docker: `GET /containers/{known}/json` answers `State.Pid = pid`;
/// other ids are 404 with Docker's error document.
fn fake_docker(known: &'static str, pid: u32) -> Fake {
    let dir = tempfile::tempdir().unwrap();
    let socket = dir.path().join("docker.sock");
    let listener = tokio::net::UnixListener::bind(&socket).unwrap();
    let seen: Seen = Arc::default();
    let log = seen.clone();
    let task = tokio::spawn(async move {
        loop {
            let Ok((stream, _)) = listener.accept().await else {
                return;
            };
            let log = log.clone();
            let service = service_fn(move |req: hyper::Request<Incoming>| {
                let log = log.clone();
                async move {
                    let path = req.uri().path().to_owned();
                    log.lock().unwrap().push((
                        format!("{} {path}", req.method()),
                        header(&req, "host"),
                        Bytes::new(),
                    ));
                    let id = path
                        .strip_prefix("/containers/")
                        .and_then(|p| p.strip_suffix("/json"))
                        .filter(|_| req.method() == hyper::Method::GET);
                    let (status, doc) = match id {
                        Some(id) if id == known => (
                            200,
                            serde_json::json!({
                                "Id": known, "Name": "/k8s_app_api-7f9c_shop_1",
                                "State": {"Status": "running", "Running": true, "Pid": pid, "ExitCode": 0},
                            }),
                        ),
                        Some(id) => (
                            404,
                            serde_json::json!({"message": format!("No such container: {id}")}),
                        ),
                        None => (400, serde_json::json!({"message": "bad request"})),
                    };
                    Ok::<_, Infallible>(
                        hyper::Response::builder()
                            .status(status)
                            .header("content-type", "application/json")
                            .body(full(doc.to_string()))
                            .unwrap(),
                    )
                }
            });
            tokio::spawn(
                hyper::server::conn::http1::Builder::new()
                    .serve_connection(TokioIo::new(stream), service),
            );
        }
    });
    Fake {
        _dir: dir,
        socket,
        seen,
        task,
    }
}

fn header<B>(req: &hyper::Request<B>, name: &str) -> String {
    req.headers()
        .get(name)
        .and_then(|v| v.to_str().ok())
        .unwrap_or_default()
        .to_owned()
}

fn lookup(crio: &Path, docker: &Path, proc_root: &Path) -> Lookup {
    Lookup {
        containerd: "/nonexistent/containerd.sock".into(),
        crio: crio.to_owned(),
        docker: docker.to_owned(),
        proc_root: proc_root.to_owned(),
    }
}

// ------------------------------------------------------------ tests

#[tokio::test]
async fn crio_gives_the_pid_of_a_container_through_the_cri_container_status() {
    let process = Process::sleep();
    let fake = fake_crio(ID, process.pid());
    assert_eq!(
        crio::container_pid(&fake.socket, ID).await,
        Ok(process.pid())
    );
    {
        let seen = fake.seen.lock().unwrap();
        let (path, ctype, body) = &seen[0];
        assert_eq!(path, "/runtime.v1.RuntimeService/ContainerStatus");
        assert_eq!(ctype, "application/grpc");
        assert_eq!(decode_status_request(body), (ID.to_owned(), true));
    }
    let unknown = crio::container_pid(&fake.socket, OTHER).await.unwrap_err();
    assert!(
        unknown.contains("grpc-status 5") && unknown.contains("could not find container"),
        "{unknown}"
    );
}

#[tokio::test]
async fn docker_gives_the_pid_of_a_container_through_the_engine_apis_inspect() {
    let process = Process::sleep();
    let fake = fake_docker(ID, process.pid());
    assert_eq!(
        docker::container_pid(&fake.socket, ID).await,
        Ok(process.pid())
    );
    assert_eq!(
        fake.seen.lock().unwrap()[0].0,
        format!("GET /containers/{ID}/json")
    );
    let unknown = docker::container_pid(&fake.socket, OTHER)
        .await
        .unwrap_err();
    assert!(
        unknown.contains("404") && unknown.contains(&format!("No such container: {OTHER}")),
        "{unknown}"
    );
}

#[test]
fn the_runtime_the_ids_scheme_names_is_asked_first() {
    use Runtime::*;
    assert_eq!(Runtime::order(None), [Containerd, CriO, Docker]);
    assert_eq!(
        Runtime::order(Some("containerd")),
        [Containerd, CriO, Docker]
    );
    assert_eq!(Runtime::order(Some("cri-o")), [CriO, Containerd, Docker]);
    assert_eq!(Runtime::order(Some("docker")), [Docker, Containerd, CriO]);
    assert_eq!(Runtime::order(Some("rkt")), [Containerd, CriO, Docker]);
}

#[tokio::test]
async fn the_agent_asks_the_runtimes_in_order_then_scans_proc() {
    let in_crio = Process::sleep();
    let in_docker = Process::sleep();
    let crio = fake_crio(ID, in_crio.pid());
    let docker = fake_docker(OTHER, in_docker.pid());
    let empty_proc = tempfile::tempdir().unwrap();
    let lookup = lookup(&crio.socket, &docker.socket, empty_proc.path());

    // The scheme names CRI-O: it answers, Docker is not asked.
    assert_eq!(
        lookup.find_pid(&format!("cri-o://{ID}")).await,
        Ok((in_crio.pid(), Found::Api(Runtime::CriO)))
    );
    assert_eq!((crio.asked(), docker.asked()), (1, 0));

    // The scheme names Docker: CRI-O is not asked.
    assert_eq!(
        lookup.find_pid(&format!("docker://{OTHER}")).await,
        Ok((in_docker.pid(), Found::Api(Runtime::Docker)))
    );
    assert_eq!((crio.asked(), docker.asked()), (1, 1));

    // No scheme: containerd (no socket) is skipped, CRI-O says NotFound, Docker answers.
    assert_eq!(
        lookup.find_pid(OTHER).await,
        Ok((in_docker.pid(), Found::Api(Runtime::Docker)))
    );
    assert_eq!((crio.asked(), docker.asked()), (2, 2));

    // Nobody knows it: the /proc scan decides (here a /proc with that container).
    let unknown = "fedcba9876543210fedcba9876543210fedcba9876543210fedcba9876543210";
    let proc_dir = empty_proc.path().join("4321");
    std::fs::create_dir(&proc_dir).unwrap();
    std::fs::write(
        proc_dir.join("cgroup"),
        format!("0::/kubepods.slice/kubepods-pod1.slice/crio-{unknown}.scope\n"),
    )
    .unwrap();
    std::fs::write(proc_dir.join("stat"), "4321 (app) S 4000 1 1 0").unwrap();
    assert_eq!(
        lookup.find_pid(&format!("cri-o://{unknown}")).await,
        Ok((4321, Found::Cgroup))
    );
    assert_eq!((crio.asked(), docker.asked()), (3, 3));
}

/// The binary logs the order, each runtime's answer and the pid it serves.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_agent_binary_logs_which_runtime_gave_the_containers_process() {
    let process = Process::sleep();
    let crio = fake_crio(ID, process.pid());
    let docker = fake_docker(ID, process.pid());
    let run = |id: String| {
        let (crio, docker) = (crio.socket.clone(), docker.socket.clone());
        tokio::task::spawn_blocking(move || {
            let out = Command::new(env!("CARGO_BIN_EXE_remora-agent"))
                .args(["--container-id", &id, "--idle-timeout-secs", "1"])
                .args(["--containerd-socket", "/nonexistent/containerd.sock"])
                .arg("--crio-socket")
                .arg(&crio)
                .arg("--docker-socket")
                .arg(&docker)
                .env("REMORA_AGENT_TOKEN", "a-test-token")
                .env("REMORA_AGENT_LOG", "info")
                .env("NO_COLOR", "1")
                .output()
                .unwrap();
            let log = String::from_utf8_lossy(&out.stderr).into_owned();
            assert!(out.status.success(), "{log}");
            log
        })
    };
    let pid = format!("pid={}", process.pid());

    let log = run(format!("cri-o://{ID}")).await.unwrap();
    let order = log
        .lines()
        .find(|l| l.contains("asking the runtimes"))
        .unwrap_or_else(|| panic!("{log}"));
    assert!(order.contains("order=CRI-O, containerd, Docker"), "{order}");
    assert!(
        log.lines().any(
            |l| l.contains("found the container's process through CRI-O's API") && l.contains(&pid)
        ),
        "{log}"
    );
    assert_eq!(docker.asked(), 0, "{log}");

    let log = run(format!("docker://{ID}")).await.unwrap();
    assert!(
        log.lines().any(
            |l| l.contains("found the container's process through Docker's API")
                && l.contains(&pid)
        ),
        "{log}"
    );
    assert_eq!(crio.asked(), 1, "{log}");

    // No scheme: containerd first, whose socket is absent: skipped, and said so.
    let log = run(ID.to_owned()).await.unwrap();
    assert!(
        log.lines()
            .any(|l| l.contains("no socket: not asking this runtime") && l.contains("containerd")),
        "{log}"
    );
    assert!(
        log.lines().any(
            |l| l.contains("found the container's process through CRI-O's API") && l.contains(&pid)
        ),
        "{log}"
    );
    assert_eq!((crio.asked(), docker.asked()), (2, 1), "{log}");
}
