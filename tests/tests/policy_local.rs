//! End-to-end: the operator's policies cannot be bypassed. Each test is a
//! bypass that worked against the real `remora-operator serve --platform
//! local` before the policies were enforced on what the target resolves
//! (not on the text a client sends):
//!
//! * `fs_not_found` through `//`, `..` or a symlink;
//! * `env_exclude` undone by reading the target's `/proc/<pid>/environ`;
//! * `require_header_filter` widened by a filter text (`x-user: a|.*`).

use remora_protocol::codec::{read_frame, write_frame};
use remora_protocol::fs::{FsRequest, OpenOptions, OpenRequest};
use remora_protocol::{
    Capabilities, ClientIdentity, ClientMessage, ErrorCode, Hello, HelloReply, PROTOCOL_VERSION,
    Request, RequestId, Response, ServerMessage, SessionToken,
};
use remora_tests::operator::OperatorProcess;
use remora_tests::{Pod, PodProcess, PodSpec, Sandbox, bin_path, fixtures, require_sandbox};
use std::net::TcpStream;
use std::path::Path;
use std::process::{Child, Stdio};
use std::time::Duration;

const POD_PORT: u16 = 18190;
const POD_BODY: &str = "answer from the pod\n";
const SECRET: &str = "very secret";
const PASSWORD: &str = "hunter2-environ";

/// A pod with a secret file, a symlink to its directory, a password in its
/// environment and an HTTP service on `POD_PORT`.
fn pod(sandbox: &Sandbox) -> (Pod, PodProcess) {
    let spec = PodSpec::new("pol")
        .env("DB_PASSWORD", PASSWORD)
        .file("/srv/secrets/token", format!("{SECRET}\n"))
        .file("/srv/api/index.html", POD_BODY);
    let pod = sandbox.pod(spec).unwrap();
    let out = pod
        .command("ln")
        .unwrap()
        .args(["-s", "/srv/secrets", "/srv/api/link"])
        .output()
        .unwrap();
    assert!(out.status.success(), "{out:?}");
    let service = pod
        .command("python3")
        .unwrap()
        .args([
            "-m",
            "http.server",
            "--bind",
            "0.0.0.0",
            "--directory",
            "/srv/api",
        ])
        .arg(POD_PORT.to_string())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    pod.wait_for_tcp(POD_PORT, Duration::from_secs(20)).unwrap();
    (pod, service)
}

fn operator(dir: &Path, policy: &str) -> OperatorProcess {
    let path = dir.join("policy.toml");
    std::fs::write(&path, policy).unwrap();
    OperatorProcess::start(Some(&path)).unwrap()
}

/// A session spoken in the protocol itself: the paths reach the operator
/// exactly as written, whatever a layer would make of them.
struct RawSession {
    stream: TcpStream,
    next_id: u64,
}

impl RawSession {
    fn open(op: &OperatorProcess, target: &str) -> RawSession {
        let mut stream = TcpStream::connect(op.addr()).unwrap();
        stream
            .set_read_timeout(Some(Duration::from_secs(30)))
            .unwrap();
        let hello = Hello {
            version: PROTOCOL_VERSION,
            capabilities: Capabilities::ALL,
            token: SessionToken(op.token().to_owned()),
            client: ClientIdentity {
                user: "mallory".into(),
                hostname: "test".into(),
                pid: std::process::id(),
                program: "policy_local".into(),
                remora_version: "test".into(),
            },
            target: Some(target.to_owned()),
        };
        write_frame(&mut stream, &hello).unwrap();
        match read_frame::<_, HelloReply>(&mut stream).unwrap() {
            HelloReply::Accepted { capabilities, .. } => {
                assert!(
                    !capabilities.contains(Capabilities::SESSION_POLICY),
                    "the session policy is between the operator and the agent"
                );
            }
            other => panic!("{other:?}"),
        }
        RawSession { stream, next_id: 0 }
    }

    fn fs(&mut self, request: FsRequest) -> Result<Response, (ErrorCode, String)> {
        self.next_id += 1;
        let id = RequestId(self.next_id);
        let request = ClientMessage::Request {
            id,
            request: Request::Fs(request),
        };
        write_frame(&mut self.stream, &request).unwrap();
        loop {
            match read_frame::<_, ServerMessage>(&mut self.stream).unwrap() {
                ServerMessage::Response { id: got, result } if got == id => {
                    return result.map_err(|e| (e.code, e.message));
                }
                ServerMessage::Closing { reason } => panic!("session closed: {reason}"),
                _ => {}
            }
        }
    }

    /// The file's content, or the error.
    fn read(&mut self, path: &str) -> Result<String, (ErrorCode, String)> {
        let open = OpenRequest {
            path: path.into(),
            options: OpenOptions {
                read: true,
                ..OpenOptions::default()
            },
            mode: 0,
            snapshot_limit: 0,
        };
        let Response::Fs(remora_protocol::fs::FsReply::Opened(opened)) =
            self.fs(FsRequest::Open(open))?
        else {
            panic!("an open reply");
        };
        let data = self.fs(FsRequest::Read {
            fd: opened.fd,
            len: 64 * 1024,
        })?;
        let _ = self.fs(FsRequest::Close { fd: opened.fd });
        match data {
            Response::Fs(remora_protocol::fs::FsReply::Data(bytes)) => {
                Ok(String::from_utf8_lossy(&bytes).into_owned())
            }
            other => panic!("{other:?}"),
        }
    }
}

