//! Every defence of DESIGN.md's trust table, tried as an attack and refused with its own named reason; and root
//! rotation walked forward and tampered with.

use chrono::{DateTime, Duration, TimeZone, Utc};
use model_registry::artifact::{self, ArtifactRef};
use model_registry::manifest::ModelFormat;
use model_registry::root::DocType;
use model_registry::verify::self_signed_root;
use model_registry::*;

fn now() -> DateTime<Utc> {
    Utc.with_ymd_and_hms(2026, 11, 25, 12, 0, 0).single().expect("valid time")
}

fn key(n: u8) -> KeyPair {
    KeyPair::from_seed(&[n; 32])
}

/// A small world: root keys 1,2 (threshold 2), release keys 10,11,12 (threshold 2), fleet key 20.
struct World {
    root: Root,
    limits: Limits,
}

impl World {
    fn new() -> Self {
        let root = Root::new(
            now() + Duration::days(365),
            [
                (Role::Root, vec![key(1).public().clone(), key(2).public().clone()], 2),
                (Role::Release, vec![key(10).public().clone(), key(11).public().clone(), key(12).public().clone()], 2),
                (Role::Fleet, vec![key(20).public().clone()], 1),
            ],
        )
        .expect("valid root");
        Self { root, limits: Limits::default() }
    }

    fn verifier<'a>(&'a self, last: &'a LastSeen) -> Verifier<'a> {
        Verifier::new(&self.root, last, now(), &self.limits)
    }
}

fn artifact(tag: &str) -> ArtifactRef {
    ArtifactRef { sha256: Sha256Digest::of(tag.as_bytes()), size: tag.len() as u64 }
}

fn manifest(model: &str, version: u64, floor: u64) -> ReleaseManifest {
    ReleaseManifest {
        doc_type: DocType::Release,
        model: model.parse().expect("model name"),
        version: ReleaseVersion::new(version).expect("version"),
        security_floor: ReleaseVersion::new(floor).expect("floor"),
        created: now(),
        description: format!("{model} {version}"),
        variants: vec![Variant {
            id: "cpu-fp32".parse().expect("variant"),
            requirements: Requirements::default(),
            precision: Precision::Fp32,
            format: ModelFormat::Onnx,
            raw: artifact(&format!("raw {model} {version}")),
            zstd: artifact(&format!("zstd {model} {version}")),
            golden: artifact(&format!("golden {model} {version}")),
            inputs: vec![],
            outputs: vec![],
            llm: None,
        }],
        routing: None,
    }
}

fn sign<T: serde::Serialize>(doc: &T, signers: &[KeyPair]) -> Envelope {
    let mut env = Envelope::new(doc).expect("serialisable");
    for k in signers {
        env.sign(k).expect("sign");
    }
    env
}

fn bytes(env: &Envelope) -> Vec<u8> {
    serde_json::to_vec(env).expect("json")
}

fn release(version: u64, floor: u64) -> Envelope {
    sign(&manifest("magika", version, floor), &[key(10), key(11)])
}

fn desired(sequence: u64, expires: DateTime<Utc>, releases: Vec<Envelope>) -> DesiredState {
    DesiredState {
        doc_type: DocType::DesiredState,
        device: "dev-1".parse().expect("device id"),
        sequence,
        issued: now(),
        expires,
        models: releases
            .into_iter()
            .map(|r| ModelAssignment {
                model: r.signed["model"].as_str().unwrap_or("magika").parse().expect("model"),
                variant: "cpu-fp32".parse().expect("variant"),
                release: r,
                measure: Vec::new(),
            })
            .collect(),
    }
}

fn fleet_signed(d: &DesiredState) -> Vec<u8> {
    bytes(&sign(d, &[key(20)]))
}

/// What an attack produced, reduced to what the table checks.
enum Outcome {
    Accepted,
    Refused(Defence, String),
}

