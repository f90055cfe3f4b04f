//! Desired state: which release and variant of each model a device should run, and the signed document that
//! says so. Planning is a pure function of the assignments and rollouts, the device's id, labels and hardware
//! profile; the check-in handler caches its result per device until something it depends on changes.
//!
//! Assignments and rollouts are one ordered list: for each model the newest entry whose selector matches the
//! device wins. A rollout names the baseline or the new release per device, by its state and the device's
//! stable place in the rollout (`rollout::target`).

use std::collections::BTreeMap;
use std::sync::Arc;

use bytes::Bytes;
use chrono::{DateTime, Duration, Utc};
use edgefleet_protocol::api::{HardwareProfile, Labels, Selector};
use edgefleet_protocol::rollout::MAX_MEASURED_VARIANTS;
use edgefleet_protocol::{DeviceId, ModelName, ReleaseVersion, VariantId};
use model_registry::root::DocType;
use model_registry::{
    DesiredState, Envelope, KeyPair, ModelAssignment, ModelFormat, ReleaseManifest, Requirements, Sha256Digest,
};

use crate::rollout::{Rollout, State};

/// A release, parsed once per generation.
#[derive(Debug, Clone)]
pub struct Release {
    pub manifest: Arc<ReleaseManifest>,
    pub envelope: Arc<Envelope>,
}

/// One assignment (or rollout) with its release, parsed once per generation.
#[derive(Debug, Clone)]
pub struct Entry {
    pub created_at: i64,
    pub selector: Selector,
    /// The assigned release; for a rollout, the new one.
    pub release: Release,
    /// For a rollout: the rollout, its state and its baseline release.
    pub rollout: Option<(Arc<Rollout>, State, Release)>,
    /// For a rollout that chooses variants by measurement: each decided device class's variant (`None`: no
    /// variant qualified, the class keeps the first fit). A class not in it is still being measured.
    pub choices: Arc<BTreeMap<String, Option<VariantId>>>,
}

impl Entry {
    /// The release this entry names for `device` with `labels`.
    fn release_for(&self, device: &DeviceId, labels: &Labels) -> &Release {
        match &self.rollout {
            Some((r, state, baseline)) if crate::rollout::target(r, state, device, labels) != r.release => baseline,
            _ => &self.release,
        }
    }
}

/// Every assignment and rollout, oldest first, as of one generation.
#[derive(Debug, Clone)]
pub struct AssignmentSnapshot {
    pub generation: u64,
    pub entries: Vec<Entry>,
}

/// A device's cached answer.
#[derive(Debug, Clone)]
pub struct CachedDesired {
    pub generation: u64,
    pub sequence: i64,
    pub body: Bytes,
    /// When to issue a fresh document (half its lifetime), in ms.
    pub refresh_at: i64,
    /// The release of each model this document tells the device to run, and those the document before it
    /// told (a device exports its previous release's numbers for a while after a swap): the releases it may
    /// send telemetry about.
    pub releases: Arc<[(ModelName, ReleaseVersion)]>,
    pub previous: Arc<[(ModelName, ReleaseVersion)]>,
}

impl CachedDesired {
    pub fn etag(&self) -> String {
        format!("\"{}\"", self.sequence)
    }
}

#[derive(Debug, Clone, PartialEq)]
pub struct Chosen {
    pub model: ModelName,
    pub version: ReleaseVersion,
    pub variant: VariantId,
    pub envelope: Arc<Envelope>,
    /// Variants the device is asked to run on the golden inputs and report (see `ChooseVariant::Measurement`).
    pub measure: Vec<VariantId>,
}

/// What a device should run, and the models assigned to it for which no variant fits its hardware.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Plan {
    pub models: Vec<Chosen>,
    pub unfit: Vec<(ModelName, ReleaseVersion)>,
}

/// Whether a device with `hw` can run a variant with `req` in `format`: for ONNX its providers are ONNX Runtime
/// execution providers, for GGUF llama.cpp backends.
pub fn fits(req: &Requirements, format: ModelFormat, hw: &HardwareProfile) -> bool {
    req.unmet(format, hw).is_none()
}

