//! Power and energy, read from sensor files under the hardware root (units from the kernel's sysfs ABI,
//! Documentation/ABI in the Linux tree): RAPL powercap energy counters (µJ, wrapping at `max_energy_range_uj`), hwmon
//! `energy*_input` (µJ, cumulative) and `power*_input` (µW), Jetson INA3221 rails (mV × mA), and
//! `power_supply` (`power_now` µW, or `current_now` µA × `voltage_now` µV). A device without any of them has
//! no power reading at all: nothing here ever estimates.
//!
//! [`Meter`] turns readings into a cumulative energy total: from an energy counter by adding its deltas (with
//! wrap-around), from a power sensor by integrating power over the time between readings (trapezoids). Its
//! update is pure: the reading and the time come in as values.

use std::path::{Path, PathBuf};
use std::time::Duration;

/// Where a device's power reading comes from.
#[derive(Debug, Clone, PartialEq)]
pub enum Source {
    /// RAPL package zones: their energy counters, each with its wrap point.
    Rapl { zones: Vec<(PathBuf, u64)> },
    /// An hwmon cumulative energy channel (µJ).
    HwmonEnergy { file: PathBuf },
    /// An hwmon power channel (µW).
    HwmonPower { file: PathBuf },
    /// Jetson INA3221 rails: (label, bus voltage file mV, current file mA). When a rail measures the whole
    /// module input (`VDD_IN`), it alone is read; otherwise the sum of the rails.
    Ina3221 { rails: Vec<(String, PathBuf, PathBuf)> },
    /// A battery or supply: `power_now` (µW), or `current_now` (µA) × `voltage_now` (µV).
    PowerSupply { dir: PathBuf },
}

/// One reading of a source.
#[derive(Debug, Clone, PartialEq)]
pub enum Reading {
    /// Cumulative energy counters, µJ, each with where it wraps (0: it does not); one per RAPL package.
    EnergyMicrojoules(Vec<(u64, u64)>),
    /// Instantaneous power, W.
    Watts(f64),
}

fn read_u64(path: &Path) -> std::io::Result<u64> {
    let text = std::fs::read_to_string(path)?;
    text.trim()
        .parse()
        .map_err(|e| std::io::Error::new(std::io::ErrorKind::InvalidData, format!("{}: {e}", path.display())))
}

fn read_i64(path: &Path) -> std::io::Result<i64> {
    let text = std::fs::read_to_string(path)?;
    text.trim()
        .parse()
        .map_err(|e| std::io::Error::new(std::io::ErrorKind::InvalidData, format!("{}: {e}", path.display())))
}

fn list(dir: &Path) -> Vec<String> {
    let mut names: Vec<String> = std::fs::read_dir(dir)
        .map(|d| d.flatten().map(|e| e.file_name().to_string_lossy().into_owned()).collect())
        .unwrap_or_default();
    names.sort();
    names
}

fn under(root: &Path, abs: &str) -> PathBuf {
    root.join(abs.trim_start_matches('/'))
}

/// The charge file of the device's battery under `root` (`power_supply/*/capacity` of a supply whose `type` is
/// `Battery`); `None` for a device on mains.
pub fn battery(root: &Path) -> Option<PathBuf> {
    let supplies = under(root, "/sys/class/power_supply");
    list(&supplies).into_iter().map(|s| supplies.join(s)).find_map(|dir| {
        let kind = std::fs::read_to_string(dir.join("type")).ok()?;
        (kind.trim() == "Battery" && dir.join("capacity").exists()).then(|| dir.join("capacity"))
    })
}

/// The battery's charge, percent, read from its `capacity` file.
pub fn battery_percent(capacity: &Path) -> Option<u8> {
    std::fs::read_to_string(capacity).ok()?.trim().parse::<u8>().ok().filter(|p| *p <= 100)
}

