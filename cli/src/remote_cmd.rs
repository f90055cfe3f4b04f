//! The operator side of the CLI: login, registry listings, push, assignments, devices, tokens, enrollment
//! tokens and the audit log, each a thin call to the REST API.

use std::fmt::Write as _;
use std::path::Path;

use anyhow::Context;
use reqwest::Method;
use serde_json::{Value, json};

use crate::args::{Command, DevicesCmd, EnrollTokenCmd, TokensCmd};
use crate::output::Out;
use crate::remote::{Login, Remote, save_login};

fn labels(pairs: &[String]) -> anyhow::Result<Value> {
    let mut map = serde_json::Map::new();
    for p in pairs {
        let (k, v) = p.split_once('=').with_context(|| format!("label {p:?} is not key=value"))?;
        map.insert(k.trim().to_owned(), Value::String(v.trim().to_owned()));
    }
    Ok(Value::Object(map))
}

fn s(v: &Value, k: &str) -> String {
    match &v[k] {
        Value::String(s) => s.clone(),
        Value::Null => "-".into(),
        other => other.to_string(),
    }
}

fn encode(q: &str) -> String {
    q.bytes()
        .map(|b| match b {
            b'a'..=b'z' | b'A'..=b'Z' | b'0'..=b'9' | b'-' | b'_' | b'.' => (b as char).to_string(),
            _ => format!("%{b:02X}"),
        })
        .collect()
}

pub fn run(cmd: Command, out: &Out) -> anyhow::Result<()> {
    match cmd {
        Command::Login { server, token, ca_cert, fingerprint } => {
            let ca_cert =
                ca_cert.map(|p| std::fs::canonicalize(&p).with_context(|| format!("{}", p.display()))).transpose()?;
            let login = Login { server, token, ca_cert, fingerprint };
            let remote = Remote::new(&login)?;
            // Prove the token works before saving it.
            let models = remote.get_json("/models").context("checking the token against the server")?;
            let path = save_login(&login)?;
            out.emit(
                format!(
                    "logged in to {} ({} model(s)); saved to {}",
                    login.server,
                    models.as_array().map_or(0, Vec::len),
                    path.display()
                ),
                json!({"server": login.server, "saved": path}),
            );
        }
        Command::Models => {
            let v = Remote::from_saved()?.get_json("/models")?;
            let mut t = format!("{:24} {:>8} {:>9}\n", "MODEL", "LATEST", "RELEASES");
            for m in v.as_array().into_iter().flatten() {
                let _ = writeln!(t, "{:24} {:>8} {:>9}", s(m, "model"), s(m, "latest_version"), s(m, "releases"));
            }
            out.emit(t.trim_end(), v);
        }
        Command::Releases { model } => {
            let v = Remote::from_saved()?.get_json(&format!("/models/{}/releases", encode(&model)))?;
            let mut t =
                format!("{:8} {:6} {:24} {:26} {}\n", "VERSION", "FLOOR", "PUBLISHED", "VARIANTS", "DESCRIPTION");
            for r in v.as_array().into_iter().flatten() {
                let variants: Vec<String> = r["variants"]
                    .as_array()
                    .into_iter()
                    .flatten()
                    .filter_map(|x| x.as_str().map(str::to_owned))
                    .collect();
                let _ = writeln!(
                    t,
                    "{:8} {:6} {:24} {:26} {}",
                    s(r, "version"),
                    s(r, "security_floor"),
                    s(r, "published_at"),
                    variants.join(","),
                    s(r, "description")
                );
            }
            out.emit(t.trim_end(), v);
        }
        Command::Assign { model, version, selector } => {
            let v = Remote::from_saved()?.send_json(
                Method::POST,
                "/assignments",
                &json!({"model": model, "version": version, "selector": selector}),
            )?;
            out.emit(
                format!(
                    "assigned {model} {version} to {} (assignment {})",
                    if selector.is_empty() { "every device" } else { &selector },
                    s(&v, "id")
                ),
                v,
            );
        }
        Command::Devices(c) => devices(c, out)?,
        Command::Rollout(c) => crate::rollout_cmd::run(c, out)?,
        Command::Tokens(c) => {
            let remote = Remote::from_saved()?;
            match c {
                TokensCmd::Create { name, role, expires_in_secs } => {
                    let body = json!({"name": name, "role": role, "expires_in_secs": expires_in_secs});
                    let v = remote.send_json(Method::POST, "/tokens", &body)?;
                    out.emit(
                        format!("{}\n(token {} for {name}, role {role}; shown once)", s(&v, "token"), s(&v, "id")),
                        v,
                    );
                }
                TokensCmd::List => {
                    let v = remote.get_json("/tokens")?;
                    let mut t = format!(
                        "{:5} {:24} {:10} {:26} {:26} {}\n",
                        "ID", "NAME", "ROLE", "CREATED", "EXPIRES", "REVOKED"
                    );
                    for k in v.as_array().into_iter().flatten() {
                        let expires = k["expires_at"].as_str().unwrap_or("never");
                        let _ = writeln!(
                            t,
                            "{:5} {:24} {:10} {:26} {:26} {}",
                            s(k, "id"),
                            s(k, "name"),
                            s(k, "role"),
                            s(k, "created_at"),
                            expires,
                            s(k, "revoked")
                        );
                    }
                    out.emit(t.trim_end(), v);
                }
                TokensCmd::Revoke { id } => {
                    remote.send_json(Method::DELETE, &format!("/tokens/{id}"), &Value::Null)?;
                    out.emit(format!("revoked token {id}"), json!({"revoked": id}));
                }
            }
        }
        Command::EnrollToken(EnrollTokenCmd::Create { labels: l, expires_in_secs }) => {
            let v = Remote::from_saved()?.send_json(
                Method::POST,
                "/enrollment-tokens",
                &json!({"labels": labels(&l)?, "expires_in_secs": expires_in_secs}),
            )?;
            out.emit(
                format!("{}\n(one-time; expires {}; labels {})", s(&v, "token"), s(&v, "expires_at"), v["labels"]),
                v,
            );
        }
        Command::Audit { limit, target } => {
            let target = target.map(|t| format!("&target={}", encode(&t))).unwrap_or_default();
            let v = Remote::from_saved()?.get_json(&format!("/audit?limit={limit}{target}"))?;
            let mut t = String::new();
            for e in v.as_array().into_iter().flatten() {
                let _ = writeln!(
                    t,
                    "{} {:32} {:20} {:24} from {} {}",
                    s(e, "at"),
                    s(e, "actor"),
                    s(e, "action"),
                    s(e, "target"),
                    s(e, "source"),
                    brief(&e["detail"])
                );
            }
            out.emit(t.trim_end(), v);
        }
        _ => unreachable!("local commands are dispatched in main"),
    }
    Ok(())
}

