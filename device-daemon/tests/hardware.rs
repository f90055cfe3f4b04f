//! Hardware detection on fixture trees built from the real file contents in `fixtures/hardware/`
//! (paths, example values and sources are cited there). Each fixture is written by the test itself, so the
//! bytes, NULs of device-tree strings included, are visible here.

use std::path::Path;

use edgefleet_daemon::hardware::{CPU, CUDA, DeviceClass, OPENVINO, QNN, TENSORRT, XNNPACK, detect};

/// Writes `files` (path relative to `/`, content) under a new temporary root.
fn tree(files: &[(&str, &[u8])]) -> tempfile::TempDir {
    let dir = tempfile::tempdir().expect("tempdir");
    for (path, content) in files {
        let p = dir.path().join(path.trim_start_matches('/'));
        std::fs::create_dir_all(p.parent().expect("parent")).expect("mkdir");
        std::fs::write(&p, content).expect("write");
    }
    dir
}

const MEMINFO_8G: &[u8] = b"MemTotal:        7999136 kB\nMemFree:         5000000 kB\n";
const MEMINFO_16G: &[u8] = b"MemTotal:       16127920 kB\n";
const MEMINFO_32G: &[u8] = b"MemTotal:       32568144 kB\n";
// Qualcomm Linux kernels show raw MIDR parts and no `model name`.
const CPUINFO_QCOM: &[u8] = b"processor\t: 0\nBogoMIPS\t: 38.40\nFeatures\t: fp asimd evtstrm aes pmull sha1 sha2 crc32 atomics fphp asimdhp cpuid asimdrdm lrcpc dcpop asimddp\nCPU implementer\t: 0x41\nCPU part\t: 0xd4b\n";
const CPUINFO_PI5: &[u8] = b"processor\t: 0\nBogoMIPS\t: 108.00\nFeatures\t: fp asimd evtstrm aes pmull sha1 sha2 crc32 atomics fphp asimdhp cpuid asimdrdm lrcpc dcpop asimddp\nCPU implementer\t: 0x41\nCPU architecture: 8\nRevision\t: d04170\n";
// Core Ultra: avx2 and avx_vnni, no avx512, no amx (§3).
const CPUINFO_CORE_ULTRA: &[u8] = b"processor\t: 0\nvendor_id\t: GenuineIntel\nmodel name\t: Intel(R) Core(TM) Ultra 7 155H\nflags\t\t: fpu vme de pse tsc msr sse sse2 ssse3 sse4_1 sse4_2 avx avx2 fma avx_vnni sha_ni\n";
// Xeon (Sapphire Rapids and later): avx512 with vnni and amx (§3, §6).
const CPUINFO_XEON: &[u8] = b"processor\t: 0\nvendor_id\t: GenuineIntel\nmodel name\t: Intel(R) Xeon(R) Platinum 8480+\nflags\t\t: fpu sse sse2 avx avx2 avx512f avx512_vnni amx_bf16 avx512_fp16 amx_tile amx_int8\n";

struct Expect<'a> {
    class: DeviceClass,
    arch: &'a str,
    providers: &'a [&'a str],
    memory_mib: u64,
    soc: &'a [&'a str],
    power: &'a str,
}

fn check(name: &str, root: &Path, e: Expect<'_>) {
    let d = detect(root);
    assert_eq!(d.class, e.class, "{name}: {:#?}", d.evidence);
    assert_eq!(d.profile.device_class, e.class.as_str(), "{name}");
    assert_eq!(d.profile.arch, e.arch, "{name}");
    assert_eq!(d.profile.execution_providers, e.providers, "{name}");
    assert_eq!(d.profile.memory_bytes >> 20, e.memory_mib, "{name}");
    assert_eq!(d.profile.soc, e.soc, "{name}");
    assert_eq!(d.profile.power, e.power, "{name}");
    assert_eq!(
        d.profile.execution_providers.last().map(String::as_str),
        Some(CPU),
        "{name}: CPU is always the fallback"
    );
    assert!(!d.evidence.is_empty(), "{name}: no evidence given");
}

#[test]
fn snapdragon_8_gen_2_phone_with_hexagon() {
    let t = tree(&[
        ("/sys/devices/soc0/family", b"Snapdragon\n"),
        ("/sys/devices/soc0/soc_id", b"519\n"),
        ("/sys/devices/soc0/machine", b"SM8550\n"),
        ("/proc/device-tree/compatible", b"qcom,sm8550-qrd\0qcom,sm8550\0"),
        ("/dev/fastrpc-cdsp", b""),
        ("/dev/fastrpc-adsp", b""),
        ("/proc/cpuinfo", CPUINFO_QCOM),
        ("/proc/meminfo", MEMINFO_8G),
        // A phone: power from the battery, which reports power_now (§7).
        ("/sys/class/power_supply/battery/type", b"Battery\n"),
        ("/sys/class/power_supply/battery/power_now", b"-2150000\n"),
    ]);
    check(
        "SM8550",
        t.path(),
        Expect {
            class: DeviceClass::QualcommHexagon,
            arch: "aarch64",
            providers: &[QNN, CPU],
            memory_mib: 7811,
            soc: &["sm8550", "htp-v73"],
            power: "power_supply",
        },
    );
}

