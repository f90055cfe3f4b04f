//! `edgefleet trust`: create, sign, rotate, show and verify root.json, and push it to the control plane.

use std::fmt::Write as _;
use std::path::PathBuf;

use anyhow::Context;
use chrono::{Duration, DurationRound, Utc};
use model_registry::verify::update_root_chain;
use model_registry::{KeyId, KeyPair, Limits, PublicKey, Role, Root};

use crate::args::{TrustCmd, TrustInit, TrustRotate};
use crate::docs;
use crate::output::Out;

pub fn run(cmd: TrustCmd, out: &Out) -> anyhow::Result<()> {
    match cmd {
        TrustCmd::Init(a) => init(a, out),
        TrustCmd::Sign { root, key } => sign(root, key, out),
        TrustCmd::Rotate(a) => rotate(a, out),
        TrustCmd::Show { root } => show(root, out),
        TrustCmd::Push { root } => push(root, out),
        TrustCmd::Verify { trusted, chain } => verify(trusted, chain, out),
    }
}

fn expiry(days: i64) -> anyhow::Result<chrono::DateTime<Utc>> {
    anyhow::ensure!(days > 0, "--expires-days must be at least 1");
    Ok((Utc::now() + Duration::days(days)).duration_trunc(Duration::seconds(1))?)
}

fn publics(files: &[PathBuf]) -> anyhow::Result<Vec<PublicKey>> {
    files.iter().map(|f| docs::read_any_public(f)).collect()
}

fn init(a: TrustInit, out: &Out) -> anyhow::Result<()> {
    let k = &a.keys;
    let root = Root::new(
        expiry(a.expires_days)?,
        [
            (Role::Root, publics(&k.root_keys)?, k.root_threshold),
            (Role::Release, publics(&k.release_keys)?, k.release_threshold),
            (Role::Fleet, publics(&k.fleet_keys)?, k.fleet_threshold),
        ],
    )?;
    docs::write_new(&a.out, &model_registry::Envelope::new(&root)?)?;
    out.emit(
        format!(
            "wrote {} (version 1, unsigned): sign it with `edgefleet trust sign {} --key ROOT.key`",
            a.out.display(),
            a.out.display()
        ),
        serde_json::json!({"root": a.out, "version": 1, "expires": root.expires}),
    );
    Ok(())
}

fn sign(path: PathBuf, keys: Vec<PathBuf>, out: &Out) -> anyhow::Result<()> {
    anyhow::ensure!(!keys.is_empty(), "give at least one --key");
    let (mut env, _) = docs::read_root(&path)?;
    let mut ids = Vec::new();
    for k in &keys {
        let pair = KeyPair::read_private(k)?;
        env.sign(&pair)?;
        ids.push(pair.key_id());
    }
    docs::replace(&path, &env)?;
    out.emit(
        format!("signed {} with {}", path.display(), ids.iter().map(KeyId::short).collect::<Vec<_>>().join(", ")),
        serde_json::json!({"root": path, "signed_by": ids, "signatures": env.signatures.len()}),
    );
    Ok(())
}

fn rotate(a: TrustRotate, out: &Out) -> anyhow::Result<()> {
    let (_, current) = docs::read_root(&a.from)?;
    let mut next = current.next_version(expiry(a.expires_days)?);
    for id in &a.revoke {
        let keyid: KeyId = match id.parse() {
            Ok(k) => k,
            Err(_) => docs::read_any_public(&PathBuf::from(id))
                .with_context(|| format!("--revoke {id}: neither a key id nor a key file"))?
                .key_id(),
        };
        anyhow::ensure!(next.revoke_key(&keyid), "--revoke {id}: key {keyid} is not in {}", a.from.display());
    }
    for (role, files) in [(Role::Root, &a.add_root), (Role::Release, &a.add_release), (Role::Fleet, &a.add_fleet)] {
        for key in publics(files)? {
            next.add_key(role, key);
        }
    }
    for (role, t) in
        [(Role::Root, a.root_threshold), (Role::Release, a.release_threshold), (Role::Fleet, a.fleet_threshold)]
    {
        if let Some(t) = t {
            next.roles.get_mut(role).threshold = t;
        }
    }
    next.validate().context("the rotated root would not be valid")?;
    docs::write_new(&a.out, &model_registry::Envelope::new(&next)?)?;
    out.emit(
        format!(
            "wrote {} (version {}, unsigned): sign it with a threshold of version {}'s root keys and of its own",
            a.out.display(),
            next.version,
            current.version
        ),
        serde_json::json!({"root": a.out, "version": next.version}),
    );
    Ok(())
}

