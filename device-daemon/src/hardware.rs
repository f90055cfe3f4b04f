//! Hardware detection: what this device is, read from files under a configurable root (`/` on a device, a
//! fixture tree in tests), as real Snapdragon, Jetson, Intel NPU, Raspberry Pi and x86 machines show them
//! (`fixtures/hardware/` holds a copy of each one's files: `/proc/cpuinfo`, `/sys/devices/soc0/*`,
//! `/proc/device-tree/compatible`, `/dev/accel/*`, `/etc/nv_tegra_release`, …). The answer is a [`HardwareProfile`]: the device class, the ONNX Runtime
//! execution providers to try in order (always ending with CPU), memory, SoC/NPU ids, and which power sensor
//! exists, plus the evidence for each conclusion so an operator can see why.
//!
//! Invariant: detection only reads files; it never guesses a class it has no evidence for (such a device is
//! `generic-x86` or `generic-arm` and runs on CPU).

use std::path::{Path, PathBuf};

use edgefleet_protocol::api::HardwareProfile;
use serde::Serialize;

pub const CPU: &str = "CPUExecutionProvider";
pub const QNN: &str = "QNNExecutionProvider";
pub const OPENVINO: &str = "OpenVINOExecutionProvider";
pub const TENSORRT: &str = "TensorrtExecutionProvider";
pub const CUDA: &str = "CUDAExecutionProvider";
pub const COREML: &str = "CoreMLExecutionProvider";
pub const XNNPACK: &str = "XnnpackExecutionProvider";

/// The device classes edgefleet tells apart.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum DeviceClass {
    QualcommHexagon,
    NvidiaJetson,
    IntelNpu,
    AppleSilicon,
    RaspberryPi,
    RockchipRk3588,
    X86Server,
    GenericX86,
    GenericArm,
}

impl DeviceClass {
    pub fn as_str(self) -> &'static str {
        match self {
            DeviceClass::QualcommHexagon => "qualcomm-hexagon",
            DeviceClass::NvidiaJetson => "nvidia-jetson",
            DeviceClass::IntelNpu => "intel-npu",
            DeviceClass::AppleSilicon => "apple-silicon",
            DeviceClass::RaspberryPi => "raspberry-pi",
            DeviceClass::RockchipRk3588 => "rockchip-rk3588",
            DeviceClass::X86Server => "x86-server",
            DeviceClass::GenericX86 => "generic-x86",
            DeviceClass::GenericArm => "generic-arm",
        }
    }

    /// llama.cpp backends to try for language models, best first; the CPU is always last. Adreno GPUs through
    /// OpenCL, Jetsons through CUDA, Apple through Metal, other GPUs through Vulkan; on a Pi the CPU.
    pub fn llm_backends(self) -> &'static [&'static str] {
        match self {
            DeviceClass::QualcommHexagon => &["OpenCL", "Vulkan", "CPU"],
            DeviceClass::NvidiaJetson => &["CUDA", "Vulkan", "CPU"],
            DeviceClass::IntelNpu | DeviceClass::RockchipRk3588 | DeviceClass::GenericX86 => &["Vulkan", "CPU"],
            DeviceClass::AppleSilicon => &["Metal", "CPU"],
            DeviceClass::RaspberryPi | DeviceClass::GenericArm => &["CPU"],
            DeviceClass::X86Server => &["CUDA", "Vulkan", "CPU"],
        }
    }

    /// Execution providers to try, best first. CPU is always last.
    pub fn providers(self) -> &'static [&'static str] {
        match self {
            DeviceClass::QualcommHexagon => &[QNN, CPU],
            DeviceClass::NvidiaJetson => &[TENSORRT, CUDA, CPU],
            DeviceClass::IntelNpu => &[OPENVINO, CPU],
            DeviceClass::AppleSilicon => &[COREML, CPU],
            DeviceClass::RaspberryPi | DeviceClass::GenericArm => &[XNNPACK, CPU],
            // The ORT RKNPU provider supports RK1808 only; on RK3588 ORT runs on CPU.
            DeviceClass::RockchipRk3588 | DeviceClass::X86Server | DeviceClass::GenericX86 => &[CPU],
        }
    }
}

/// A detected profile with the evidence behind it.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Detection {
    pub class: DeviceClass,
    pub profile: HardwareProfile,
    /// One line per fact used: which file said what.
    pub evidence: Vec<String>,
}

/// Reads files relative to a root directory.
#[derive(Debug, Clone)]
pub struct HardwareRoot {
    root: PathBuf,
}

impl HardwareRoot {
    pub fn new(root: impl Into<PathBuf>) -> Self {
        Self { root: root.into() }
    }

    fn path(&self, abs: &str) -> PathBuf {
        self.root.join(abs.trim_start_matches('/'))
    }

    /// A file's text, trimmed; `None` if missing or unreadable (many of these files are root-only).
    fn read(&self, abs: &str) -> Option<String> {
        std::fs::read(self.path(abs)).ok().map(|b| String::from_utf8_lossy(&b).trim().to_owned())
    }

