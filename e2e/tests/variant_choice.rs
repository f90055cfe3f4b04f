//! Variant choice by measurement, over real processes: a server and two daemons that believe they are an x86
//! server and a Raspberry Pi 5 (fixture files). Release 2 of magika has three variants, listed so that the
//! manifest's first fit is the same poor one for both: `slow` (the same answers with about three times the work,
//! any device), `arm-int8` (weight-only int8, aarch64 only) and `x86-fp32` (x86_64 only). A rollout with
//! `--choose-variant by-measurement` starts both devices on the first fit and asks each to run every variant it
//! can on the release's golden inputs; each reports its numbers, the engine gives each class its fastest variant
//! within the golden tolerances — different ones, because the classes can run different variants — and only
//! then lets the canary wave end. Each device ends on its class's winner, and the rollout's status and the
//! audit log say why, with the numbers.

use std::time::Duration;

use edgefleet_e2e::{
    Fixture, Workdir, cache, classify, daemon_command_on, eventually, http, server_and_token, spawn_daemon,
};
use serde_json::Value;

/// Release 2's variants, first fit first: (id, file under the cache's models/magika/, precision, requirement).
const VARIANTS: [(&str, &str, &str, &str); 3] = [
    ("slow", "model-slow.onnx", "fp32", ""),
    ("arm-int8", "model-int8.onnx", "int8", ",arch=aarch64"),
    ("x86-fp32", "model.onnx", "fp32", ",arch=x86_64"),
];

fn variant_of(w: &Workdir, device: &str) -> Option<(u64, String)> {
    let d = w.edgefleet(&["--json", "devices", "show", device]).ok().json();
    let active = &d["report"]["models"].as_array()?.iter().find(|m| m["model"] == "magika")?["active"];
    Some((active["release"].as_u64()?, active["variant"].as_str()?.to_owned()))
}