#[test]
fn fs_not_found_holds_for_double_slashes_dot_dot_and_symlinks() {
    require_sandbox!();
    let sandbox = Sandbox::new().unwrap();
    let (pod, _service) = pod(&sandbox);
    let dir = tempfile::tempdir().unwrap();
    let op = operator(
        dir.path(),
        "[[policy]]\ntargets = [\"pid/*\"]\nfs_not_found = [\"^/srv/secrets/\"]\n",
    );
    let mut session = RawSession::open(&op, &pod.target());
    // The pod's other files are there (so a NotFound below is the policy's).
    assert_eq!(session.read("/srv/api/index.html").unwrap(), POD_BODY);
    for path in [
        "/srv/secrets/token",
        "/srv//secrets/token",
        "//srv/secrets/token",
        "/srv/api/../secrets/token",
        "/srv/./secrets/token",
        "/srv/api/link/token",
    ] {
        match session.read(path) {
            Err((ErrorCode::NotFound, message)) => {
                assert!(message.contains("fs_not_found"), "{path}: {message}");
            }
            other => panic!("{path} got through the policy: {other:?}"),
        }
    }

    // A real program, through the layer, following the symlink.
    let out = op
        .remora("alice")
        .unwrap()
        .args(["run", "--target", &pod.target(), "--"])
        .args(["sh", "-c", "cat /srv/api/link/token || echo no-token"])
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{out:?}");
    assert_eq!(stdout, "no-token\n", "{out:?}");
    assert!(!stdout.contains(SECRET));
}

#[test]
fn env_exclude_hides_the_targets_proc_environ_and_mem() {
    require_sandbox!();
    let sandbox = Sandbox::new().unwrap();
    let (pod, _service) = pod(&sandbox);
    let dir = tempfile::tempdir().unwrap();
    let op = operator(
        dir.path(),
        "[[policy]]\ntargets = [\"pid/*\"]\nenv_exclude = [\"DB_PASSWORD\"]\n",
    );
    let target = pod.target();
    let pid = target.trim_start_matches("pid/").to_owned();
    let mut session = RawSession::open(&op, &target);
    assert!(session.read(&format!("/proc/{pid}/status")).is_ok());
    for path in [
        format!("/proc/{pid}/environ"),
        format!("/proc//{pid}/environ"),
        format!("/proc/{pid}/task/{pid}/environ"),
        format!("/proc/{pid}/mem"),
    ] {
        match session.read(&path) {
            Err((ErrorCode::NotFound, message)) => {
                assert!(message.contains("env_exclude"), "{path}: {message}");
            }
            other => panic!("{path} got through env_exclude: {other:?}"),
        }
    }

    // A real program reading the target's environ through the layer.
    let config = dir.path().join("remora.toml");
    std::fs::write(&config, "[fs]\nread_only = [\"^/proc/[0-9]+/environ$\"]\n").unwrap();
    let script = format!("cat /proc/{pid}/environ | tr '\\0' '\\n'; echo done");
    let out = op
        .remora("alice")
        .unwrap()
        .args(["run", "-f"])
        .arg(&config)
        .args(["--target", &target, "--", "sh", "-c", &script])
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(stdout.ends_with("done\n"), "{out:?}");
    assert!(!stdout.contains(PASSWORD), "{stdout}");
}

/// A `remora run` through the operator, killed (with the app) on drop.
struct Run(Child);

impl Drop for Run {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

#[test]
fn require_header_filter_cannot_be_widened_by_the_filter_text() {
    require_sandbox!();
    let sandbox = Sandbox::new().unwrap();
    let (pod, _service) = pod(&sandbox);
    let dir = tempfile::tempdir().unwrap();
    let op = operator(
        dir.path(),
        "[[policy]]\ntargets = [\"pid/*\"]\nrequire_header_filter = \"^x-user: .+$\"\n",
    );
    let app = bin_path("remora-bench-app").unwrap();
    let local_port = 18391;
    let mapping = format!("{local_port}:{POD_PORT}");
    let listen = format!("127.0.0.1:{local_port}");
    let stderr = dir.path().join("steal.err");
    let _steal = Run(op
        .remora("mallory")
        .unwrap()
        .args(["run", "--target", &pod.target(), "--steal"])
        .args(["--http-header-filter", "x-user: a|.*", "-p", &mapping, "--"])
        .arg(&app)
        .args(["http-serve", &listen, "stolen"])
        .stdout(Stdio::null())
        .stderr(std::fs::File::create(&stderr).unwrap())
        .spawn()
        .unwrap());
    let url = format!("http://{}:{POD_PORT}/", pod.ip());
    // The steal is in place once a request with the header reaches it...
    fixtures::wait_for("the filtered steal", Duration::from_secs(30), || {
        fixtures::curl(&url, Some("x-user: anyone")) == "stolen"
    });
    // ...and requests without one still reach the pod.
    for _ in 0..5 {
        assert_eq!(
            fixtures::curl(&url, None),
            POD_BODY,
            "{}",
            std::fs::read_to_string(&stderr).unwrap_or_default()
        );
    }
}
