//! Power sensors against fixture sysfs trees as real devices show them: each sensor kind is found
//! and read in its own units; counters wrap; missing files and boards without sensors give no reading.

use std::path::Path;
use std::time::Duration;

use edgefleet_daemon::power::{Meter, Reading, Source, discover};

fn tree(files: &[(&str, &str)]) -> tempfile::TempDir {
    let dir = tempfile::tempdir().expect("tempdir");
    for (path, content) in files {
        let p = dir.path().join(path.trim_start_matches('/'));
        std::fs::create_dir_all(p.parent().expect("parent")).expect("mkdir");
        std::fs::write(p, content).expect("write");
    }
    dir
}

fn set(root: &Path, path: &str, content: &str) {
    std::fs::write(root.join(path.trim_start_matches('/')), content).expect("write");
}

fn watts(r: Reading) -> f64 {
    match r {
        Reading::Watts(w) => w,
        other => panic!("expected watts, got {other:?}"),
    }
}

#[test]
fn rapl_package_counter_with_wrap_around() {
    let rapl = "/sys/class/powercap/intel-rapl:0";
    let t = tree(&[
        (&format!("{rapl}/name"), "package-0\n"),
        (&format!("{rapl}/energy_uj"), "262143000000\n"),
        (&format!("{rapl}/max_energy_range_uj"), "262143328850\n"),
        // A subzone is inside its package: not counted again.
        (&format!("{rapl}/intel-rapl:0:0/name"), "core\n"),
        (&format!("{rapl}/intel-rapl:0:0/energy_uj"), "5000\n"),
    ]);
    let source = discover(t.path()).expect("RAPL");
    assert_eq!(source.kind(), "rapl");
    let mut m = Meter::default();
    m.update(source.read().expect("read"), Duration::from_secs(0));
    // 328,850 µJ to the wrap point, then 671,150 µJ past it: 1 J in 2 s.
    set(t.path(), &format!("{rapl}/energy_uj"), "671150\n");
    m.update(source.read().expect("read"), Duration::from_secs(2));
    assert!((m.joules - 1.0).abs() < 1e-9, "{}", m.joules);
    assert_eq!(m.watts, Some(0.5));
    assert_eq!(m.resets, 0);
}

#[test]
fn rapl_unreadable_as_non_root_is_not_a_sensor() {
    // Since 5.10 energy_uj is 0400 root; a daemon that cannot read it has no RAPL. Here: the file is missing.
    let t = tree(&[("/sys/class/powercap/intel-rapl:0/name", "package-0\n")]);
    assert_eq!(discover(t.path()), None);
}

#[test]
fn jetson_agx_orin_ina3221_sums_its_rails() {
    let hw = "/sys/bus/i2c/drivers/ina3221/1-0040/hwmon/hwmon3";
    let t = tree(&[
        (&format!("{hw}/in1_label"), "VDD_GPU_SOC\n"),
        (&format!("{hw}/in1_input"), "843\n"),
        (&format!("{hw}/curr1_input"), "6170\n"),
        (&format!("{hw}/in2_label"), "VDD_CPU_CV\n"),
        (&format!("{hw}/in2_input"), "843\n"),
        (&format!("{hw}/curr2_input"), "1000\n"),
        (&format!("{hw}/in3_label"), "VIN_SYS_5V0\n"),
        (&format!("{hw}/in3_input"), "4968\n"),
        (&format!("{hw}/curr3_input"), "953\n"),
        (&format!("{hw}/in7_label"), "sum of shunt voltages\n"),
        (&format!("{hw}/in7_input"), "9999\n"),
        ("/sys/bus/i2c/drivers/ina3221/1-0041/hwmon/hwmon4/in1_label", "NC\n"),
        ("/sys/bus/i2c/drivers/ina3221/1-0041/hwmon/hwmon4/in1_input", "1\n"),
        ("/sys/bus/i2c/drivers/ina3221/1-0041/hwmon/hwmon4/curr1_input", "1\n"),
    ]);
    let source = discover(t.path()).expect("INA3221");
    let Source::Ina3221 { rails } = &source else { panic!("{source:?}") };
    let labels: Vec<&str> = rails.iter().map(|(l, ..)| l.as_str()).collect();
    assert_eq!(labels, ["VDD_GPU_SOC", "VDD_CPU_CV", "VIN_SYS_5V0"], "NC and the shunt sum are not rails");
    let expected = (843.0 * 6170.0 + 843.0 * 1000.0 + 4968.0 * 953.0) / 1e6;
    assert!((watts(source.read().expect("read")) - expected).abs() < 1e-9);
}