fn check(name: &str, outcome: Outcome, expected: Option<Defence>, reason_contains: &str) {
    match (outcome, expected) {
        (Outcome::Accepted, None) => {}
        (Outcome::Accepted, Some(d)) => panic!("{name}: accepted, expected refusal by {d}"),
        (Outcome::Refused(d, why), None) => panic!("{name}: refused by {d} ({why}), expected acceptance"),
        (Outcome::Refused(d, why), Some(e)) => {
            assert_eq!(d, e, "{name}: refused by the wrong defence: {why}");
            assert!(why.contains(reason_contains), "{name}: reason {why:?} does not mention {reason_contains:?}");
        }
    }
}

fn outcome<T>(r: Result<T, Refusal>) -> Outcome {
    match r {
        Ok(_) => Outcome::Accepted,
        Err(e) => Outcome::Refused(e.defence(), e.to_string()),
    }
}

#[test]
fn each_attack_is_refused_by_its_own_defence() {
    let w = World::new();
    let fresh = LastSeen::default();
    let device: DeviceId = "dev-1".parse().expect("device");
    let later = now() + Duration::minutes(10);

    let release_case = |env: Envelope, last: &LastSeen| outcome(w.verifier(last).release(&bytes(&env)));
    let desired_case = |doc: Vec<u8>, last: &LastSeen| outcome(w.verifier(last).desired_state(&doc, &device));

    // The honest documents pass.
    check("honest release", release_case(release(3, 1), &fresh), None, "");
    check(
        "honest desired state",
        desired_case(fleet_signed(&desired(1, later, vec![release(3, 1)])), &fresh),
        None,
        "",
    );

    // Arbitrary model: a signature over other bytes.
    let mut tampered = release(3, 1);
    tampered.signed["description"] = serde_json::json!("now with a backdoor");
    check(
        "signature over other bytes",
        release_case(tampered, &fresh),
        Some(Defence::ArbitraryModel),
        "signature does not match",
    );

    // Arbitrary model: keys of another root (never listed here).
    let foreign = sign(&manifest("magika", 3, 1), &[key(90), key(91)]);
    check(
        "keys of another root",
        release_case(foreign, &fresh),
        Some(Defence::ArbitraryModel),
        "not one of this role's keys",
    );

    // Arbitrary model: one signature short of the threshold of two.
    let short = sign(&manifest("magika", 3, 1), &[key(10)]);
    check("one signature short", release_case(short, &fresh), Some(Defence::ArbitraryModel), "1 valid release key(s)");

    // Arbitrary model: one key signing twice still counts once.
    let mut twice = sign(&manifest("magika", 3, 1), &[key(10)]);
    let again = twice.signatures[0].clone();
    twice.signatures.push(again);
    check("same key twice", release_case(twice, &fresh), Some(Defence::ArbitraryModel), "signed twice");

    // Arbitrary model: the fleet key (online, on the server) cannot sign a release.
    let by_fleet = sign(&manifest("magika", 3, 1), &[key(20), key(10)]);
    check(
        "fleet key signs a release",
        release_case(by_fleet, &fresh),
        Some(Defence::ArbitraryModel),
        "not one of this role's keys",
    );

    // Rollback: a version below the floor this device has seen.
    let mut seen_floor = LastSeen::default();
    seen_floor.record_release(&manifest("magika", 5, 5));
    check(
        "below the floor",
        release_case(release(4, 1), &seen_floor),
        Some(Defence::Rollback),
        "below the security floor 5",
    );
    check("at the floor", release_case(release(5, 1), &seen_floor), None, "");

    // Freeze: an expired desired state, and a replayed one.
    let expired = fleet_signed(&desired(1, now() - Duration::seconds(1), vec![release(3, 1)]));
    check("expired desired state", desired_case(expired, &fresh), Some(Defence::Freeze), "expired");
    let seen_seq = LastSeen { desired_sequence: Some(7), ..LastSeen::default() };
    let replayed = fleet_signed(&desired(7, later, vec![release(3, 1)]));
    check(
        "replayed desired state",
        desired_case(replayed, &seen_seq),
        Some(Defence::Freeze),
        "not above the last accepted 7",
    );
    let older = fleet_signed(&desired(6, later, vec![release(3, 1)]));
    check("older desired state", desired_case(older, &seen_seq), Some(Defence::Freeze), "not above");
    // A jump that would use up the sequence space (a compromised server's u64::MAX) is refused; a large honest
    // one is taken.
    let exhausting = fleet_signed(&desired(u64::MAX, later, vec![release(3, 1)]));
    check("sequence jump", desired_case(exhausting, &seen_seq), Some(Defence::Freeze), "jumps more than");
    let far = fleet_signed(&desired(7 + (1 << 32), later, vec![release(3, 1)]));
    check("the largest jump allowed", desired_case(far, &seen_seq), None, "");

    // Freeze: the trusted root itself has expired.
    let mut stale = World::new();
    stale.root.expires = now() - Duration::days(1);
    check(
        "expired root",
        outcome(stale.verifier(&fresh).release(&bytes(&release(3, 1)))),
        Some(Defence::Freeze),
        "trusted root expired",
    );

    // Endless data: an artifact one byte longer than signed is cut off there.
    let body = b"model bytes".to_vec();
    let signed = ArtifactRef { sha256: Sha256Digest::of(&body), size: body.len() as u64 };
    let mut longer = body.clone();
    longer.push(0);
    let r = artifact::verify_stream("zstd artifact", longer.as_slice(), &signed).map_err(Refusal::from);
    check("one byte longer", outcome(r), Some(Defence::EndlessData), "longer than its signed size");

    // Endless data: a document over its size limit is refused before it is parsed.
    let huge = vec![b' '; (w.limits.max_manifest_bytes + 1) as usize];
    check(
        "oversized manifest",
        outcome(w.verifier(&fresh).release(&huge)),
        Some(Defence::EndlessData),
        "larger than the limit",
    );

    // Mix-and-match: the bytes of a variant of another release do not match this release's digests.
    let other = b"release 2 raw model".to_vec();
    let this = ArtifactRef { sha256: Sha256Digest::of(b"release 3 raw model"), size: other.len() as u64 };
    let r = artifact::verify_stream("raw model", other.as_slice(), &this).map_err(Refusal::from);
    check("variant bytes from another release", outcome(r), Some(Defence::MixAndMatch), "not the signed");

    // Mix-and-match: a desired state naming a variant that the release does not have.
    let mut d = desired(1, later, vec![release(3, 1)]);
    d.models[0].variant = "hexagon-int8".parse().expect("variant");
    check(
        "variant not in release",
        desired_case(fleet_signed(&d), &fresh),
        Some(Defence::MixAndMatch),
        "has no variant hexagon-int8",
    );
    // The same for a variant it is asked to measure.
    let mut d = desired(1, later, vec![release(3, 1)]);
    d.models[0].measure = vec!["cpu-fp32".parse().expect("variant"), "npu-int4".parse().expect("variant")];
    check(
        "variant to measure not in release",
        desired_case(fleet_signed(&d), &fresh),
        Some(Defence::MixAndMatch),
        "has no variant npu-int4",
    );

    // Mix-and-match: a release of another model under this model's name.
    let mut d = desired(1, later, vec![sign(&manifest("silero-vad", 3, 1), &[key(10), key(11)])]);
    d.models[0].model = "magika".parse().expect("model");
    check(
        "release of another model",
        desired_case(fleet_signed(&d), &fresh),
        Some(Defence::MixAndMatch),
        "manifest is for silero-vad",
    );

    // Mix-and-match: a document for another device, and a release passed off as a desired state.
    let mut d = desired(1, later, vec![release(3, 1)]);
    d.device = "dev-2".parse().expect("device");
    check(
        "desired state of another device",
        desired_case(fleet_signed(&d), &fresh),
        Some(Defence::MixAndMatch),
        "for device dev-2",
    );
    check(
        "release as desired state",
        desired_case(bytes(&release(3, 1)), &fresh),
        Some(Defence::MixAndMatch),
        "`_type`",
    );

    // Path tricks: a model name with `../`, signed by the right keys, is still refused.
    let mut evil = serde_json::to_value(manifest("magika", 3, 1)).expect("json");
    evil["model"] = serde_json::json!("../../etc/passwd");
    let evil = sign(&evil, &[key(10), key(11)]);
    check("model name with ../", release_case(evil, &fresh), Some(Defence::PathTricks), "model name");
    let mut evil = serde_json::to_value(manifest("magika", 3, 1)).expect("json");
    evil["variants"][0]["id"] = serde_json::json!("a/../../b");
    let evil = sign(&evil, &[key(10), key(11)]);
    check("variant id with ../", release_case(evil, &fresh), Some(Defence::PathTricks), "variants[0].id");

    // Malformed: an unknown field inside a properly signed document.
    let mut extra = serde_json::to_value(manifest("magika", 3, 1)).expect("json");
    extra["unexpected"] = serde_json::json!(true);
    let extra = sign(&extra, &[key(10), key(11)]);
    check("unknown signed field", release_case(extra, &fresh), Some(Defence::Malformed), "unknown field `unexpected`");
    check("not JSON", outcome(w.verifier(&fresh).release(b"{\"signed\": ")), Some(Defence::Malformed), "EOF");
}