/// The best power source under `root`, in the order RAPL, INA3221, hwmon energy, hwmon power, power supply;
/// `None` when there is none (and then there is no power metric).
pub fn discover(root: &Path) -> Option<Source> {
    // RAPL: top-level zones only (`intel-rapl:N`), since subzones (`intel-rapl:N:M`) are inside their package.
    let powercap = under(root, "/sys/class/powercap");
    let zones: Vec<(PathBuf, u64)> = list(&powercap)
        .into_iter()
        .filter(|z| z.starts_with("intel-rapl:") && z.matches(':').count() == 1)
        .map(|z| powercap.join(z))
        .filter(|z| read_u64(&z.join("energy_uj")).is_ok())
        .map(|z| {
            let wraps = read_u64(&z.join("max_energy_range_uj")).unwrap_or(0);
            (z, wraps)
        })
        .collect();
    if !zones.is_empty() {
        return Some(Source::Rapl { zones });
    }
    // INA3221 on Jetson: /sys/bus/i2c/drivers/ina3221/<addr>/hwmon/hwmonN/inK_label.
    let ina = under(root, "/sys/bus/i2c/drivers/ina3221");
    let mut rails = Vec::new();
    for addr in list(&ina) {
        for hw in list(&ina.join(&addr).join("hwmon")) {
            let dir = ina.join(&addr).join("hwmon").join(hw);
            for k in 1..=6 {
                let Ok(label) = std::fs::read_to_string(dir.join(format!("in{k}_label"))) else { continue };
                let label = label.trim().to_owned();
                // "NC" channels are not connected; channel 7 is the sum of shunt voltages, not a rail.
                if label.contains("NC") || label.contains("sum of shunt") {
                    continue;
                }
                let (volts, amps) = (dir.join(format!("in{k}_input")), dir.join(format!("curr{k}_input")));
                if volts.exists() && amps.exists() {
                    rails.push((label, volts, amps));
                }
            }
        }
    }
    if !rails.is_empty() {
        if let Some(total) = rails.iter().find(|(l, ..)| l == "VDD_IN" || l == "POM_5V_IN").cloned() {
            rails = vec![total];
        }
        return Some(Source::Ina3221 { rails });
    }
    let hwmon = under(root, "/sys/class/hwmon");
    for prefix in ["energy", "power"] {
        for h in list(&hwmon) {
            let dir = hwmon.join(&h);
            if let Some(f) = list(&dir).into_iter().find(|f| f.starts_with(prefix) && f.ends_with("_input")) {
                let file = dir.join(f);
                return Some(if prefix == "energy" {
                    Source::HwmonEnergy { file }
                } else {
                    Source::HwmonPower { file }
                });
            }
        }
    }
    let supplies = under(root, "/sys/class/power_supply");
    list(&supplies).into_iter().map(|s| supplies.join(s)).find_map(|dir| {
        let has = |f: &str| dir.join(f).exists();
        (has("power_now") || (has("current_now") && has("voltage_now"))).then_some(Source::PowerSupply { dir })
    })
}

impl Source {
    /// What kind of sensor, for the hardware profile and metric attributes.
    pub fn kind(&self) -> &'static str {
        match self {
            Source::Rapl { .. } => "rapl",
            Source::HwmonEnergy { .. } => "hwmon-energy",
            Source::HwmonPower { .. } => "hwmon-power",
            Source::Ina3221 { .. } => "ina3221",
            Source::PowerSupply { .. } => "power_supply",
        }
    }

    /// Reads the sensor once. An unreadable file is an error (RAPL's `energy_uj` is root-only since 5.10).
    pub fn read(&self) -> std::io::Result<Reading> {
        match self {
            // One counter per package: they wrap independently, so they are kept apart.
            Source::Rapl { zones } => Ok(Reading::EnergyMicrojoules(
                zones
                    .iter()
                    .map(|(z, wraps)| Ok((read_u64(&z.join("energy_uj"))?, *wraps)))
                    .collect::<std::io::Result<_>>()?,
            )),
            Source::HwmonEnergy { file } => Ok(Reading::EnergyMicrojoules(vec![(read_u64(file)?, 0)])),
            Source::HwmonPower { file } => Ok(Reading::Watts(read_u64(file)? as f64 / 1e6)),
            Source::Ina3221 { rails } => {
                let mut mw = 0.0;
                for (_, volts, amps) in rails {
                    mw += read_i64(volts)? as f64 * read_i64(amps)? as f64 / 1000.0;
                }
                Ok(Reading::Watts(mw / 1000.0))
            }
            Source::PowerSupply { dir } => {
                // Signs differ by driver (negative while discharging, or not): the magnitude is the draw.
                if let Ok(uw) = read_i64(&dir.join("power_now")) {
                    return Ok(Reading::Watts(uw.unsigned_abs() as f64 / 1e6));
                }
                let ua = read_i64(&dir.join("current_now"))?.unsigned_abs() as f64;
                let uv = read_i64(&dir.join("voltage_now"))?.unsigned_abs() as f64;
                Ok(Reading::Watts(ua * uv / 1e12))
            }
        }
    }
}

