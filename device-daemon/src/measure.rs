//! Measuring variants for a rollout that chooses each device class's variant by measurement. The desired state
//! names the variants to measure (signed by the fleet key, each checked to be in its signed release); the asks
//! wait in `state.json` until done, so a restart does not lose them. Each variant is downloaded and verified as
//! an install's is, decompressed into a scratch directory, loaded with one session beside the serving release,
//! checked against its golden vectors (the accuracy bound), and timed on them — off the request path, at most
//! [`MAX_RUNS`] inferences and [`MAX_TIMING`] per variant — then unloaded and deleted. One `measured` event
//! carries every variant's numbers; energy per inference only where a power sensor measured it.

use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::Context;
use edgefleet_protocol::api::EventKind;
use edgefleet_protocol::rollout::{MAX_MEASURED_VARIANTS, VariantMeasurement};
use edgefleet_protocol::{ModelName, ReleaseVersion, VariantId};
use model_registry::golden::GoldenVectors;
use model_registry::{ModelFormat, Variant, VerifiedDesiredState};
use serde::{Deserialize, Serialize};

use crate::agent::{Agent, event};
use crate::download::{NotSigned, download, stage};
use crate::layout::DeviceState;
use crate::machine::{Fit, fit};
use crate::power::Meter;
use crate::serving::Served;

/// Timed inferences per variant, at most.
pub const MAX_RUNS: usize = 50;
/// Time spent timing one variant, at most (a slow variant gets fewer runs).
pub const MAX_TIMING: Duration = Duration::from_secs(10);

/// Variants of one release a desired state asked this device to measure.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct MeasureAsk {
    pub model: ModelName,
    pub release: ReleaseVersion,
    /// The variant the document assigns (what the `measured` event is about).
    pub assigned: VariantId,
    /// From the signed release, in the order asked.
    pub variants: Vec<Variant>,
}

/// Pure: what an accepted document asks to measure that this device has not measured yet.
pub fn asks(verified: &VerifiedDesiredState, state: &DeviceState) -> Vec<MeasureAsk> {
    verified
        .state
        .models
        .iter()
        .zip(&verified.releases)
        .filter(|(a, r)| !a.measure.is_empty() && !state.measured.contains(&(a.model.clone(), r.manifest.version)))
        .map(|(a, r)| MeasureAsk {
            model: a.model.clone(),
            release: r.manifest.version,
            assigned: a.variant.clone(),
            variants: a
                .measure
                .iter()
                .take(MAX_MEASURED_VARIANTS)
                .filter_map(|id| r.manifest.variant(id).cloned())
                .collect(),
        })
        .collect()
}

/// Pure: median and p95 of durations, µs.
pub fn percentiles(times: &mut [Duration]) -> (u64, u64) {
    if times.is_empty() {
        return (0, 0);
    }
    times.sort();
    let at = |q: f64| times[((times.len() - 1) as f64 * q).round() as usize].as_micros() as u64;
    (at(0.5), at(0.95))
}

/// A measurement that could not be made for a reason trying again may fix (the network, the server).
struct Transient(anyhow::Error);

/// Cuts `s` to at most `bytes` bytes, on a character boundary.
fn cut(mut s: String, bytes: usize) -> String {
    while s.len() > bytes {
        s.pop();
    }
    s
}

/// A variant that could not be measured, and why (cut to what the server takes: 1 KiB).
fn failed(v: &Variant, detail: String) -> VariantMeasurement {
    let detail = cut(detail, 1000);
    VariantMeasurement {
        variant: v.id.clone(),
        golden_passed: false,
        runs: 0,
        median_us: 0,
        p95_us: 0,
        energy_uj: None,
        detail,
    }
}

impl Agent {
    /// Measures what the last accepted documents asked for and this device has not measured yet; each release's
    /// numbers are queued as one `measured` event. A network failure leaves the ask for the next pass.
    pub(crate) async fn measure_pending(&self, state: &mut DeviceState) -> anyhow::Result<()> {
        while let Some(ask) = state.to_measure.first().cloned() {
            let mut results = Vec::with_capacity(ask.variants.len());
            for v in &ask.variants {
                match self.measure_one(&ask.model, ask.release, v).await {
                    Ok(m) => results.push(m),
                    Err(Transient(e)) => {
                        tracing::warn!(model = %ask.model, variant = %v.id, error = %format!("{e:#}"),
                            "measuring a variant stopped; it is tried again at the next pass");
                        return Ok(());
                    }
                }
            }
            let detail = results
                .iter()
                .map(|m| match m.runs {
                    0 => format!("{}: {}", m.variant, m.detail),
                    _ => format!("{}: median {} µs over {} runs", m.variant, m.median_us, m.runs),
                })
                .collect::<Vec<_>>()
                .join("; ");
            tracing::info!(model = %ask.model, release = %ask.release, %detail, "variants measured");
            let mut e = event(EventKind::Measured, &ask.model, ask.release, &ask.assigned, cut(detail, 4000));
            e.measurements = results;
            state.queue_events(vec![e]);
            state.measured.insert((ask.model.clone(), ask.release));
            state.to_measure.remove(0);
            self.layout.save_state(state)?;
        }
        Ok(())
    }

