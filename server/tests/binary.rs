//! The `livevote-server` binary as an operator runs it: configuration errors exit 2 with one
//! line, port 0 prints the bound address, SIGTERM exits 0, and tokens never reach the logs.

use std::io::{BufRead, BufReader, Read};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

const BINARY: &str = env!("CARGO_BIN_EXE_livevote-server");

fn run_to_end(arguments: &[&str]) -> (i32, String) {
    let output = Command::new(BINARY)
        .args(arguments)
        .env_remove("LIVEVOTE_JWT_SECRET")
        .env_remove("LIVEVOTE_API_KEY")
        .output()
        .expect("the binary runs");
    (
        output.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&output.stderr).into_owned(),
    )
}

#[test]
fn invalid_configuration_is_one_line_and_exit_code_2() {
    let cases: &[&[&str]] = &[
        &["--dev", "--update-interval", "100ms"],
        &["--dev", "--heartbeat-interval", "soon"],
        &["--listen", "127.0.0.1:0"],
        &["--dev", "--listen", "0.0.0.0:0"],
        &[
            "--dev",
            "--listen",
            "127.0.0.1:0",
            "--database-url",
            "mysql://localhost/x",
        ],
        &[
            "--dev",
            "--listen",
            "127.0.0.1:0",
            "--broker-url",
            "kafka://x",
        ],
        // A Redis URL that cannot be parsed is found at start-up, before binding.
        &[
            "--dev",
            "--listen",
            "127.0.0.1:0",
            "--database-url",
            "sqlite::memory:",
            "--broker-url",
            "redis://[not-a-host/",
            // Below the open-file limit, so no warning about lowering them comes first.
            "--max-open-connections",
            "1000",
            "--max-connections",
            "1000",
        ],
        &["--dev", "--allowed-origins", "ftp://nope"],
        &["--dev", "--tls-cert", "only-a-cert.pem"],
        // Files that do not exist are found before binding, not after `listening on`.
        &[
            "--dev",
            "--listen",
            "127.0.0.1:0",
            "--database-url",
            "sqlite::memory:",
            "--tls-cert",
            "/nonexistent/cert.pem",
            "--tls-key",
            "/nonexistent/key.pem",
        ],
        &["--dev", "--idle-timeout", "5s"],
        &[
            "--listen",
            "127.0.0.1:0",
            "--jwt-secret",
            "a-jwt-secret-of-at-least-32-bytes!!",
            "--api-key",
            "short-key",
        ],
    ];
    for arguments in cases {
        let (code, stderr) = run_to_end(arguments);
        assert_eq!(code, 2, "{arguments:?}: {stderr}");
        assert!(!stderr.contains("panicked"), "{arguments:?}: {stderr}");
        let first_line = stderr
            .lines()
            .find(|line| !line.trim().is_empty())
            .unwrap_or_default();
        assert!(first_line.contains("error"), "{arguments:?}: {stderr}");
    }
}

struct Running {
    child: Child,
    address: String,
}

fn start(extra: &[&str], environment: &[(&str, &str)]) -> Running {
    let mut command = Command::new(BINARY);
    command
        .args([
            "--dev",
            "--listen",
            "127.0.0.1:0",
            "--database-url",
            "sqlite::memory:",
        ])
        .args(extra)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    for (name, value) in environment {
        command.env(name, value);
    }
    let mut child = command.spawn().expect("the binary starts");
    let stdout = child.stdout.take().unwrap();
    let mut lines = BufReader::new(stdout).lines();
    let deadline = Instant::now() + Duration::from_secs(30);
    let address = loop {
        assert!(
            Instant::now() < deadline,
            "no `listening on` line within 30 s"
        );
        let line = lines.next().expect("stdout open").expect("utf-8");
        let announced = line
            .strip_prefix("listening on ")
            .and_then(|rest| rest.split_once("://"));
        if let Some((_scheme, address)) = announced {
            break address.trim().to_owned();
        }
    };
    std::thread::spawn(move || for _ in lines {});
    Running { child, address }
}