#[test]
fn rb3_gen2_board_and_an_unknown_soc_id_fall_back_to_the_device_tree() {
    // QCS6490 (soc_id 498), HTP v68, only /dev/fastrpc-cdsp (§1).
    let t = tree(&[
        ("/sys/devices/soc0/family", b"Snapdragon\n"),
        ("/sys/devices/soc0/soc_id", b"498\n"),
        ("/proc/device-tree/compatible", b"qcom,qcs6490-rb3gen2\0qcom,qcm6490\0"),
        ("/dev/fastrpc-cdsp", b""),
        ("/proc/cpuinfo", CPUINFO_QCOM),
        ("/proc/meminfo", MEMINFO_8G),
    ]);
    check(
        "RB3 Gen2",
        t.path(),
        Expect {
            class: DeviceClass::QualcommHexagon,
            arch: "aarch64",
            providers: &[QNN, CPU],
            memory_mib: 7811,
            soc: &["qcs6490", "htp-v68"],
            power: "unavailable",
        },
    );
    // An id the table does not know, with `machine` absent: the SoC comes from the device tree.
    let t = tree(&[
        ("/sys/devices/soc0/family", b"Snapdragon\n"),
        ("/sys/devices/soc0/soc_id", b"999\n"),
        ("/proc/device-tree/compatible", b"qcom,sm8650-qrd\0qcom,sm8650\0"),
        ("/dev/fastrpc-cdsp", b""),
    ]);
    let d = detect(t.path());
    assert_eq!(d.profile.soc, ["sm8650", "htp-v75"]);
    // Without the FastRPC node the NPU cannot be used: CPU only, and the evidence says why.
    let t = tree(&[("/sys/devices/soc0/family", b"Snapdragon\n"), ("/sys/devices/soc0/soc_id", b"519\n")]);
    let d = detect(t.path());
    assert_eq!(d.class, DeviceClass::GenericArm);
    assert!(d.evidence.iter().any(|e| e.contains("no /dev/fastrpc-cdsp")), "{:?}", d.evidence);
}

#[test]
fn jetson_agx_orin() {
    let t = tree(&[
        (
            "/etc/nv_tegra_release",
            b"# R36 (release), REVISION: 4.3, GCID: 38968081, BOARD: generic, EABI: aarch64, DATE: Wed Jan  8 01:49:37 UTC 2025\n",
        ),
        ("/proc/device-tree/compatible", b"nvidia,p3737-0000+p3701-0000\0nvidia,p3701-0000\0nvidia,tegra234\0"),
        ("/proc/device-tree/model", b"NVIDIA Jetson AGX Orin Developer Kit\0"),
        ("/sys/devices/soc0/family", b"Tegra\n"),
        ("/sys/devices/soc0/soc_id", b"35\n"),
        ("/proc/cpuinfo", b"processor\t: 0\nFeatures\t: fp asimd evtstrm aes pmull sha1 sha2 crc32 atomics\nCPU implementer\t: 0x41\n"),
        ("/proc/meminfo", MEMINFO_32G),
        // INA3221 rails under the i2c driver (§2).
        ("/sys/bus/i2c/drivers/ina3221/1-0040/hwmon/hwmon3/in1_label", b"VDD_GPU_SOC\n"),
        ("/sys/bus/i2c/drivers/ina3221/1-0040/hwmon/hwmon3/in1_input", b"843\n"),
        ("/sys/bus/i2c/drivers/ina3221/1-0040/hwmon/hwmon3/curr1_input", b"6170\n"),
    ]);
    check(
        "AGX Orin",
        t.path(),
        Expect {
            class: DeviceClass::NvidiaJetson,
            arch: "aarch64",
            providers: &[TENSORRT, CUDA, CPU],
            memory_mib: 31804,
            soc: &["tegra234"],
            power: "ina3221",
        },
    );
    assert!(detect(t.path()).evidence.iter().any(|e| e.contains("R36 (release)")));
}