    /// One variant: fetched, loaded beside what serves, golden-checked and timed; then unloaded and deleted.
    async fn measure_one(
        &self,
        model: &ModelName,
        release: ReleaseVersion,
        v: &Variant,
    ) -> Result<VariantMeasurement, Transient> {
        if v.format != ModelFormat::Onnx {
            return Ok(failed(v, "only ONNX variants are measured".into()));
        }
        if let Some(why) = v.requirements.unmet(v.format, &self.hardware) {
            return Ok(failed(v, format!("does not fit this device: {why}")));
        }
        // Beside everything that serves (one session), as an install's load beside is judged.
        let serving: u64 = self.models.all().iter().map(|s| s.memory).sum();
        if fit(self.memory_budget, serving, 0, v.raw.size) != Fit::Beside {
            let why = format!("needs {} bytes beside the {serving} serving, over the memory budget", v.raw.size);
            return Ok(failed(v, why));
        }
        let fetched = async {
            let zst = download(&self.client, &self.redirects, &self.server, &self.layout, &v.zstd, None).await?;
            let golden = download(&self.client, &self.redirects, &self.server, &self.layout, &v.golden, None).await?;
            anyhow::Ok((zst, golden))
        };
        let (zst, golden_file) = match fetched.await {
            Ok(files) => files,
            Err(e) if e.chain().any(|c| c.is::<NotSigned>()) => return Ok(failed(v, format!("{e:#}"))),
            Err(e) => return Err(Transient(e)),
        };
        let scratch = self.layout.root.join("measure");
        let result = self.run_variant(model, release, v, &zst, &golden_file, &scratch).await;
        for f in [&zst, &golden_file] {
            let _ = std::fs::remove_file(f);
        }
        let _ = std::fs::remove_dir_all(&scratch);
        Ok(result.unwrap_or_else(|e| failed(v, format!("{e:#}"))))
    }

    async fn run_variant(
        &self,
        model: &ModelName,
        release: ReleaseVersion,
        v: &Variant,
        zst: &std::path::Path,
        golden_file: &std::path::Path,
        scratch: &std::path::Path,
    ) -> anyhow::Result<VariantMeasurement> {
        let golden = GoldenVectors::from_bytes(&std::fs::read(golden_file)?).context("golden vectors")?;
        let (zst, variant, dir) = (zst.to_owned(), v.clone(), scratch.to_owned());
        let path = tokio::task::spawn_blocking(move || stage(&zst, &variant, &dir, None)).await??;
        let runtime = self.runtime()?;
        let (options, model, variant) = (self.options.clone(), model.clone(), v.id.clone());
        let served = tokio::task::spawn_blocking(move || {
            Served::load(runtime, &path, &options, 1, model, release, variant, "measure")
        })
        .await?
        .context("loading the variant")?;
        let served = Arc::new(served);
        if let Err(e) = crate::golden::golden_check(&served, &golden).await {
            return Ok(failed(v, format!("{e:#}")));
        }
        // Energy over the timed runs, where a sensor exists: counters are read at both ends, a power sensor
        // after every inference (integrated between readings).
        let clock = Instant::now();
        let mut meter = self.power.as_ref().map(|_| Meter::default());
        let read_power = |meter: &mut Option<Meter>| {
            if let (Some(m), Some(source)) = (meter.as_mut(), &self.power) {
                match source.read() {
                    Ok(r) => m.update(r, clock.elapsed()),
                    Err(_) => *meter = None,
                }
            }
        };
        read_power(&mut meter);
        let mut times = Vec::with_capacity(MAX_RUNS);
        'timing: loop {
            for inputs in golden.inputs.values() {
                let t = Instant::now();
                served.check(inputs.clone()).await.context("a timed inference")?;
                times.push(t.elapsed());
                read_power(&mut meter);
                if times.len() >= MAX_RUNS || clock.elapsed() >= MAX_TIMING {
                    break 'timing;
                }
            }
            if golden.inputs.is_empty() {
                break;
            }
        }
        let runs = times.len() as u64;
        let (median_us, p95_us) = percentiles(&mut times);
        let energy_uj =
            meter.filter(|m| m.resets == 0 && runs > 0).map(|m| (m.joules * 1e6 / runs as f64).round() as u64);
        Ok(VariantMeasurement {
            variant: v.id.clone(),
            golden_passed: true,
            runs,
            median_us,
            p95_us,
            energy_uj,
            detail: String::new(),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn percentiles_of_timings() {
        let ms = Duration::from_millis;
        assert_eq!(percentiles(&mut []), (0, 0));
        assert_eq!(percentiles(&mut [ms(3)]), (3000, 3000));
        let mut times: Vec<Duration> = (1..=20).rev().map(ms).collect();
        // 20 timings 1..20 ms: the median is the 11th (index round(9.5) = 10), p95 the 19th.
        assert_eq!(percentiles(&mut times), (11_000, 19_000));
    }
}