#[test]
fn accepting_a_desired_state_raises_floor_and_sequence() {
    let w = World::new();
    let device: DeviceId = "dev-1".parse().expect("device");
    let mut last = LastSeen::default();
    let doc = fleet_signed(&desired(4, now() + Duration::minutes(5), vec![release(6, 6)]));
    let ok = w.verifier(&last).desired_state(&doc, &device).expect("accepted");
    last.record(&ok);
    assert_eq!(last.desired_sequence, Some(4));
    assert_eq!(last.floors.get(&"magika".parse::<ModelName>().expect("model")).map(|v| v.get()), Some(6));
    // The same document again is now a replay, and release 5 is below the new floor.
    let again = w.verifier(&last).desired_state(&doc, &device).expect_err("replay");
    assert_eq!(again.defence(), Defence::Freeze);
    let old = fleet_signed(&desired(5, now() + Duration::minutes(5), vec![release(5, 1)]));
    let e = w.verifier(&last).desired_state(&old, &device).expect_err("rollback");
    assert_eq!(e.defence(), Defence::Rollback);
}

// === root rotation ===

fn rotate(prev: &Root, change: impl FnOnce(&mut Root), signers: &[KeyPair]) -> (Root, Vec<u8>) {
    let mut next = prev.next_version(now() + Duration::days(365));
    change(&mut next);
    next.validate().expect("valid rotated root");
    let env = sign(&next, signers);
    (next, bytes(&env))
}