fn devices(c: DevicesCmd, out: &Out) -> anyhow::Result<()> {
    let remote = Remote::from_saved()?;
    match c {
        DevicesCmd::List { selector, limit, after } => {
            let mut q = format!("/devices?limit={limit}&selector={}", encode(&selector));
            if let Some(a) = after {
                q.push_str(&format!("&after={}", encode(&a)));
            }
            let v = remote.get_json(&q)?;
            let mut t = format!("{:24} {:20} {:26} {:8} {}\n", "DEVICE", "CLASS", "LAST SEEN", "REVOKED", "LABELS");
            for d in v["devices"].as_array().into_iter().flatten() {
                let _ = writeln!(
                    t,
                    "{:24} {:20} {:26} {:8} {}",
                    s(d, "id"),
                    s(d, "device_class"),
                    s(d, "last_seen"),
                    s(d, "revoked"),
                    d["labels"]
                );
            }
            if let Some(next) = v["next"].as_str() {
                let _ = writeln!(t, "(more: --after {next})");
            }
            out.emit(t.trim_end(), v);
        }
        DevicesCmd::Show { id } => {
            let v = remote.get_json(&format!("/devices/{}", encode(&id)))?;
            out.emit(serde_json::to_string_pretty(&v)?, v);
        }
        DevicesCmd::Label { id, labels: l } => {
            let v = remote.send_json(
                Method::PUT,
                &format!("/devices/{}/labels", encode(&id)),
                &json!({"labels": labels(&l)?}),
            )?;
            out.emit(format!("{id}: labels {}", v["labels"]), v);
        }
        DevicesCmd::Revoke { id } => {
            remote.send_json(Method::POST, &format!("/devices/{}/revoke", encode(&id)), &json!({}))?;
            out.emit(format!("revoked {id}"), json!({"revoked": id}));
        }
    }
    Ok(())
}

/// `edgefleet release push DIR`: blobs first (with progress; those already stored are skipped), then the
/// manifest, which the server verifies against its trust root.
pub fn push(release: &Path, out: &Out) -> anyhow::Result<()> {
    let rd = crate::release::ReleaseDir::locate(release);
    let env = rd.envelope()?;
    let manifest: model_registry::ReleaseManifest = env.typed().context("release manifest")?;
    let remote = Remote::from_saved()?;
    let mut uploaded = 0u64;
    let mut skipped = 0u64;
    for v in &manifest.variants {
        for (what, r) in [("model", &v.zstd), ("golden vectors", &v.golden)] {
            let head = remote.request(Method::HEAD, &format!("/blobs/{}", r.sha256)).send();
            let stored_size = head
                .ok()
                .filter(|h| h.status().is_success())
                .and_then(|h| h.headers().get(reqwest::header::CONTENT_LENGTH)?.to_str().ok()?.parse::<u64>().ok());
            if stored_size == Some(r.size) {
                skipped += 1;
                continue;
            }
            let path = rd.blob(r);
            let file = std::fs::File::open(&path).with_context(|| format!("{} {what}: {}", v.id, path.display()))?;
            let bar = out.bytes_bar(r.size, &format!("{} {what}", v.id));
            let body = reqwest::blocking::Body::sized(bar.wrap_read(file), r.size);
            remote.send(remote.request(Method::PUT, &format!("/blobs/{}", r.sha256)).body(body))?;
            bar.finish_and_clear();
            uploaded += 1;
        }
    }
    let bytes = std::fs::read(&rd.manifest)?;
    let v: Value = remote
        .send(remote.request(Method::POST, "/releases").header("content-type", "application/json").body(bytes))?
        .json()?;
    out.emit(
        format!(
            "published {} release {} ({uploaded} blob(s) uploaded, {skipped} already there)",
            manifest.model, manifest.version
        ),
        json!({"published": v, "uploaded": uploaded, "skipped": skipped}),
    );
    Ok(())
}

/// An audit entry's detail for a terminal line: as it is when short; otherwise cut (`--json` has it whole).
fn brief(detail: &serde_json::Value) -> String {
    let text = detail.to_string();
    match text.char_indices().nth(160) {
        Some((i, _)) => format!("{}… (--json for all of it)", &text[..i]),
        None => text,
    }
}