#[test]
fn jetson_orin_nx_reads_vdd_in_alone() {
    let hw = "/sys/bus/i2c/drivers/ina3221/1-0040/hwmon/hwmon1";
    let t = tree(&[
        (&format!("{hw}/in1_label"), "VDD_IN\n"),
        (&format!("{hw}/in1_input"), "5000\n"),
        (&format!("{hw}/curr1_input"), "1200\n"),
        (&format!("{hw}/in2_label"), "VDD_CPU_GPU_CV\n"),
        (&format!("{hw}/in2_input"), "5000\n"),
        (&format!("{hw}/curr2_input"), "500\n"),
    ]);
    // VDD_IN measures the whole module: the other rails are inside it.
    assert!((watts(discover(t.path()).expect("INA3221").read().expect("read")) - 6.0).abs() < 1e-9);
}

#[test]
fn hwmon_energy_and_power_channels() {
    let t = tree(&[("/sys/class/hwmon/hwmon2/name", "ina219\n"), ("/sys/class/hwmon/hwmon2/power1_input", "176000\n")]);
    let source = discover(t.path()).expect("hwmon power");
    assert_eq!(source.kind(), "hwmon-power");
    assert!((watts(source.read().expect("read")) - 0.176).abs() < 1e-12);
    let t = tree(&[
        ("/sys/class/hwmon/hwmon0/name", "amd_energy\n"),
        ("/sys/class/hwmon/hwmon0/energy1_input", "7000000\n"),
    ]);
    let source = discover(t.path()).expect("hwmon energy");
    assert_eq!(source.read().expect("read"), Reading::EnergyMicrojoules(vec![(7_000_000, 0)]));
    // A counter that goes backwards (driver reload): counted as a reset, never as negative energy.
    let mut m = Meter::default();
    m.update(source.read().expect("read"), Duration::ZERO);
    set(t.path(), "/sys/class/hwmon/hwmon0/energy1_input", "100\n");
    m.update(source.read().expect("read"), Duration::from_secs(1));
    assert_eq!((m.joules, m.resets), (0.0, 1));
}

#[test]
fn batteries_by_power_or_by_current_and_voltage() {
    // ACPI reports power_now (µW), qualcomm-battmgr negative while discharging: the magnitude is the draw.
    let t = tree(&[
        ("/sys/class/power_supply/BAT0/type", "Battery\n"),
        ("/sys/class/power_supply/BAT0/power_now", "-7500000\n"),
    ]);
    assert!((watts(discover(t.path()).expect("battery").read().expect("read")) - 7.5).abs() < 1e-12);
    // Others give current (µA) and voltage (µV).
    let t = tree(&[
        ("/sys/class/power_supply/BAT0/type", "Battery\n"),
        ("/sys/class/power_supply/BAT0/current_now", "1500000\n"),
        ("/sys/class/power_supply/BAT0/voltage_now", "12000000\n"),
    ]);
    assert!((watts(discover(t.path()).expect("battery").read().expect("read")) - 18.0).abs() < 1e-9);
}

#[test]
fn a_raspberry_pi_5_has_no_power_reading_at_all() {
    let t = tree(&[
        ("/proc/device-tree/compatible", "raspberrypi,5-model-b\0brcm,bcm2712\0"),
        ("/sys/class/hwmon/hwmon0/name", "cpu_thermal\n"),
        ("/sys/class/hwmon/hwmon0/temp1_input", "51000\n"),
        ("/sys/class/hwmon/hwmon1/name", "rpi_volt\n"),
        ("/sys/class/hwmon/hwmon1/in0_lcrit_alarm", "0\n"),
    ]);
    assert_eq!(discover(t.path()), None, "no sensor: no number");
}

#[test]
fn a_sensor_file_that_vanishes_is_an_error_not_a_zero() {
    let t = tree(&[("/sys/class/hwmon/hwmon2/power1_input", "176000\n")]);
    let source = discover(t.path()).expect("hwmon power");
    std::fs::remove_file(t.path().join("sys/class/hwmon/hwmon2/power1_input")).expect("rm");
    assert!(source.read().is_err());
    set(t.path(), "/sys/class/hwmon/hwmon2/power1_input", "garbage\n");
    assert!(source.read().is_err());
}