/// For each model, the newest assignment or rollout whose selector matches `labels`, the release it names for
/// `device`, and within that release the first variant (manifests list variants best first) that fits `hw` —
/// or, on the new release of a rollout that chooses by measurement, the variant chosen for the device's class
/// (when it fits), and while the class has no choice the first fit with every fitting variant to measure.
pub fn plan(snapshot: &AssignmentSnapshot, device: &DeviceId, labels: &Labels, hw: &HardwareProfile) -> Plan {
    let mut newest: BTreeMap<&ModelName, &Entry> = BTreeMap::new();
    for e in &snapshot.entries {
        if e.selector.matches(labels) {
            newest.insert(&e.release.manifest.model, e);
        }
    }
    let mut out = Plan::default();
    for (model, e) in newest {
        let Release { manifest, envelope } = e.release_for(device, labels);
        let fitting: Vec<&VariantId> =
            manifest.variants.iter().filter(|v| fits(&v.requirements, v.format, hw)).map(|v| &v.id).collect();
        let Some(&first) = fitting.first() else {
            out.unfit.push((model.clone(), manifest.version));
            continue;
        };
        let measuring =
            e.rollout.as_ref().is_some_and(|(r, ..)| !r.choose_variant.is_first_fit() && r.release == manifest.version);
        let (variant, measure) = match e.choices.get(&hw.device_class) {
            _ if !measuring => (first, Vec::new()),
            Some(Some(chosen)) if fitting.contains(&chosen) => (chosen, Vec::new()),
            Some(_) => (first, Vec::new()),
            None => (first, fitting.iter().take(MAX_MEASURED_VARIANTS).map(|&v| v.clone()).collect()),
        };
        out.models.push(Chosen {
            model: model.clone(),
            version: manifest.version,
            variant: variant.clone(),
            envelope: envelope.clone(),
            measure,
        });
    }
    out
}

impl Plan {
    /// The release of each model the device is told to run.
    pub fn releases(&self) -> Arc<[(ModelName, ReleaseVersion)]> {
        self.models.iter().map(|c| (c.model.clone(), c.version)).collect()
    }
}

/// A digest of what the plan says, independent of when it is signed: equal digests need no new document.
pub fn content_digest(plan: &Plan) -> String {
    let parts: Vec<String> = plan
        .models
        .iter()
        .map(|c| {
            let manifest = model_registry::canonical::to_canonical(&c.envelope.signed).unwrap_or_default();
            let measure: Vec<&str> = c.measure.iter().map(VariantId::as_str).collect();
            format!("{}:{}:{}:{}:{}", c.model, c.version, c.variant, Sha256Digest::of(&manifest), measure.join(","))
        })
        .collect();
    Sha256Digest::of(parts.join("\n").as_bytes()).to_hex()
}

/// Signs the desired-state document for `device`.
pub fn sign(
    plan: &Plan,
    device: &DeviceId,
    sequence: u64,
    now: DateTime<Utc>,
    ttl: Duration,
    key: &KeyPair,
) -> Result<Vec<u8>, serde_json::Error> {
    let doc = DesiredState {
        doc_type: DocType::DesiredState,
        device: device.clone(),
        sequence,
        issued: now,
        expires: now + ttl,
        models: plan
            .models
            .iter()
            .map(|c| ModelAssignment {
                model: c.model.clone(),
                variant: c.variant.clone(),
                release: (*c.envelope).clone(),
                measure: c.measure.clone(),
            })
            .collect(),
    };
    let mut env = Envelope::new(&doc)?;
    env.sign(key)?;
    serde_json::to_vec(&env)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn hw(class: &str, arch: &str, eps: &[&str], mem: u64) -> HardwareProfile {
        HardwareProfile {
            device_class: class.into(),
            arch: arch.into(),
            execution_providers: eps.iter().map(|s| s.to_string()).collect(),
            llm_backends: vec!["CPU".into()],
            memory_bytes: mem,
            soc: vec![],
            power: "unavailable".into(),
        }
    }

    #[test]
    fn variant_requirements() {
        let req = |eps: &[&str], arch: &[&str], mem: Option<u64>| Requirements {
            execution_providers: eps.iter().map(|s| s.to_string()).collect(),
            arch: arch.iter().map(|s| s.to_string()).collect(),
            min_memory_bytes: mem,
            soc: vec![],
        };
        let pi = hw("raspberry-pi", "aarch64", &["XnnpackExecutionProvider", "CPUExecutionProvider"], 8 << 30);
        let jetson = hw("nvidia-jetson", "aarch64", &["TensorrtExecutionProvider", "CPUExecutionProvider"], 16 << 30);
        let qnn = req(&["QNNExecutionProvider"], &[], None);
        let trt = req(&["TensorrtExecutionProvider"], &["aarch64"], Some(8 << 30));
        let cpu = req(&["CPUExecutionProvider"], &[], None);
        let cpu_x86 = req(&[], &["x86_64"], None);
        let big = req(&[], &[], Some(32 << 30));
        for (r, device, expected) in [
            (&qnn, &pi, false),
            (&trt, &pi, false),
            (&trt, &jetson, true),
            (&cpu, &pi, true),
            (&cpu_x86, &pi, false),
            (&big, &jetson, false),
            (&Requirements::default(), &pi, true),
        ] {
            assert_eq!(fits(r, ModelFormat::Onnx, device), expected, "{r:?} on {}", device.device_class);
        }
    }
}