    fn exists(&self, abs: &str) -> bool {
        self.path(abs).exists()
    }

    /// Entries of a directory, sorted, empty if missing.
    fn list(&self, abs: &str) -> Vec<String> {
        let mut names: Vec<String> = std::fs::read_dir(self.path(abs))
            .map(|d| d.filter_map(Result::ok).map(|e| e.file_name().to_string_lossy().into_owned()).collect())
            .unwrap_or_default();
        names.sort();
        names
    }

    /// Device-tree `compatible`: NUL-separated strings, board first, SoC last.
    fn compatible(&self) -> Vec<String> {
        std::fs::read(self.path("/proc/device-tree/compatible"))
            .map(|b| {
                b.split(|c| *c == 0)
                    .filter(|s| !s.is_empty())
                    .map(|s| String::from_utf8_lossy(s).into_owned())
                    .collect()
            })
            .unwrap_or_default()
    }
}

/// Kernel `soc_id` (decimal SMEM id) to chip name and Hexagon HTP architecture.
fn qualcomm_chip(soc_id: &str) -> Option<(&'static str, &'static str)> {
    Some(match soc_id {
        "519" => ("sm8550", "v73"),
        "557" => ("sm8650", "v75"),
        "497" => ("qcm6490", "v68"),
        "498" => ("qcs6490", "v68"),
        "555" => ("x1e80100", "v73"),
        "675" => ("qcs8275", "v75"),
        _ => return None,
    })
}

/// Chip names seen in `soc0/machine` or device-tree to HTP architecture, for ids the table above lacks.
fn htp_arch_of(chip: &str) -> Option<&'static str> {
    Some(match chip {
        "sm8350" => "v68",
        "sm8450" | "sm8475" => "v69",
        "sm8550" | "sc8380xp" | "x1e80100" | "qcs9100" => "v73",
        "sm8650" | "qcs8300" | "qcs8275" => "v75",
        "sm8750" => "v79",
        "sm8850" => "v81",
        "qcm6490" | "qcs6490" => "v68",
        _ => return None,
    })
}

/// Intel NPU PCI device ids.
fn intel_npu_generation(device: &str) -> Option<&'static str> {
    Some(match device.to_ascii_lowercase().as_str() {
        "0x7d1d" => "meteor-lake",
        "0xad1d" => "arrow-lake",
        "0x643e" => "lunar-lake",
        "0xb03e" => "panther-lake",
        "0xfd3e" => "wildcat-lake",
        _ => return None,
    })
}

/// `MemTotal` from `/proc/meminfo`, in bytes.
fn memory_bytes(hw: &HardwareRoot) -> Option<u64> {
    let meminfo = hw.read("/proc/meminfo")?;
    let line = meminfo.lines().find(|l| l.starts_with("MemTotal:"))?;
    let kb: u64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kb * 1024)
}

/// CPU architecture and flags from `/proc/cpuinfo`: x86 lists `flags`, ARM lists `Features`.
fn cpu(hw: &HardwareRoot) -> (Option<&'static str>, Vec<String>) {
    let Some(info) = hw.read("/proc/cpuinfo") else { return (None, Vec::new()) };
    let field = |name: &str| {
        info.lines()
            .find(|l| l.split(':').next().is_some_and(|k| k.trim() == name))
            .and_then(|l| l.split_once(':'))
            .map(|(_, v)| v.split_whitespace().map(str::to_owned).collect::<Vec<_>>())
    };
    if let Some(flags) = field("flags") {
        (Some("x86_64"), flags)
    } else if let Some(features) = field("Features") {
        (Some("aarch64"), features)
    } else if info.contains("CPU implementer") {
        (Some("aarch64"), Vec::new())
    } else {
        (None, Vec::new())
    }
}

/// Which power sensor the device has (the one `power::discover` would read), or "unavailable".
fn power_sensor(root: &Path) -> String {
    crate::power::discover(root).map_or("unavailable", |s| s.kind()).to_owned()
}