#[test]
fn root_rotation_walks_forward_and_refuses_tampering() {
    let w = World::new();
    let limits = Limits::default();
    // v2 replaces root key 2 by key 3 (signed by the old pair and the new pair).
    let (v2, v2_bytes) = rotate(
        &w.root,
        |r| {
            r.revoke_key(&key(2).key_id());
            r.add_key(Role::Root, key(3).public().clone());
        },
        &[key(1), key(2), key(3)],
    );
    // v3 revokes release key 11 and adds 13; signed by v2's root keys (1, 3).
    let (v3, v3_bytes) = rotate(
        &v2,
        |r| {
            r.revoke_key(&key(11).key_id());
            r.add_key(Role::Release, key(13).public().clone());
        },
        &[key(1), key(3)],
    );

    // A device on v1 reaches v3 through v2.
    let reached = update_root_chain(&w.root, &[&v2_bytes, &v3_bytes], now(), &limits).expect("chain");
    assert_eq!(reached, v3);

    // It cannot skip v2.
    let e = update_root_chain(&w.root, &[&v3_bytes], now(), &limits).expect_err("skip");
    assert_eq!(e.defence(), Defence::KeyCompromise, "{e}");

    // A v2 signed only by the new keys is refused: the old root's threshold is not met.
    let (_, v2_new_only) = rotate(
        &w.root,
        |r| {
            r.revoke_key(&key(1).key_id());
            r.revoke_key(&key(2).key_id());
            r.add_key(Role::Root, key(3).public().clone());
            r.add_key(Role::Root, key(4).public().clone());
        },
        &[key(3), key(4)],
    );
    let e = update_root_chain(&w.root, &[&v2_new_only], now(), &limits).expect_err("new keys only");
    assert_eq!(e.defence(), Defence::KeyCompromise);
    assert!(e.to_string().contains("0 valid root key(s)"), "{e}");

    // A v2 signed by the old keys but not by a threshold of its own new keys is refused too.
    let (_, v2_old_only) = rotate(&w.root, |r| r.add_key(Role::Root, key(5).public().clone()), &[key(1), key(2)]);
    assert!(update_root_chain(&w.root, &[&v2_old_only], now(), &limits).is_ok(), "threshold 2 of {{1,2,5}} met by 1,2");
    let (_, v2_unmet) = rotate(
        &w.root,
        |r| {
            r.revoke_key(&key(2).key_id());
            r.add_key(Role::Root, key(5).public().clone());
        },
        &[key(1), key(2)],
    );
    let e = update_root_chain(&w.root, &[&v2_unmet], now(), &limits).expect_err("own threshold");
    assert_eq!(e.defence(), Defence::KeyCompromise);

    // Going back to v1 from v2 is a rollback.
    let v1_bytes = bytes(&sign(&w.root, &[key(1), key(2)]));
    let e = update_root(&v2, &v1_bytes, &limits).expect_err("backwards");
    assert_eq!(e.defence(), Defence::Rollback);

    // An expired newest root is a freeze.
    let mut old = v2.next_version(now() - Duration::days(1));
    old.version = 3;
    let e = update_root_chain(&v2, &[bytes(&sign(&old, &[key(1), key(3)]))], now(), &limits).expect_err("expired");
    assert_eq!(e.defence(), Defence::Freeze);

    // After v3, release key 11 (revoked) no longer counts: 10 + 11 is one short; 10 + 13 passes.
    let last = LastSeen::default();
    let verifier = Verifier::new(&v3, &last, now(), &limits);
    let revoked = sign(&manifest("magika", 3, 1), &[key(10), key(11)]);
    let e = verifier.release(&bytes(&revoked)).expect_err("revoked key");
    assert_eq!(e.defence(), Defence::ArbitraryModel);
    assert!(e.to_string().contains("not one of this role's keys"), "{e}");
    assert!(verifier.release(&bytes(&sign(&manifest("magika", 3, 1), &[key(10), key(13)]))).is_ok());
}