#[test]
fn intel_core_ultra_laptop_with_npu() {
    let t = tree(&[
        ("/dev/accel/accel0", b""),
        ("/sys/class/accel/accel0/device/vendor", b"0x8086\n"),
        ("/sys/class/accel/accel0/device/device", b"0x7d1d\n"),
        ("/sys/class/accel/accel0/device/npu_busy_time_us", b"123456\n"),
        ("/proc/cpuinfo", CPUINFO_CORE_ULTRA),
        ("/proc/meminfo", MEMINFO_16G),
        ("/sys/class/powercap/intel-rapl:0/name", b"package-0\n"),
        ("/sys/class/powercap/intel-rapl:0/energy_uj", b"48213345678\n"),
        ("/sys/class/powercap/intel-rapl:0/max_energy_range_uj", b"262143328850\n"),
    ]);
    check(
        "Core Ultra",
        t.path(),
        Expect {
            class: DeviceClass::IntelNpu,
            arch: "x86_64",
            providers: &[OPENVINO, CPU],
            memory_mib: 15749,
            soc: &["intel-npu-meteor-lake"],
            power: "rapl",
        },
    );
    // An accel device of another vendor (AMD XDNA, say) is not an Intel NPU.
    let t = tree(&[
        ("/dev/accel/accel0", b""),
        ("/sys/class/accel/accel0/device/vendor", b"0x1022\n"),
        ("/sys/class/accel/accel0/device/device", b"0x1502\n"),
        ("/proc/cpuinfo", CPUINFO_CORE_ULTRA),
    ]);
    assert_eq!(detect(t.path()).class, DeviceClass::GenericX86);
}

#[test]
fn raspberry_pi_5_has_no_power_sensor() {
    let t = tree(&[
        ("/proc/device-tree/compatible", b"raspberrypi,5-model-b\0brcm,bcm2712\0"),
        ("/proc/device-tree/model", b"Raspberry Pi 5 Model B Rev 1.0\0"),
        ("/proc/cpuinfo", CPUINFO_PI5),
        ("/proc/meminfo", MEMINFO_8G),
        // Its hwmon chips measure temperature and under-voltage, not power (§4).
        ("/sys/class/hwmon/hwmon0/name", b"cpu_thermal\n"),
        ("/sys/class/hwmon/hwmon0/temp1_input", b"52350\n"),
        ("/sys/class/hwmon/hwmon1/name", b"rpi_volt\n"),
        ("/sys/class/hwmon/hwmon1/in0_lcrit_alarm", b"0\n"),
    ]);
    check(
        "Pi 5",
        t.path(),
        Expect {
            class: DeviceClass::RaspberryPi,
            arch: "aarch64",
            providers: &[XNNPACK, CPU],
            memory_mib: 7811,
            soc: &["bcm2712"],
            power: "unavailable",
        },
    );
}

#[test]
fn x86_server_and_plain_x86() {
    let t = tree(&[
        ("/proc/cpuinfo", CPUINFO_XEON),
        ("/proc/meminfo", MEMINFO_32G),
        ("/sys/class/powercap/intel-rapl:0/name", b"package-0\n"),
        ("/sys/class/powercap/intel-rapl:0/energy_uj", b"1000\n"),
    ]);
    check(
        "Xeon",
        t.path(),
        Expect {
            class: DeviceClass::X86Server,
            arch: "x86_64",
            providers: &[CPU],
            memory_mib: 31804,
            soc: &[],
            power: "rapl",
        },
    );
    let t = tree(&[("/proc/cpuinfo", b"processor\t: 0\nvendor_id\t: AuthenticAMD\nflags\t\t: fpu sse2 avx avx2\n")]);
    let d = detect(t.path());
    assert_eq!(d.class, DeviceClass::GenericX86);
    assert_eq!(d.profile.memory_bytes, 0, "no meminfo: 0, and the evidence says so");
    assert!(d.evidence.iter().any(|e| e.contains("no MemTotal")));
}

#[test]
fn an_empty_root_claims_nothing() {
    let t = tree(&[]);
    let d = detect(t.path());
    assert_eq!(d.class, DeviceClass::GenericArm);
    assert_eq!(d.profile.execution_providers, [XNNPACK, CPU]);
    assert_eq!(d.profile.power, "unavailable");
    assert!(d.profile.soc.is_empty());
}

#[test]
fn the_binary_prints_the_profile() {
    let t = tree(&[("/proc/cpuinfo", CPUINFO_XEON), ("/proc/meminfo", MEMINFO_32G)]);
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_edgefleet-daemon"))
        .args(["hardware", "--json", "--hardware-root"])
        .arg(t.path())
        .output()
        .expect("run");
    assert!(out.status.success());
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).expect("json");
    assert_eq!(v["profile"]["device_class"], "x86-server");
    assert_eq!(v["class"], "x86-server");
}

#[test]
fn the_shared_fixture_trees_detect_as_their_class() {
    // `fixtures/hardware/`, which the e2e tests and the demo give real daemons as their hardware root.
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("../fixtures/hardware");
    for (name, class, power) in [
        ("hexagon-phone", DeviceClass::QualcommHexagon, "power_supply"),
        ("jetson-agx-orin", DeviceClass::NvidiaJetson, "ina3221"),
        ("intel-npu-laptop", DeviceClass::IntelNpu, "rapl"),
        ("raspberry-pi-5", DeviceClass::RaspberryPi, "unavailable"),
        ("x86-server", DeviceClass::X86Server, "unavailable"),
    ] {
        let d = detect(&dir.join(name));
        assert_eq!(d.class, class, "{name}: {:#?}", d.evidence);
        assert_eq!(d.profile.power, power, "{name}");
    }
}
