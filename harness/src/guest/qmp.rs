//! QEMU's machine protocol (QMP) over the monitor socket: commands and
//! their answers, on the process's runtime with a timeout on every answer.

use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use tokio::process::Child;

use crate::host::process;

/// QEMU's machine protocol refused a command, or did not answer it.
#[derive(Debug, thiserror::Error)]
#[error("QEMU monitor, {command}: {message}")]
pub(crate) struct MonitorError {
    /// The QMP command (or what was awaited).
    pub(crate) command: String,
    /// What went wrong.
    pub(crate) message: String,
}

/// Why a socket of a QEMU just started could not be connected.
pub(crate) enum ConnectError {
    Exited,
    Io(PathBuf, std::io::Error),
}

pub(crate) fn connect(path: &Path, child: &mut Child) -> Result<UnixStream, ConnectError> {
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        if let Ok(Some(_)) = child.try_wait() {
            return Err(ConnectError::Exited);
        }
        match UnixStream::connect(path) {
            Ok(stream) => return Ok(stream),
            Err(e) if Instant::now() > deadline => {
                return Err(ConnectError::Io(path.to_owned(), e))
            }
            Err(_) => std::thread::sleep(Duration::from_millis(50)),
        }
    }
}

/// A QMP connection: one JSON object per line each way. Asynchronous events
/// that arrive while a command waits for its answer are kept (the last
/// [`KEPT_EVENTS`]) for [`Qmp::wait_event`]. It runs on the process's
/// runtime, every answer awaited with a timeout; its methods are called
/// from the trial's own thread.
pub(crate) struct Qmp {
    reader: tokio::io::BufReader<tokio::net::unix::OwnedReadHalf>,
    writer: tokio::net::unix::OwnedWriteHalf,
    events: std::collections::VecDeque<serde_json::Value>,
}

/// How many unclaimed events a connection keeps.
const KEPT_EVENTS: usize = 64;

/// How long QEMU may take to answer one QMP command.
const QMP_ANSWER: Duration = Duration::from_secs(60);

impl Qmp {
    pub(crate) fn connect(path: &Path, child: &mut Child) -> Result<Qmp, ConnectError> {
        let io = |e| ConnectError::Io(path.to_owned(), e);
        let mut qmp = Qmp::over(connect(path, child)?).map_err(io)?;
        // The greeting, then capability negotiation, before any command.
        process::block_on(qmp.next_message()).map_err(io)?;
        qmp.execute("qmp_capabilities", None)
            .map_err(|e| io(std::io::Error::other(e.to_string())))?;
        Ok(qmp)
    }

    /// A QMP connection over a connected socket.
    pub(crate) fn over(stream: UnixStream) -> std::io::Result<Qmp> {
        stream.set_nonblocking(true)?;
        let _runtime = process::runtime().enter();
        let (reader, writer) = tokio::net::UnixStream::from_std(stream)?.into_split();
        Ok(Qmp {
            reader: tokio::io::BufReader::new(reader),
            writer,
            events: std::collections::VecDeque::new(),
        })
    }

    pub(crate) fn execute(
        &mut self,
        command: &str,
        arguments: Option<serde_json::Value>,
    ) -> Result<serde_json::Value, MonitorError> {
        let failed = |message: String| MonitorError {
            command: command.to_owned(),
            message,
        };
        let mut request = serde_json::json!({ "execute": command });
        if let Some(arguments) = arguments {
            request["arguments"] = arguments;
        }
        let events = &mut self.events;
        let reader = &mut self.reader;
        let writer = &mut self.writer;
        process::block_on(async {
            use tokio::io::AsyncWriteExt as _;
            writer
                .write_all(format!("{request}\n").as_bytes())
                .await
                .map_err(|e| failed(e.to_string()))?;
            loop {
                let message = next_message(reader, QMP_ANSWER)
                    .await
                    .map_err(|e| failed(e.to_string()))?;
                if let Some(answer) = message.get("return") {
                    return Ok(answer.clone());
                }
                if let Some(error) = message.get("error") {
                    return Err(failed(
                        error["desc"].as_str().unwrap_or("unknown error").to_owned(),
                    ));
                }
                // An event ("event": ...): not the answer, kept.
                keep(events, message);
            }
        })
    }

    /// Waits up to `timeout` for an event called `name` whose `data`
    /// satisfies `wanted`, among those kept and those still to come;
    /// returns its `data`. Other events are kept for later waits.
    pub(crate) fn wait_event(
        &mut self,
        name: &str,
        wanted: impl Fn(&serde_json::Value) -> bool,
        timeout: Duration,
    ) -> Result<serde_json::Value, MonitorError> {
        let matches = |message: &serde_json::Value| {
            message["event"].as_str() == Some(name) && wanted(&message["data"])
        };
        if let Some(at) = self.events.iter().position(matches) {
            let message = self.events.remove(at).unwrap_or_default();
            return Ok(message["data"].clone());
        }
        let failed = |message: String| MonitorError {
            command: format!("waiting for {name}"),
            message,
        };
        let deadline = tokio::time::Instant::now() + timeout;
        let events = &mut self.events;
        let reader = &mut self.reader;
        process::block_on(async {
            loop {
                let left = deadline.saturating_duration_since(tokio::time::Instant::now());
                let message = next_message(reader, left).await.map_err(|e| {
                    if e.kind() == std::io::ErrorKind::TimedOut {
                        failed(format!("no such event within {}s", timeout.as_secs()))
                    } else {
                        failed(e.to_string())
                    }
                })?;
                if matches(&message) {
                    return Ok(message["data"].clone());
                }
                if message.get("event").is_some() {
                    keep(events, message);
                }
            }
        })
    }