fn show(path: PathBuf, out: &Out) -> anyhow::Result<()> {
    let (env, root) = docs::read_root(&path)?;
    let mut text = format!("{}: root version {}, expires {}\n", path.display(), root.version, root.expires);
    let mut roles = serde_json::Map::new();
    for role in [Role::Root, Role::Release, Role::Fleet] {
        let r = root.roles.get(role);
        let _ = writeln!(text, "  {role:8} threshold {} of {}", r.threshold, r.keyids.len());
        for id in &r.keyids {
            let _ = writeln!(text, "           {id}");
        }
        roles.insert(role.to_string(), serde_json::json!({"threshold": r.threshold, "keyids": r.keyids}));
    }
    let count = env.count(&root.keys, &root.roles.root);
    let _ = write!(
        text,
        "  signed by {} of its own root keys (threshold {}){}",
        count.valid.len(),
        count.threshold,
        if count.met() { "" } else { " — NOT ENOUGH to be trusted on its own" }
    );
    for problem in &count.rejected {
        let _ = write!(text, "\n  not counted: {problem}");
    }
    out.emit(
        text,
        serde_json::json!({
            "root": path, "version": root.version, "expires": root.expires, "roles": roles,
            "self_signatures_valid": count.valid.len(), "self_threshold_met": count.met(),
        }),
    );
    Ok(())
}

fn verify(trusted: PathBuf, chain: Vec<PathBuf>, out: &Out) -> anyhow::Result<()> {
    let limits = Limits::default();
    let bytes = model_registry::fsutil::read_capped(&trusted, limits.max_root_bytes)
        .with_context(|| format!("reading {}", trusted.display()))?;
    let start = model_registry::verify::self_signed_root(&bytes, &limits)
        .map_err(|r| crate::release::Refused::new(format!("{}", trusted.display()), r))?;
    let mut current = start.clone();
    for p in &chain {
        let next = model_registry::fsutil::read_capped(p, limits.max_root_bytes)
            .with_context(|| format!("reading {}", p.display()))?;
        current = model_registry::update_root(&current, &next, &limits)
            .map_err(|r| crate::release::Refused::new(p.display().to_string(), r))?;
    }
    let last = update_root_chain(&current, &[] as &[&[u8]], Utc::now(), &limits)
        .map_err(|r| crate::release::Refused::new("root chain".to_owned(), r))?;
    out.emit(
        format!(
            "trusted: root version {} reached from version {} through {} root(s)",
            last.version,
            start.version,
            chain.len()
        ),
        serde_json::json!({"verified": true, "version": last.version, "from": start.version}),
    );
    Ok(())
}

fn push(path: PathBuf, out: &Out) -> anyhow::Result<()> {
    let (_, root) = docs::read_root(&path)?;
    let bytes = std::fs::read(&path).with_context(|| format!("reading {}", path.display()))?;
    let version = root.version;
    let remote = crate::remote::Remote::from_saved()?;
    remote.send(remote.request(reqwest::Method::POST, "/trust/roots").body(bytes))?;
    out.emit(
        format!("root version {version} is the control plane's; devices walk to it at their next check-in"),
        serde_json::json!({"version": version}),
    );
    Ok(())
}