/// Pure: how far a counter moved from `before` to `now`, given where it wraps (0: never). A counter that went
/// backwards without a wrap point was reset: `None`, and the caller starts again from `now`.
pub fn counter_delta(before: u64, now: u64, wraps_at: u64) -> Option<u64> {
    if now >= before {
        Some(now - before)
    } else if wraps_at > before {
        Some(wraps_at - before + now)
    } else {
        None
    }
}

/// A cumulative energy total built from readings.
#[derive(Debug, Clone, Default)]
pub struct Meter {
    /// Joules since the meter started.
    pub joules: f64,
    /// The last power figure, W: measured, or the average over the last interval for energy counters.
    pub watts: Option<f64>,
    last: Option<(Reading, Duration)>,
    /// Counter resets seen (a counter going backwards with no wrap point).
    pub resets: u64,
}

impl Meter {
    /// Adds a reading taken at `at` (any monotonic clock, as a duration since some fixed start).
    pub fn update(&mut self, reading: Reading, at: Duration) {
        if let Some((last, then)) = &self.last {
            let dt = at.saturating_sub(*then).as_secs_f64();
            match (last, &reading) {
                (Reading::EnergyMicrojoules(before), Reading::EnergyMicrojoules(now)) if before.len() == now.len() => {
                    let mut j = 0.0;
                    for ((b, _), (n, wraps_at)) in before.iter().zip(now) {
                        match counter_delta(*b, *n, *wraps_at) {
                            Some(uj) => j += uj as f64 / 1e6,
                            None => self.resets += 1,
                        }
                    }
                    self.joules += j;
                    self.watts = (dt > 0.0).then(|| j / dt);
                }
                (Reading::Watts(before), Reading::Watts(now)) => {
                    self.joules += (before + now) / 2.0 * dt;
                    self.watts = Some(*now);
                }
                // The source changed kind: start again from this reading.
                _ => {}
            }
        } else if let Reading::Watts(w) = reading {
            self.watts = Some(w);
        }
        self.last = Some((reading, at));
    }
}

/// Pure: energy per inference over a window, J, from the energy totals and inference counts at its ends; `None`
/// without inferences in it.
pub fn energy_per_inference(joules: (f64, f64), inferences: (u64, u64)) -> Option<f64> {
    let n = inferences.1.checked_sub(inferences.0).filter(|n| *n > 0)?;
    let j = joules.1 - joules.0;
    (j >= 0.0).then(|| j / n as f64)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counters_wrap_and_reset() {
        for (before, now, wraps, expected) in [
            (100, 250, 0, Some(150)),
            (100, 100, 0, Some(0)),
            // RAPL wraps at max_energy_range_uj.
            (262_143_328_800, 50, 262_143_328_850, Some(100)),
            // Backwards with no wrap point: a reset.
            (500, 10, 0, None),
            // Backwards past a wrap point it never reached: a reset too.
            (500, 10, 400, None),
        ] {
            assert_eq!(counter_delta(before, now, wraps), expected, "{before} -> {now} wrapping at {wraps}");
        }
    }

    #[test]
    fn meters_integrate() {
        let s = Duration::from_secs;
        let mut m = Meter::default();
        m.update(Reading::Watts(2.0), s(0));
        m.update(Reading::Watts(4.0), s(2));
        assert!((m.joules - 6.0).abs() < 1e-9, "{}", m.joules);
        let mut e = Meter::default();
        let energy = |uj: u64| Reading::EnergyMicrojoules(vec![(uj, 0)]);
        e.update(energy(1_000_000), s(0));
        e.update(energy(6_000_000), s(1));
        assert!((e.joules - 5.0).abs() < 1e-9 && e.watts == Some(5.0));
        e.update(energy(10), s(2));
        assert_eq!((e.resets, e.joules), (1, 5.0));
        e.update(energy(1_000_010), s(3));
        assert!((e.joules - 6.0).abs() < 1e-9);
        // Two packages, one wrapping: each counter is unwrapped on its own.
        let mut two = Meter::default();
        two.update(Reading::EnergyMicrojoules(vec![(999_000, 1_000_000), (5_000_000, 0)]), s(0));
        two.update(Reading::EnergyMicrojoules(vec![(1_000, 1_000_000), (6_000_000, 0)]), s(1));
        assert!((two.joules - 1.002).abs() < 1e-9, "{}", two.joules);
        assert_eq!(energy_per_inference((1.0, 3.0), (10, 14)), Some(0.5));
        assert_eq!(energy_per_inference((1.0, 3.0), (10, 10)), None);
    }
}