#[test]
fn provisioned_root_must_be_self_signed() {
    let w = World::new();
    let limits = Limits::default();
    assert_eq!(self_signed_root(&bytes(&sign(&w.root, &[key(1), key(2)])), &limits).expect("ok"), w.root);
    let e = self_signed_root(&bytes(&sign(&w.root, &[key(1)])), &limits).expect_err("short");
    assert_eq!(e.defence(), Defence::KeyCompromise);
    // A root whose key ids do not match their keys is malformed whatever signs it.
    let mut bad = serde_json::to_value(&w.root).expect("json");
    let keys = bad["keys"].as_object_mut().expect("keys");
    let (first, val) = keys.iter().next().map(|(k, v)| (k.clone(), v.clone())).expect("a key");
    keys.remove(&first);
    keys.insert("ab".repeat(32), val);
    let e = self_signed_root(&bytes(&sign(&bad, &[key(1), key(2)])), &limits).expect_err("bad ids");
    assert!(matches!(e.defence(), Defence::Malformed | Defence::KeyCompromise), "{e}");
}

/// The same ed25519 key spelled twice (its public hex in lowercase and in uppercase) has two key ids; it is
/// still one key, and never counts twice toward a threshold: a root listing it twice is malformed, and a count
/// over a role that names both ids finds one valid signer.
#[test]
fn one_key_under_two_spellings_counts_once() {
    let w = World::new();
    let lower = key(10).public().clone();
    let mut upper = lower.clone();
    upper.keyval.public = upper.keyval.public.to_ascii_uppercase();
    assert_ne!(lower.key_id(), upper.key_id(), "two spellings, two ids");

    let mut twice = w.root.next_version(now() + Duration::days(365));
    twice.roles.release = model_registry::root::RoleKeys { keyids: vec![lower.key_id(), upper.key_id()], threshold: 2 };
    twice.keys.insert(upper.key_id(), upper.clone());
    let e = twice.validate().expect_err("one key listed twice");
    assert!(e.to_string().contains("lowercase hex") || e.to_string().contains("same ed25519 key"), "{e}");

    // Even were such a root accepted, the count is by key, not by id.
    let mut env = Envelope::new(&manifest("magika", 1, 1)).expect("envelope");
    env.sign(&key(10)).expect("sign");
    let sig = env.signatures[0].sig.clone();
    env.signatures.push(Signature { keyid: upper.key_id(), sig });
    let count = env.count(&twice.keys, &twice.roles.release);
    assert_eq!(count.valid, vec![lower.key_id()], "{count:?}");
    assert!(!count.met(), "one key does not meet a threshold of two: {count:?}");
}

