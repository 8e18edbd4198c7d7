//! Helpers to run the real `idres` binary in end-to-end tests: build it
//! once, start `serve` on port 0 in a temporary directory, learn the bound
//! addresses from its `listening <face> <addr>` lines, and stop it with a
//! signal.

#![allow(clippy::unwrap_used, clippy::missing_panics_doc)]

use std::collections::HashMap;
use std::io::{BufRead, BufReader, Write};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Output, Stdio};
use std::sync::mpsc;
use std::sync::OnceLock;
use std::time::{Duration, Instant};

/// The `idres` binary: `$IDRES_BIN`, or the workspace's debug build, built
/// on first use.
pub fn idres_bin() -> PathBuf {
    static BIN: OnceLock<PathBuf> = OnceLock::new();
    BIN.get_or_init(|| {
        if let Ok(p) = std::env::var("IDRES_BIN") {
            return PathBuf::from(p);
        }
        let root = Path::new(env!("CARGO_MANIFEST_DIR")).parent().unwrap();
        let status = Command::new(env!("CARGO"))
            .args(["build", "-q", "-p", "idres", "--bin", "idres"])
            .current_dir(root)
            .status()
            .expect("running cargo build");
        assert!(status.success(), "building idres failed");
        root.join("target/debug/idres")
    })
    .clone()
}

/// Runs `idres` with arguments and returns its output.
pub fn idres(args: &[&str]) -> Output {
    Command::new(idres_bin())
        .args(args)
        .env("IDRES_LOG", "warn")
        .output()
        .expect("running idres")
}

/// Writes JSON Lines records to a file.
pub fn write_records(path: &Path, lines: &[serde_json::Value]) {
    let mut f = std::fs::File::create(path).unwrap();
    for l in lines {
        writeln!(f, "{l}").unwrap();
    }
}

/// Imports a file into a data directory, asserting success.
pub fn import(data_dir: &Path, file: &Path) {
    let out = idres(&[
        "import",
        "--data-dir",
        data_dir.to_str().unwrap(),
        file.to_str().unwrap(),
    ]);
    assert!(
        out.status.success(),
        "import failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// A running `idres serve`.
#[derive(Debug)]
pub struct Node {
    child: Option<Child>,
    /// Bound address of each face, from its `listening` line.
    pub faces: HashMap<String, SocketAddr>,
    /// Standard error, collected in the background.
    stderr: mpsc::Receiver<String>,
}

impl Node {
    /// Starts `idres serve --data-dir DIR --handle-listen 127.0.0.1:0` plus
    /// `extra`, and waits (bounded) until the faces named in `wait_for` are
    /// listening.
    pub fn start(data_dir: &Path, extra: &[&str], wait_for: &[&str]) -> Node {
        let mut args = vec![
            "serve",
            "--data-dir",
            data_dir.to_str().unwrap(),
            "--handle-listen",
            "127.0.0.1:0",
        ];
        args.extend_from_slice(extra);
        let mut child = Command::new(idres_bin())
            .args(&args)
            .env("IDRES_LOG", "info")
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("starting idres serve");
        let (tx, rx) = mpsc::channel();
        let stdout = child.stdout.take().unwrap();
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines().map_while(Result::ok) {
                if tx.send(line).is_err() {
                    break;
                }
            }
        });
        let (etx, erx) = mpsc::channel();
        let stderr = child.stderr.take().unwrap();
        std::thread::spawn(move || {
            for line in BufReader::new(stderr).lines().map_while(Result::ok) {
                if etx.send(line).is_err() {
                    break;
                }
            }
        });
        let mut faces = HashMap::new();
        let deadline = Instant::now() + Duration::from_secs(30);
        while !wait_for.iter().all(|f| faces.contains_key(*f)) {
            let left = deadline.saturating_duration_since(Instant::now());
            match rx.recv_timeout(left) {
                Ok(line) => {
                    let parts: Vec<&str> = line.split_whitespace().collect();
                    if let ["listening", face, addr] = parts[..] {
                        faces.insert(face.to_owned(), addr.parse().unwrap());
                    }
                }
                Err(_) => {
                    let _ = child.kill();
                    let errs: Vec<String> = erx.try_iter().collect();
                    panic!("idres serve did not start: {}", errs.join("\n"));
                }
            }
        }
        Node {
            child: Some(child),
            faces,
            stderr: erx,
        }
    }

    /// The Handle protocol address.
    pub fn handle_addr(&self) -> SocketAddr {
        self.faces["handle"]
    }

    /// Sends SIGTERM and waits (bounded) for the exit; returns the status,
    /// how long it took, and what the node wrote to standard error.
    pub fn terminate(mut self) -> (ExitStatus, Duration, String) {
        let mut child = self.child.take().unwrap();
        let started = Instant::now();
        let status = Command::new("kill")
            .args(["-TERM", &child.id().to_string()])
            .status()
            .unwrap();
        assert!(status.success());
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            if let Some(s) = child.try_wait().unwrap() {
                let log: Vec<String> = self.stderr.try_iter().collect();
                return (s, started.elapsed(), log.join("\n"));
            }
            if Instant::now() > deadline {
                let _ = child.kill();
                panic!("idres serve did not exit after SIGTERM");
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

impl Drop for Node {
    fn drop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}