fn terminate(running: &mut Running) -> i32 {
    let status = Command::new("kill")
        .args(["-TERM", &running.child.id().to_string()])
        .status()
        .unwrap();
    assert!(status.success());
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        if let Some(status) = running.child.try_wait().unwrap() {
            return status.code().unwrap_or(-1);
        }
        assert!(
            Instant::now() < deadline,
            "did not exit within 20 s of SIGTERM"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// SIGTERM, expect exit 0, and return everything the server wrote to stderr.
fn terminate_and_read_stderr(running: &mut Running) -> String {
    assert_eq!(terminate(running), 0);
    let mut stderr = String::new();
    let mut pipe = running.child.stderr.take().expect("stderr was piped");
    pipe.read_to_string(&mut stderr).unwrap();
    stderr
}

#[tokio::test]
async fn port_zero_prints_the_address_and_sigterm_exits_zero() {
    let mut running = start(&[], &[]);
    let health = reqwest::get(format!("http://{}/healthz", running.address))
        .await
        .unwrap();
    assert_eq!(health.status(), 200);
    assert_eq!(terminate(&mut running), 0);
}

#[tokio::test]
async fn a_connection_left_open_does_not_keep_the_server_from_exiting() {
    use std::io::Write;
    let mut running = start(&[], &[]);
    // Half a request: the connection is busy, so a graceful shutdown would wait for it.
    let mut stalled = std::net::TcpStream::connect(&running.address).unwrap();
    stalled
        .write_all(b"GET /healthz HTTP/1.1\r\nHost: x\r\n")
        .unwrap();
    std::thread::sleep(Duration::from_millis(200));
    let started = Instant::now();
    assert_eq!(terminate(&mut running), 0);
    assert!(started.elapsed() < Duration::from_secs(15));
    drop(stalled);
}

#[tokio::test]
async fn tokens_never_appear_in_logs() {
    let mut running = start(&[], &[("LIVEVOTE_LOG", "trace")]);
    let client = reqwest::Client::new();
    let user = uuid::Uuid::new_v4();
    let minted: serde_json::Value = client
        .post(format!("http://{}/api/auth", running.address))
        .json(&serde_json::json!({"apiKey": "", "userId": user, "role": "viewer"}))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let token = minted["token"].as_str().unwrap().to_owned();
    let answer = client
        .get(format!("http://{}/api/balance", running.address))
        .bearer_auth(&token)
        .send()
        .await
        .unwrap();
    let status = answer.status();
    assert_eq!(status, 200, "{}", answer.text().await.unwrap_or_default());
    let socket_url = format!("ws://{}/realtime?token={token}", running.address);
    if let Ok((mut socket, _)) = tokio_tungstenite::connect_async(socket_url).await {
        let _ = socket.close(None).await;
    }
    let stderr = terminate_and_read_stderr(&mut running);
    assert!(
        !stderr.is_empty(),
        "trace logging produced nothing to check"
    );
    let signature = token.rsplit('.').next().unwrap();
    assert!(
        !stderr.contains(signature),
        "a token reached the logs:\n{stderr}"
    );
}

/// Runs a tool, or explains why a test that needs it cannot run here.
fn tool_available(name: &str) -> bool {
    let found = Command::new(name).arg("--version").output().is_ok()
        || Command::new(name).arg("version").output().is_ok();
    if !found {
        eprintln!("SKIPPED: `{name}` is not installed, so this TLS test cannot run here");
    }
    found
}

#[test]
fn tls_serves_https_when_cert_and_key_are_given() {
    if !tool_available("openssl") || !tool_available("curl") {
        return;
    }
    let directory = tempfile::tempdir().unwrap();
    let certificate = directory.path().join("cert.pem");
    let key = directory.path().join("key.pem");
    let generated = Command::new("openssl")
        .args([
            "req",
            "-x509",
            "-newkey",
            "ec",
            "-pkeyopt",
            "ec_paramgen_curve:prime256v1",
            "-nodes",
            "-days",
            "1",
        ])
        .args([
            "-subj",
            "/CN=localhost",
            "-addext",
            "subjectAltName=IP:127.0.0.1",
        ])
        .arg("-keyout")
        .arg(&key)
        .arg("-out")
        .arg(&certificate)
        .output()
        .unwrap();
    assert!(
        generated.status.success(),
        "{}",
        String::from_utf8_lossy(&generated.stderr)
    );

    let mut running = start(
        &[
            "--tls-cert",
            certificate.to_str().unwrap(),
            "--tls-key",
            key.to_str().unwrap(),
        ],
        &[],
    );
    let answer = Command::new("curl")
        .args(["--silent", "--show-error", "--max-time", "10", "--cacert"])
        .arg(&certificate)
        .arg(format!("https://{}/healthz", running.address))
        .output()
        .unwrap();
    assert!(
        answer.status.success(),
        "{}",
        String::from_utf8_lossy(&answer.stderr)
    );
    assert_eq!(String::from_utf8_lossy(&answer.stdout), "ok");
    assert_eq!(terminate(&mut running), 0);
}

/// Under a low open-file limit the server lowers its socket cap to fit, so that sockets past
/// it are refused with 503 instead of hanging in an accept loop that has run out of files.
#[tokio::test]
async fn a_low_open_file_limit_caps_sockets_with_503_instead_of_hanging() {
    let mut command = Command::new("bash");
    command
        .arg("-c")
        .arg(format!(
            "ulimit -n 400 && exec {BINARY} --dev --listen 127.0.0.1:0 --database-url sqlite::memory:"
        ))
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    let mut child = command.spawn().unwrap();
    let mut lines = BufReader::new(child.stdout.take().unwrap()).lines();
    let line = lines.next().unwrap().unwrap();
    let address = line
        .strip_prefix("listening on http://")
        .unwrap_or_else(|| panic!("{line}"))
        .to_owned();
    let mut running = Running { child, address };

    let minted: serde_json::Value = reqwest::Client::new()
        .post(format!("http://{}/api/auth", running.address))
        .json(&serde_json::json!({"userId": uuid::Uuid::new_v4(), "role": "viewer"}))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let token = minted["token"].as_str().unwrap();
    let url = format!("ws://{}/realtime?token={token}", running.address);
    let mut open = Vec::new();
    let mut refused = None;
    for _ in 0..300 {
        let attempt = tokio::time::timeout(
            Duration::from_secs(5),
            tokio_tungstenite::connect_async(&url),
        )
        .await;
        match attempt.expect("a connect past the cap must be answered, not left hanging") {
            Ok((socket, _)) => open.push(socket),
            Err(tokio_tungstenite::tungstenite::Error::Http(response)) => {
                refused = Some(response);
                break;
            }
            Err(other) => panic!("unexpected connect error: {other}"),
        }
    }
    let response = refused.expect("the cap (400 files less a reserve) was never reached");
    assert_eq!(response.status(), 503);
    assert!(response.headers().contains_key("retry-after"));
    assert!(
        open.len() >= 100,
        "only {} sockets before the cap",
        open.len()
    );
    drop(open);
    let stderr = terminate_and_read_stderr(&mut running);
    assert!(
        stderr.contains("lowered to fit the open-file limit"),
        "{stderr}"
    );
}