/// Issue 14: a routing policy is signed with the release. A control plane holding the fleet key (and the
/// database) that loosens a private model's policy, or strips it, hands the device a release whose release-key
/// signatures no longer match: the device refuses the whole document and keeps what it had.
#[test]
fn a_forged_routing_policy_is_refused_by_the_device() {
    let w = World::new();
    let fresh = LastSeen::default();
    let device: DeviceId = "dev-1".parse().expect("device");
    let later = now() + Duration::minutes(10);
    let mut m = manifest("chat", 2, 1);
    let v = &mut m.variants[0];
    (v.format, v.precision) = (ModelFormat::Gguf, "q4_1".parse().expect("precision"));
    v.llm = Some(LlmSpec {
        architecture: "llama".into(),
        parameters: 135_000_000,
        context_length: 1024,
        vocab_size: 49_152,
        memory_bytes: 120 << 20,
        kv_cache_bytes: 20 << 20,
        chat_template: None,
        chat_template_sha256: None,
    });
    m.routing =
        Some(serde_json::from_value(serde_json::json!({"mode": "local_only", "private": true})).expect("policy"));
    m.validate().expect("a valid manifest");
    let honest = sign(&m, &[key(10), key(11)]);
    let doc = |release: Envelope| {
        let mut d = desired(1, later, vec![release]);
        d.models[0].variant = "cpu-fp32".parse().expect("variant");
        fleet_signed(&d)
    };
    let accepted = w.verifier(&fresh).desired_state(&doc(honest.clone()), &device).expect("the honest document");
    assert!(accepted.releases[0].manifest.routing.as_ref().is_some_and(|p| p.private));
    let loosened = {
        let mut e = honest.clone();
        e.signed["routing"] = serde_json::json!({"mode": "auto", "tiers": ["attacker"]});
        e
    };
    let stripped = {
        let mut e = honest;
        e.signed.as_object_mut().expect("object").remove("routing");
        e
    };
    for (name, forged) in [("policy loosened", loosened), ("policy stripped", stripped)] {
        check(
            name,
            outcome(w.verifier(&fresh).desired_state(&doc(forged), &device)),
            Some(Defence::ArbitraryModel),
            "signature does not match",
        );
    }
}