#[test]
fn each_device_class_ends_on_the_variant_it_measured_fastest() {
    let w = Workdir::new();
    w.trust(&["alice"], 1);
    w.pack_magika("1", "cpu", "model.onnx", "fp32", None);
    let variants: Vec<String> = VARIANTS
        .iter()
        .map(|(id, file, precision, req)| {
            format!("id={id},file={},precision={precision}{req}", cache(&format!("models/magika/{file}")).display())
        })
        .collect();
    let (samples, reference) = (cache("samples/magika.safetensors"), cache("models/magika/model.onnx"));
    let (samples, reference) = (samples.display().to_string(), reference.display().to_string());
    let mut pack = vec!["release", "pack", "--model", "magika", "--version", "2"];
    for v in &variants {
        pack.extend(["--variant", v.as_str()]);
    }
    pack.extend(["--samples", &samples, "--reference", &reference, "-o", "magika-2"]);
    w.edgefleet(&pack).ok();
    w.edgefleet(&["release", "sign", "magika-2", "--key", "alice.key"]).ok();

    let config = "rollout_eval_secs = 0.5\n";
    let (server, _) = server_and_token(&w, Some(config));
    w.edgefleet(&["release", "push", "magika-1"]).ok();
    w.edgefleet(&["release", "push", "magika-2"]).ok();
    w.edgefleet(&["assign", "magika", "1", "--selector", "site=lab"]).ok();

    // A rollout by measurement needs something to choose between.
    w.edgefleet(&[
        "rollout",
        "create",
        "magika",
        "1",
        "--baseline",
        "2",
        "--wave",
        "100",
        "--choose-variant",
        "by-measurement",
    ])
    .fails_with("nothing to choose between");

    let devices = [("edge-x86", Fixture::X86Server, "x86-fp32"), ("edge-pi", Fixture::RaspberryPi5, "arm-int8")];
    let daemons: Vec<_> = devices
        .iter()
        .map(|(id, f, _)| {
            let hw = format!("hw-{}", f.class());
            f.write(&w, &hw);
            let token = w.enroll_token(&["site=lab", "canary=true"]);
            spawn_daemon(daemon_command_on(&w, &server, &server.url, id, Some(&token), &hw))
        })
        .collect();
    let client = http();
    for d in &daemons {
        eventually("release 1 serving", Duration::from_secs(90), || classify(&client, d).filter(|(v, _)| v == "1"));
    }

    // Both devices on record as online and on release 1 (their check-ins' `last_seen` is written in batches): the
    // engine counts the classes a wave reached from that inventory.
    eventually("both devices online on release 1", Duration::from_secs(60), || {
        let list = w.edgefleet(&["--json", "devices", "list"]).ok().json();
        let devices = list["devices"].as_array()?.clone();
        let ready = devices.len() == 2
            && devices.iter().all(|d| d["online"] == true && d["running"].as_array().is_some_and(|r| !r.is_empty()));
        ready.then_some(())
    });
    let id = w.rollout(&[
        "2",
        "--selector",
        "site=lab",
        "--wave",
        "canary=true",
        "--wave",
        "100",
        "--choose-variant",
        "by-measurement",
    ]);

    // Each class decides on its own measurements; the rollout finishes only after both decided.
    let done = eventually("both classes chosen and the rollout done", Duration::from_secs(180), || {
        let s = w.edgefleet(&["--json", "rollout", "status", &id]).ok().json();
        assert!(matches!(s["state"]["state"].as_str(), Some("running" | "done")), "{s}");
        (s["state"]["state"] == "done").then_some(s)
    });
    let choices = done["variant_choices"].as_array().cloned().unwrap_or_default();
    for (device, f, winner) in devices {
        let c =
            choices.iter().find(|c| c["class"] == f.class()).unwrap_or_else(|| panic!("{} chosen: {done}", f.class()));
        assert_eq!(c["decided"], true, "{c}");
        assert_eq!(c["variant"], winner, "{}: {c}", f.class());
        assert!(c["reason"].as_str().is_some_and(|r| r.starts_with("fastest")), "{c}");
        // Both variants the class can run were measured on its one device, each within its golden tolerances,
        // and the winner's median is the lower.
        let measured: Vec<&Value> = c["measured"].as_array().map(|m| m.iter().collect()).unwrap_or_default();
        assert_eq!(measured.len(), 2, "{}: {c}", f.class());
        let ms = |v: &str| measured.iter().find(|m| m["variant"] == v).and_then(|m| m["median_ms"].as_f64());
        let slow = ms("slow").expect("slow measured");
        assert!(ms(winner).expect("winner measured") < slow, "{c}");
        assert!(measured.iter().all(|m| m["devices"] == 1 && m["failed"] == 0), "{c}");

        // The device ends on its class's winner, and answers.
        eventually(&format!("{device} on its winner"), Duration::from_secs(90), || {
            (variant_of(&w, device)? == (2, winner.to_owned())).then_some(())
        });
        let shown = w.edgefleet(&["--json", "devices", "show", device]).ok().json();
        let measured_event = shown["events"]
            .as_array()
            .and_then(|e| e.iter().find(|e| e["kind"] == "measured"))
            .unwrap_or_else(|| panic!("{device} reported a measured event: {shown}"));
        assert_eq!(measured_event["measurements"].as_array().map(Vec::len), Some(2), "{measured_event}");
    }
    for d in &daemons {
        eventually("release 2 answers", Duration::from_secs(60), || classify(&client, d).filter(|(v, _)| v == "2"));
    }

    // The audit log: each class's choice with its numbers, before the canary wave ended.
    let audit = w.edgefleet(&["--json", "audit", "--target", &id, "--limit", "100"]).ok().json();
    let entries = audit.as_array().cloned().unwrap_or_default();
    let position = |action: &str| -> Vec<i64> {
        entries.iter().filter(|e| e["action"] == action).map(|e| e["id"].as_i64().unwrap_or(0)).collect()
    };
    let chosen: Vec<&Value> = entries.iter().filter(|e| e["action"] == "rollout.variant_chosen").collect();
    assert_eq!(chosen.len(), 2, "{audit}");
    for (_, f, winner) in devices {
        assert!(
            chosen.iter().any(|e| e["detail"]["class"] == f.class() && e["detail"]["variant"] == winner),
            "{audit}"
        );
    }
    let last_choice = position("rollout.variant_chosen").into_iter().max().expect("choices audited");
    let first_move =
        position("rollout.advance").into_iter().chain(position("rollout.done")).min().expect("the rollout moved");
    assert!(last_choice < first_move, "the canary wave waited for both choices: {audit}");
    let text = w.edgefleet(&["rollout", "status", &id]).ok().stdout();
    println!("{text}");
    assert!(
        text.contains("variant chosen by measurement") && text.contains("x86-fp32") && text.contains("arm-int8"),
        "{text}"
    );
    drop(daemons);
    assert!(server.stop().success());
}
