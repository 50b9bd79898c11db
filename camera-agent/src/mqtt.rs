//! MQTT: a retained heartbeat on `{prefix}/cameras/{camera}/status` every
//! `heartbeat_secs` (and at once on connect, pause and resume), last-will `offline` on the
//! same topic, and remote commands on `{prefix}/cameras/{camera}/commands`, each
//! acknowledged on `{prefix}/cameras/{camera}/replies`. Payloads are JSON; they are
//! documented in docs/camera-agent.md.
//!
//! MQTT 3.1.1, QoS 1, clean session: what RabbitMQ's MQTT plugin speaks. A command sent
//! while the camera is offline is not queued for it (the operator sees no reply and the
//! fleet view shows the camera offline).

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use chrono::{SecondsFormat, Utc};
use rand::Rng;
use rumqttc::{
    AsyncClient, ConnectReturnCode, Event, EventLoop, LastWill, MqttOptions, Outgoing, Packet, QoS,
    Transport,
};
use serde::Deserialize;
use serde_json::{Value, json};
use tokio::sync::Notify;
use tokio_util::sync::CancellationToken;

use crate::control::Control;
use crate::spool::Spool;

pub const MAX_INTERVAL_SECS: u64 = 86_400;

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Topics {
    pub status: String,
    pub commands: String,
    pub replies: String,
}

impl Topics {
    pub fn new(prefix: &str, camera: &str) -> Topics {
        let base = format!("{prefix}/cameras/{camera}");
        Topics {
            status: format!("{base}/status"),
            commands: format!("{base}/commands"),
            replies: format!("{base}/replies"),
        }
    }
}

/// Where and how to connect.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Broker {
    pub host: String,
    pub port: u16,
    pub tls: bool,
    pub username: Option<String>,
    pub password: Option<String>,
}