/// Detects the device under `root`.
pub fn detect(root: &Path) -> Detection {
    let hw = HardwareRoot::new(root);
    let mut evidence = Vec::new();
    let mut soc = Vec::new();
    let compatible = hw.compatible();
    if !compatible.is_empty() {
        evidence.push(format!("/proc/device-tree/compatible: {}", compatible.join(", ")));
    }
    let has_compat = |prefix: &str| compatible.iter().any(|c| c.starts_with(prefix));
    let (arch, flags) = cpu(&hw);
    let family = hw.read("/sys/devices/soc0/family");

    let class = if family.as_deref() == Some("Snapdragon") || has_compat("qcom,") {
        let soc_id = hw.read("/sys/devices/soc0/soc_id");
        let machine = hw.read("/sys/devices/soc0/machine").map(|m| m.to_ascii_lowercase());
        let from_dt = compatible.last().and_then(|c| c.strip_prefix("qcom,")).map(str::to_owned);
        let chip = soc_id.as_deref().and_then(qualcomm_chip).map(|(c, _)| c.to_owned()).or(machine).or(from_dt);
        evidence.push(format!(
            "/sys/devices/soc0: family {:?}, soc_id {:?} -> chip {:?}",
            family.as_deref().unwrap_or("-"),
            soc_id.as_deref().unwrap_or("-"),
            chip.as_deref().unwrap_or("unknown")
        ));
        if let Some(chip) = &chip {
            soc.push(chip.clone());
            if let Some(htp) = htp_arch_of(chip) {
                soc.push(format!("htp-{htp}"));
            }
        }
        if hw.exists("/dev/fastrpc-cdsp") {
            evidence.push("/dev/fastrpc-cdsp present: the Hexagon NPU (CDSP) is reachable".into());
            DeviceClass::QualcommHexagon
        } else {
            evidence.push("no /dev/fastrpc-cdsp: the NPU is not reachable, CPU only".into());
            DeviceClass::GenericArm
        }
    } else if let Some(release) = hw.read("/etc/nv_tegra_release") {
        let l4t = release.split(',').next().unwrap_or_default().trim_start_matches("# ").to_owned();
        evidence.push(format!("/etc/nv_tegra_release: {l4t}"));
        if has_compat("nvidia,tegra234") {
            soc.push("tegra234".into());
        }
        DeviceClass::NvidiaJetson
    } else if has_compat("nvidia,tegra") {
        evidence.push("tegra in device-tree but no /etc/nv_tegra_release: L4T userspace missing".into());
        soc.extend(
            compatible.iter().filter(|c| c.starts_with("nvidia,tegra")).map(|c| c["nvidia,".len()..].to_owned()),
        );
        DeviceClass::NvidiaJetson
    } else if has_compat("raspberrypi,") {
        let model = hw.read("/proc/device-tree/model").map(|m| m.trim_end_matches('\0').to_owned());
        evidence.push(format!("/proc/device-tree/model: {}", model.as_deref().unwrap_or("-")));
        soc.extend(compatible.iter().filter_map(|c| c.strip_prefix("brcm,")).map(str::to_owned));
        DeviceClass::RaspberryPi
    } else if has_compat("apple,") {
        soc.extend(compatible.iter().filter(|c| c.starts_with("apple,t")).map(|c| c["apple,".len()..].to_owned()));
        DeviceClass::AppleSilicon
    } else if has_compat("rockchip,rk3588") {
        soc.push("rk3588".into());
        DeviceClass::RockchipRk3588
    } else {
        let npu = hw.list("/dev/accel").into_iter().find_map(|dev| {
            let base = format!("/sys/class/accel/{dev}/device");
            let vendor = hw.read(&format!("{base}/vendor"))?;
            let device = hw.read(&format!("{base}/device"))?;
            vendor.eq_ignore_ascii_case("0x8086").then_some((dev, device))
        });
        match npu {
            Some((dev, device)) => {
                let generation = intel_npu_generation(&device);
                evidence.push(format!(
                    "/dev/accel/{dev}: Intel PCI device {device} ({})",
                    generation.unwrap_or("unknown generation")
                ));
                soc.push(format!("intel-npu-{}", generation.unwrap_or("unknown")));
                DeviceClass::IntelNpu
            }
            None => match arch {
                Some("x86_64") => {
                    let server = ["avx512_vnni", "amx_int8", "avx512f"].iter().any(|f| flags.iter().any(|x| x == f));
                    evidence.push(format!(
                        "/proc/cpuinfo: x86 with {}",
                        ["avx2", "avx_vnni", "avx512f", "avx512_vnni", "amx_int8"]
                            .iter()
                            .filter(|f| flags.iter().any(|x| x == *f))
                            .copied()
                            .collect::<Vec<_>>()
                            .join(" ")
                    ));
                    if server { DeviceClass::X86Server } else { DeviceClass::GenericX86 }
                }
                _ => DeviceClass::GenericArm,
            },
        }
    };
    let arch = arch.unwrap_or(match class {
        DeviceClass::X86Server | DeviceClass::GenericX86 | DeviceClass::IntelNpu => "x86_64",
        _ => "aarch64",
    });
    let memory = memory_bytes(&hw);
    if memory.is_none() {
        evidence.push("/proc/meminfo: no MemTotal; memory reported as 0".into());
    }
    let power = power_sensor(root);
    evidence.push(format!("power sensor: {power}"));
    Detection {
        class,
        profile: HardwareProfile {
            device_class: class.as_str().to_owned(),
            arch: arch.to_owned(),
            execution_providers: class.providers().iter().map(|p| (*p).to_owned()).collect(),
            llm_backends: class.llm_backends().iter().map(|p| (*p).to_owned()).collect(),
            memory_bytes: memory.unwrap_or(0),
            soc,
            power,
        },
        evidence,
    }
}