    /// The next message, within [`QMP_ANSWER`].
    async fn next_message(&mut self) -> std::io::Result<serde_json::Value> {
        next_message(&mut self.reader, QMP_ANSWER).await
    }
}

/// Keeps an event, dropping the oldest beyond [`KEPT_EVENTS`].
fn keep(events: &mut std::collections::VecDeque<serde_json::Value>, event: serde_json::Value) {
    if events.len() == KEPT_EVENTS {
        events.pop_front();
    }
    events.push_back(event);
}

/// The next message, within `within`.
async fn next_message(
    reader: &mut tokio::io::BufReader<tokio::net::unix::OwnedReadHalf>,
    within: Duration,
) -> std::io::Result<serde_json::Value> {
    use tokio::io::AsyncBufReadExt as _;
    let mut line = String::new();
    let read = tokio::time::timeout(within, reader.read_line(&mut line))
        .await
        .map_err(|_| {
            std::io::Error::new(
                std::io::ErrorKind::TimedOut,
                format!("QEMU did not answer within {}s", within.as_secs()),
            )
        })??;
    if read == 0 {
        return Err(std::io::Error::new(
            std::io::ErrorKind::UnexpectedEof,
            "QEMU closed the monitor",
        ));
    }
    serde_json::from_str(&line).map_err(std::io::Error::other)
}

/// For unit tests: a QMP connection whose peer answers each request with
/// the next canned lines, and tells the requests it read when joined.
#[cfg(test)]
pub(crate) fn fake(answers: Vec<&'static str>) -> (Qmp, std::thread::JoinHandle<Vec<String>>) {
    use std::io::{BufRead as _, BufReader, Write as _};
    let (ours, theirs) = UnixStream::pair().expect("socketpair");
    let peer = std::thread::spawn(move || {
        let mut reader = BufReader::new(theirs.try_clone().expect("clone"));
        let mut writer = theirs;
        let mut requests = Vec::new();
        for answer in answers {
            let mut line = String::new();
            if reader.read_line(&mut line).unwrap_or(0) == 0 {
                break;
            }
            requests.push(line.trim().to_owned());
            writer.write_all(answer.as_bytes()).expect("answer");
        }
        requests
    });
    (Qmp::over(ours).expect("a QMP connection"), peer)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::{BufRead as _, BufReader, Write as _};

    use super::fake as fake_qmp;

    #[test]
    fn an_event_is_found_whether_it_came_before_or_after_the_wait() {
        let (ours, theirs) = UnixStream::pair().expect("socketpair");
        let (done, finished) = std::sync::mpsc::channel::<()>();
        let peer = std::thread::spawn(move || {
            let mut reader = BufReader::new(theirs.try_clone().expect("clone"));
            let mut writer = theirs;
            let mut line = String::new();
            let _ = reader.read_line(&mut line);
            writer
                .write_all(
                    concat!(
                        "{\"event\": \"DEVICE_DELETED\", \"data\": {\"device\": \"disk-a\"}}\n",
                        "{\"return\": {}}\n",
                        "{\"event\": \"RESET\", \"data\": {}}\n",
                        "{\"event\": \"DEVICE_DELETED\", \"data\": {\"path\": \"/x\"}}\n",
                        "{\"event\": \"DEVICE_DELETED\", \"data\": {\"device\": \"disk-b\"}}\n",
                    )
                    .as_bytes(),
                )
                .expect("events");
            // The monitor stays open until the test is done with it.
            let _ = finished.recv();
            line
        });
        let mut qmp = Qmp::over(ours).expect("a QMP connection");
        qmp.execute("device_del", Some(serde_json::json!({ "id": "disk-b" })))
            .expect("answer");
        let deleted =
            |id: &'static str| move |data: &serde_json::Value| data["device"].as_str() == Some(id);
        let b = qmp
            .wait_event("DEVICE_DELETED", deleted("disk-b"), Duration::from_secs(5))
            .expect("disk-b's event came after the answer");
        assert_eq!(b["device"], "disk-b");
        qmp.wait_event("DEVICE_DELETED", deleted("disk-a"), Duration::from_secs(5))
            .expect("disk-a's event came before the answer and was kept");
        let err = qmp
            .wait_event(
                "DEVICE_DELETED",
                deleted("disk-a"),
                Duration::from_millis(200),
            )
            .expect_err("an event is claimed once");
        assert!(err.to_string().contains("no such event within"), "{err}");
        let _ = done.send(());
        let request = peer.join().expect("peer");
        assert!(request.contains(r#""id":"disk-b""#), "{request}");
    }

    #[test]
    fn qmp_skips_events_and_reports_errors() {
        let (mut qmp, peer) = fake_qmp(vec![
            "{\"event\": \"STOP\", \"timestamp\": {}}\n{\"return\": {\"status\": \"paused\"}}\n",
            "{\"error\": {\"class\": \"GenericError\", \"desc\": \"no migration in progress\"}}\n",
        ]);
        let status = qmp.execute("query-status", None).expect("answer");
        assert_eq!(status["status"], "paused");
        let err = qmp
            .execute(
                "migrate",
                Some(serde_json::json!({ "uri": "exec:cat > f" })),
            )
            .expect_err("an error answer");
        assert!(
            err.to_string()
                .contains("migrate: no migration in progress"),
            "{err}"
        );
        let requests = peer.join().expect("peer");
        assert_eq!(requests[0], r#"{"execute":"query-status"}"#);
        assert!(
            requests[1].contains(r#""arguments":{"uri":"exec:cat > f"}"#),
            "{}",
            requests[1]
        );
    }
}