fn percent_decode(s: &str) -> String {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'%'
            && let Some(v) = s
                .get(i + 1..i + 3)
                .and_then(|h| u8::from_str_radix(h, 16).ok())
        {
            out.push(v);
            i += 3;
            continue;
        }
        out.push(b[i]);
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// `mqtt://[user:pass@]host[:1883]` or `mqtts://...[:8883]` (also `tcp://`, `ssl://`).
/// Non-empty `username`/`password` override the URL's.
pub fn parse_broker(url: &str, username: &str, password: &str) -> Result<Broker, String> {
    let u = reqwest::Url::parse(url).map_err(|e| format!("MQTT URL {url:?}: {e}"))?;
    let tls = match u.scheme() {
        "mqtt" | "tcp" => false,
        "mqtts" | "ssl" => true,
        other => {
            return Err(format!(
                "MQTT URL scheme {other:?} is not supported (mqtt:// or mqtts://)"
            ));
        }
    };
    let host = u
        .host_str()
        .filter(|h| !h.is_empty())
        .ok_or_else(|| format!("MQTT URL {url:?} has no host"))?
        .trim_start_matches('[')
        .trim_end_matches(']')
        .to_string();
    let port = u.port().unwrap_or(if tls { 8883 } else { 1883 });
    let pick = |flag: &str, from_url: &str| {
        if !flag.is_empty() {
            Some(flag.to_string())
        } else if !from_url.is_empty() {
            Some(percent_decode(from_url))
        } else {
            None
        }
    };
    Ok(Broker {
        host,
        port,
        tls,
        username: pick(username, u.username()),
        password: pick(password, u.password().unwrap_or("")),
    })
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Command {
    Pause,
    Resume,
    Rescan,
    SetInterval(u64),
}

impl Command {
    fn name(&self) -> &'static str {
        match self {
            Command::Pause => "pause",
            Command::Resume => "resume",
            Command::Rescan => "rescan",
            Command::SetInterval(_) => "set-interval",
        }
    }
}

#[derive(Deserialize)]
struct CommandMsg {
    #[serde(default)]
    id: Option<Value>,
    command: String,
    #[serde(default, alias = "interval_secs")]
    seconds: Option<u64>,
    #[serde(default)]
    interval: Option<String>,
}

/// A parsed command message: its id (echoed in the reply), its name, and the command.
#[derive(Debug, PartialEq)]
pub struct Request {
    pub id: Option<Value>,
    pub name: String,
    pub command: Result<Command, String>,
}

fn interval_secs(seconds: Option<u64>, interval: Option<&str>) -> Result<u64, String> {
    let secs = match (seconds, interval) {
        (Some(s), _) => s,
        (None, Some(i)) => crate::settings::parse_duration(i)?.as_secs(),
        (None, None) => {
            return Err("set-interval needs \"seconds\" (or \"interval\", e.g. \"30s\")".into());
        }
    };
    if (1..=MAX_INTERVAL_SECS).contains(&secs) {
        Ok(secs)
    } else {
        Err(format!(
            "interval must be 1-{MAX_INTERVAL_SECS} seconds, got {secs}"
        ))
    }
}

/// JSON (`{"id":"7","command":"set-interval","seconds":15}`) or plain text
/// (`pause`, `resume`, `rescan`, `set-interval 15s`).
pub fn parse_command(payload: &[u8]) -> Request {
    let text = String::from_utf8_lossy(payload);
    let text = text.trim();
    let (id, name, seconds, interval) = if text.starts_with('{') {
        match serde_json::from_str::<CommandMsg>(text) {
            Ok(m) => (m.id, m.command, m.seconds, m.interval),
            Err(e) => {
                return Request {
                    id: serde_json::from_str::<Value>(text)
                        .ok()
                        .and_then(|v| v.get("id").cloned()),
                    name: String::new(),
                    command: Err(format!("invalid command message: {e}")),
                };
            }
        }
    } else {
        let mut words = text.split_whitespace();
        let name = words.next().unwrap_or("").to_string();
        (None, name, None, words.next().map(str::to_owned))
    };
    let command = match name.as_str() {
        "pause" => Ok(Command::Pause),
        "resume" => Ok(Command::Resume),
        "rescan" => Ok(Command::Rescan),
        "set-interval" => interval_secs(seconds, interval.as_deref()).map(Command::SetInterval),
        other => Err(format!(
            "unknown command {other:?} (pause, resume, rescan, set-interval)"
        )),
    };
    Request { id, name, command }
}

fn now() -> String {
    Utc::now().to_rfc3339_opts(SecondsFormat::Millis, true)
}

/// The heartbeat: what an operator needs to see at a glance.
pub fn status_payload(camera: &str, spool: &Spool, control: &Control) -> Value {
    let s = spool.stats();
    let u = control.stats();
    let disk = spool.disk_space();
    json!({
        "camera": camera,
        "state": if control.is_paused() { "paused" } else { "running" },
        "uplink": u.uplink,
        "sent_at": now(),
        "started_at": control.started_at.to_rfc3339_opts(SecondsFormat::Secs, true),
        "interval_secs": control.heartbeat_secs(),
        "backlog": s.backlog,
        "backlog_bytes": s.backlog_bytes,
        "in_flight": s.in_flight,
        "rejected": s.rejected,
        "uploaded": u.uploaded,
        "uploaded_bytes": u.uploaded_bytes,
        "last_upload_at": u.last_upload_at.map(|t| t.to_rfc3339_opts(SecondsFormat::Millis, true)),
        "last_error": u.last_error,
        "disk_free_bytes": disk.map(|d| d.0),
        "disk_total_bytes": disk.map(|d| d.1),
        "warnings": control.warnings(),
        "version": env!("CARGO_PKG_VERSION"),
    })
}

/// The last will, fixed at connect time: the broker publishes it (retained) when the
/// connection dies without a clean disconnect.
pub fn will_payload(camera: &str) -> Value {
    json!({
        "camera": camera,
        "state": "offline",
        "reason": "connection lost",
        "version": env!("CARGO_PKG_VERSION"),
    })
}

pub struct MqttAgent {
    pub broker: Broker,
    pub camera: String,
    pub topics: Topics,
    pub tls: Option<Arc<rustls::ClientConfig>>,
    pub spool: Arc<Spool>,
    pub control: Arc<Control>,
}

impl MqttAgent {
    fn options(&self) -> MqttOptions {
        let mut o = MqttOptions::new(
            format!("lapseguard-camera-{}", self.camera),
            self.broker.host.clone(),
            self.broker.port,
        );
        // Keep-alive bounds how long a silently dead link (no FIN/RST) takes to trigger
        // the last will: 1.5 × keep-alive.
        let ka = self.control.heartbeat_secs().clamp(5, 60);
        o.set_keep_alive(Duration::from_secs(ka));
        o.set_clean_session(true);
        o.set_last_will(LastWill::new(
            self.topics.status.clone(),
            will_payload(&self.camera).to_string().into_bytes(),
            QoS::AtLeastOnce,
            true,
        ));
        if let Some(u) = &self.broker.username {
            o.set_credentials(u.clone(), self.broker.password.clone().unwrap_or_default());
        }
        if let Some(cfg) = &self.tls {
            o.set_transport(Transport::tls_with_config(
                rumqttc::TlsConfiguration::Rustls(cfg.clone()),
            ));
        }
        o
    }

    /// Runs until `shutdown`; then publishes a retained `offline` status ("stopped") and
    /// disconnects cleanly (a clean disconnect suppresses the last will).
    pub async fn run(self, shutdown: CancellationToken) {
        let (client, mut eventloop) = AsyncClient::new(self.options(), 64);
        let me = Arc::new(self);
        let connected = Arc::new(AtomicBool::new(false));
        let beat_now = Arc::new(Notify::new());
        let heartbeat = tokio::spawn(me.clone().heartbeats(
            client.clone(),
            connected.clone(),
            beat_now.clone(),
            shutdown.clone(),
        ));
        let mut failures: u32 = 0;
        loop {
            let ev = tokio::select! {
                _ = shutdown.cancelled() => break,
                ev = eventloop.poll() => ev,
            };
            match ev {
                Ok(Event::Incoming(Packet::ConnAck(ack))) => {
                    if ack.code == ConnectReturnCode::Success {
                        tracing::info!(broker = %me.broker.host, port = me.broker.port, "connected to the MQTT broker");
                        failures = 0;
                        connected.store(true, Ordering::SeqCst);
                        if let Err(e) =
                            client.try_subscribe(me.topics.commands.clone(), QoS::AtLeastOnce)
                        {
                            tracing::warn!(error = %e, "could not subscribe to commands");
                        }
                        beat_now.notify_one();
                    }
                }
                Ok(Event::Incoming(Packet::Publish(p))) if p.topic == me.topics.commands => {
                    let reply = me.handle(&p.payload).await;
                    if let Err(e) = client.try_publish(
                        me.topics.replies.clone(),
                        QoS::AtLeastOnce,
                        false,
                        reply.to_string().into_bytes(),
                    ) {
                        tracing::warn!(error = %e, "could not queue the command reply");
                    }
                    beat_now.notify_one();
                }
                Ok(_) => {}
                Err(e) => {
                    connected.store(false, Ordering::SeqCst);
                    failures = failures.saturating_add(1);
                    if failures == 1 || failures.is_multiple_of(20) {
                        tracing::warn!(error = %e, failures, "MQTT connection failed; heartbeats resume when it is back");
                    }
                    let base = Duration::from_millis(500)
                        .saturating_mul(1 << failures.min(6))
                        .min(Duration::from_secs(30));
                    let wait = base / 2 + rand::rng().random_range(Duration::ZERO..=base / 2);
                    tokio::select! {
                        _ = shutdown.cancelled() => break,
                        _ = tokio::time::sleep(wait) => {}
                    }
                }
            }
        }
        heartbeat.abort();
        if connected.load(Ordering::SeqCst) {
            let mut goodbye = status_payload(&me.camera, &me.spool, &me.control);
            goodbye["state"] = json!("offline");
            goodbye["reason"] = json!("stopped");
            let _ = client.try_publish(
                me.topics.status.clone(),
                QoS::AtLeastOnce,
                true,
                goodbye.to_string().into_bytes(),
            );
            let _ = client.try_disconnect();
            flush(&mut eventloop).await;
        }
    }

    async fn heartbeats(
        self: Arc<Self>,
        client: AsyncClient,
        connected: Arc<AtomicBool>,
        now: Arc<Notify>,
        shutdown: CancellationToken,
    ) {
        let mut interval = self.control.subscribe_heartbeat();
        let mut paused = self.control.subscribe_paused();
        loop {
            if connected.load(Ordering::SeqCst) {
                let payload = status_payload(&self.camera, &self.spool, &self.control);
                if let Err(e) = client.try_publish(
                    self.topics.status.clone(),
                    QoS::AtLeastOnce,
                    true,
                    payload.to_string().into_bytes(),
                ) {
                    tracing::debug!(error = %e, "heartbeat not queued");
                }
            }
            let secs = *interval.borrow_and_update();
            paused.borrow_and_update();
            tokio::select! {
                _ = shutdown.cancelled() => return,
                _ = tokio::time::sleep(Duration::from_secs(secs)) => {}
                _ = now.notified() => {}
                r = interval.changed() => if r.is_err() { return },
                r = paused.changed() => if r.is_err() { return },
            }
        }
    }

    /// Executes one command; returns the reply.
    async fn handle(&self, payload: &[u8]) -> Value {
        let req = parse_command(payload);
        let result = match &req.command {
            Err(e) => Err(e.clone()),
            Ok(Command::Pause | Command::Resume) => {
                let pause = req.command == Ok(Command::Pause);
                let control = self.control.clone();
                match tokio::task::spawn_blocking(move || control.set_paused(pause)).await {
                    Ok(Ok(())) => Ok(()),
                    Ok(Err(e)) => Err(format!("could not persist the pause state: {e}")),
                    Err(e) => Err(e.to_string()),
                }
            }
            Ok(Command::Rescan) => {
                self.control.request_rescan();
                Ok(())
            }
            Ok(Command::SetInterval(secs)) => {
                self.control.set_heartbeat_secs(*secs);
                Ok(())
            }
        };
        let name = req
            .command
            .as_ref()
            .map(|c| c.name().to_string())
            .unwrap_or(req.name.clone());
        match &result {
            Ok(()) => tracing::info!(command = %name, id = ?req.id, "command executed"),
            Err(e) => tracing::warn!(command = %name, id = ?req.id, error = %e, "command refused"),
        }
        json!({
            "camera": self.camera,
            "id": req.id,
            "command": name,
            "ok": result.is_ok(),
            "error": result.err(),
            "state": if self.control.is_paused() { "paused" } else { "running" },
            "interval_secs": self.control.heartbeat_secs(),
            "at": now(),
        })
    }
}

/// Drives the event loop until the disconnect went out (at most 3 s).
async fn flush(eventloop: &mut EventLoop) {
    let _ = tokio::time::timeout(Duration::from_secs(3), async {
        loop {
            match eventloop.poll().await {
                Ok(Event::Outgoing(Outgoing::Disconnect)) | Err(_) => break,
                Ok(_) => {}
            }
        }
    })
    .await;
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn broker_urls() {
        assert_eq!(
            parse_broker("mqtt://127.0.0.1:51883", "", "").unwrap(),
            Broker {
                host: "127.0.0.1".into(),
                port: 51883,
                tls: false,
                username: None,
                password: None
            }
        );
        let b = parse_broker("mqtts://cam%40site:p%2Fw@broker.example", "", "").unwrap();
        assert_eq!((b.port, b.tls), (8883, true));
        assert_eq!(b.username.as_deref(), Some("cam@site"));
        assert_eq!(b.password.as_deref(), Some("p/w"));
        let b = parse_broker("mqtt://u:p@h", "other", "secret").unwrap();
        assert_eq!(b.username.as_deref(), Some("other"));
        assert_eq!(b.password.as_deref(), Some("secret"));
        assert_eq!(b.port, 1883);
        assert!(parse_broker("http://h", "", "").is_err());
        assert!(parse_broker("not a url", "", "").is_err());
    }

    #[test]
    fn commands() {
        assert_eq!(parse_command(b"pause").command, Ok(Command::Pause));
        assert_eq!(parse_command(b" resume\n").command, Ok(Command::Resume));
        assert_eq!(
            parse_command(b"set-interval 15s").command,
            Ok(Command::SetInterval(15))
        );
        let r = parse_command(br#"{"id":"7","command":"set-interval","seconds":20}"#);
        assert_eq!(r.id, Some(json!("7")));
        assert_eq!(r.command, Ok(Command::SetInterval(20)));
        assert_eq!(
            parse_command(br#"{"command":"set-interval","interval":"2m"}"#).command,
            Ok(Command::SetInterval(120))
        );
        assert!(
            parse_command(br#"{"command":"set-interval"}"#)
                .command
                .is_err()
        );
        assert!(
            parse_command(br#"{"command":"set-interval","seconds":0}"#)
                .command
                .is_err()
        );
        assert!(parse_command(b"reboot").command.is_err());
        let bad = parse_command(br#"{"id":3,"cmd":"pause"}"#);
        assert_eq!(bad.id, Some(json!(3)));
        assert!(bad.command.is_err());
        assert!(parse_command(&[0xff, 0xfe]).command.is_err());
    }

    #[test]
    fn topics() {
        let t = Topics::new("lapseguard", "cam-1");
        assert_eq!(t.status, "lapseguard/cameras/cam-1/status");
        assert_eq!(t.commands, "lapseguard/cameras/cam-1/commands");
        assert_eq!(t.replies, "lapseguard/cameras/cam-1/replies");
    }
}
