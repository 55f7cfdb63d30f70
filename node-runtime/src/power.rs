//! Phone power care: read the battery from `/sys/class/power_supply`, hold charging off between
//! the config's marks where the kernel offers a switch (phones on a charger 24/7 swell), pause
//! the agent when the battery is low and not charging, and hold a wakelock while running.
//!
//! [`PowerPolicy::decide`] is a pure state machine over [`PowerReading`]s; the supervisor feeds
//! it readings and carries out the [`PowerAction`]s.

use bootstrap::node_config::Power;
use bootstrap::status::Battery;
use std::path::{Path, PathBuf};

/// A kernel charging switch: a file under a power_supply entry and the values that allow or
/// stop charging. Vendors differ; this table is the data, the code only walks it.
#[derive(Debug, Clone, Copy)]
pub struct ChargeSwitch {
    /// Path relative to the power_supply dir.
    pub file: &'static str,
    /// Written to allow charging.
    pub allow: &'static str,
    /// Written to stop charging.
    pub stop: &'static str,
}

/// Known switches, most common first (Qualcomm, MediaTek, Samsung, OnePlus, upstream).
pub const CHARGE_SWITCHES: &[ChargeSwitch] = &[
    ChargeSwitch {
        file: "battery/charging_enabled",
        allow: "1",
        stop: "0",
    },
    ChargeSwitch {
        file: "battery/battery_charging_enabled",
        allow: "1",
        stop: "0",
    },
    ChargeSwitch {
        file: "battery/input_suspend",
        allow: "0",
        stop: "1",
    },
    ChargeSwitch {
        file: "battery/op_disable_charge",
        allow: "0",
        stop: "1",
    },
    ChargeSwitch {
        file: "battery/store_mode",
        allow: "0",
        stop: "1",
    },
    ChargeSwitch {
        file: "battery/batt_slate_mode",
        allow: "0",
        stop: "1",
    },
    ChargeSwitch {
        file: "battery/charge_disable",
        allow: "0",
        stop: "1",
    },
    ChargeSwitch {
        file: "main/charging_enabled",
        allow: "1",
        stop: "0",
    },
    ChargeSwitch {
        file: "bq2589x_charger/enable_charging",
        allow: "1",
        stop: "0",
    },
    ChargeSwitch {
        file: "mtk-battery/disable_charger",
        allow: "0",
        stop: "1",
    },
    ChargeSwitch {
        file: "battery/charge_behaviour",
        allow: "auto",
        stop: "inhibit-charge",
    },
];

/// One look at the power supplies.
#[derive(Debug, Clone, PartialEq)]
pub struct PowerReading {
    /// Battery charge, percent.
    pub percent: Option<u8>,
    /// The battery's `status` word.
    pub status: Option<String>,
    /// A USB/mains/wireless supply is online.
    pub external_power: bool,
    /// Battery temperature in °C.
    pub temperature_c: Option<f32>,
}

impl PowerReading {
    /// Charging, full, or on external power: the battery is not running down.
    pub fn supplied(&self) -> bool {
        self.external_power || matches!(self.status.as_deref(), Some("Charging") | Some("Full"))
    }
}

/// Reads the first battery and whether any external supply is online under `dir`.
pub fn read_power(dir: &Path) -> Option<PowerReading> {
    let entries = std::fs::read_dir(dir).ok()?;
    let mut reading = PowerReading {
        percent: None,
        status: None,
        external_power: false,
        temperature_c: None,
    };
    let mut found_battery = false;
    let mut names: Vec<PathBuf> = entries.filter_map(|e| e.ok().map(|e| e.path())).collect();
    names.sort();
    for p in names {
        let kind = read_trim(&p.join("type")).unwrap_or_default();
        match kind.as_str() {
            "Battery" if !found_battery => {
                found_battery = true;
                reading.percent = read_trim(&p.join("capacity"))
                    .and_then(|v| v.parse::<i64>().ok())
                    .map(|v| v.clamp(0, 100) as u8);
                reading.status = read_trim(&p.join("status"));
                // power_supply reports tenths of a degree Celsius.
                reading.temperature_c = read_trim(&p.join("temp"))
                    .and_then(|v| v.parse::<f32>().ok())
                    .map(|t| t / 10.0);
            }
            "Mains" | "USB" | "USB_PD" | "USB_DCP" | "USB_CDP" | "USB_C" | "Wireless"
                if read_trim(&p.join("online")).as_deref() == Some("1") =>
            {
                reading.external_power = true;
            }
            _ => {}
        }
    }
    found_battery.then_some(reading)
}

fn read_trim(p: &Path) -> Option<String> {
    std::fs::read_to_string(p).ok().map(|s| s.trim().to_owned())
}

/// The first known charging switch present and writable under `dir`.
pub fn find_charge_switch(dir: &Path) -> Option<ChargeSwitch> {
    CHARGE_SWITCHES
        .iter()
        .find(|s| {
            let p = dir.join(s.file);
            std::fs::OpenOptions::new().write(true).open(&p).is_ok()
        })
        .copied()
}

/// Lets the battery charge again when the config has battery care and the switch holds charging
/// off; what `node-runtime stop` does after the supervisor is gone. Paths are those seen from
/// where `stop` runs (outside a phone's chroot; `/sys` is the same there).
pub fn release_charge_switch(config: &bootstrap::NodeConfig) {
    let Some(p) = &config.power else { return };
    let Some(switch) = find_charge_switch(&p.power_supply_dir) else {
        return;
    };
    if read_charging(&p.power_supply_dir, &switch) == Some(false) {
        match set_charging(&p.power_supply_dir, &switch, true) {
            Ok(()) => tracing::info!("charging was held off ({}): allowed again", switch.file),
            Err(e) => tracing::info!(
                "charging is held off ({}) and could not be allowed again: {e}",
                switch.file
            ),
        }
    }
}

/// Whether the switch currently lets the battery charge (None: it reads neither value).
pub fn read_charging(dir: &Path, switch: &ChargeSwitch) -> Option<bool> {
    let v = read_trim(&dir.join(switch.file))?;
    // `charge_behaviour` shows the choices with the current one in brackets.
    let current = v
        .split_whitespace()
        .find_map(|w| w.strip_prefix('[').and_then(|w| w.strip_suffix(']')))
        .unwrap_or(&v);
    if current == switch.allow {
        Some(true)
    } else if current == switch.stop {
        Some(false)
    } else {
        None
    }
}

/// Sets the switch; `allow` = let the battery charge.
pub fn set_charging(dir: &Path, switch: &ChargeSwitch, allow: bool) -> std::io::Result<()> {
    std::fs::write(
        dir.join(switch.file),
        if allow { switch.allow } else { switch.stop },
    )
}

/// What the supervisor should do after a reading.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PowerAction {
    /// Stop the agent gracefully: battery low and not charging.
    PauseAgent,
    /// Start it again: the battery recovered.
    ResumeAgent,
    /// Flip the charging switch.
    SetCharging(bool),
}

/// The battery policy's memory between readings.
#[derive(Debug, Clone)]
pub struct PowerPolicy {
    marks: Power,
    /// The agent is paused for the battery.
    pub agent_paused: bool,
    /// Charging is allowed (None: no switch, nothing to decide).
    pub charging_allowed: Option<bool>,
}

impl PowerPolicy {
    /// A policy with the config's marks; `charging` is the switch's current state (None when the
    /// kernel offers no charging switch).
    pub fn new(marks: Power, charging: Option<bool>) -> PowerPolicy {
        PowerPolicy {
            marks,
            agent_paused: false,
            charging_allowed: charging,
        }
    }

    /// Feeds one reading; returns what to do (and updates the state as if it was done).
    pub fn decide(&mut self, r: &PowerReading) -> Vec<PowerAction> {
        let mut actions = Vec::new();
        let Some(pct) = r.percent else {
            return actions;
        };
        if let Some(allowed) = self.charging_allowed {
            if allowed && pct >= self.marks.charge_stop_above {
                self.charging_allowed = Some(false);
                actions.push(PowerAction::SetCharging(false));
            } else if !allowed && pct <= self.marks.charge_resume_below {
                self.charging_allowed = Some(true);
                actions.push(PowerAction::SetCharging(true));
            }
        }
        // Charging held off by us still counts as supplied: the charger keeps the phone up.
        let running_down = !r.supplied();
        if !self.agent_paused && running_down && pct <= self.marks.agent_stop_below {
            self.agent_paused = true;
            actions.push(PowerAction::PauseAgent);
        } else if self.agent_paused && pct >= self.marks.agent_resume_above {
            self.agent_paused = false;
            actions.push(PowerAction::ResumeAgent);
        }
        actions
    }

    /// The status record's battery part.
    pub fn battery(&self, r: &PowerReading, switch: Option<&ChargeSwitch>) -> Battery {
        Battery {
            percent: r.percent,
            status: r.status.clone(),
            external_power: r.external_power,
            temperature_c: r.temperature_c,
            charge_switch: switch.map(|s| s.file.to_owned()),
            charging_allowed: self.charging_allowed,
        }
    }
}

/// Name of our kernel wakelock.
pub const WAKELOCK_NAME: &str = "armfleet-node-runtime";

/// The directory holding `wake_lock` / `wake_unlock`: `/sys/power`, or `$ARMFLEET_SYS_POWER`
/// (tests point it at a plain directory).
pub fn wakelock_dir() -> PathBuf {
    std::env::var_os("ARMFLEET_SYS_POWER")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from("/sys/power"))
}

/// Holds a kernel wakelock until dropped. Absent interface (not a phone kernel): nothing held.
#[derive(Debug)]
pub struct Wakelock {
    dir: PathBuf,
    held: bool,
}

impl Wakelock {
    /// Takes the wakelock when `dir/wake_lock` exists.
    pub fn acquire(dir: &Path) -> Wakelock {
        let held = std::fs::OpenOptions::new()
            .append(true)
            .open(dir.join("wake_lock"))
            .and_then(|mut f| std::io::Write::write_all(&mut f, WAKELOCK_NAME.as_bytes()))
            .is_ok();
        Wakelock {
            dir: dir.to_owned(),
            held,
        }
    }

    /// Whether the kernel accepted it.
    pub fn held(&self) -> bool {
        self.held
    }
}

impl Drop for Wakelock {
    fn drop(&mut self) {
        if self.held {
            let _ = std::fs::OpenOptions::new()
                .append(true)
                .open(self.dir.join("wake_unlock"))
                .and_then(|mut f| std::io::Write::write_all(&mut f, WAKELOCK_NAME.as_bytes()));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn reading(pct: u8, status: &str, ext: bool) -> PowerReading {
        PowerReading {
            percent: Some(pct),
            status: Some(status.into()),
            external_power: ext,
            temperature_c: None,
        }
    }

    #[test]
    fn charge_switch_has_hysteresis() {
        let mut p = PowerPolicy::new(Power::default(), Some(true));
        assert_eq!(p.decide(&reading(79, "Charging", true)), vec![]);
        assert_eq!(
            p.decide(&reading(80, "Charging", true)),
            vec![PowerAction::SetCharging(false)]
        );
        assert_eq!(p.decide(&reading(70, "Not charging", true)), vec![]);
        assert_eq!(
            p.decide(&reading(60, "Not charging", true)),
            vec![PowerAction::SetCharging(true)]
        );
        assert_eq!(p.decide(&reading(61, "Charging", true)), vec![]);
    }

    #[test]
    fn agent_pauses_low_and_unplugged_and_resumes_at_the_mark() {
        let mut p = PowerPolicy::new(Power::default(), None);
        assert_eq!(
            p.decide(&reading(10, "Charging", true)),
            vec![],
            "charging: keep running"
        );
        assert_eq!(
            p.decide(&reading(15, "Discharging", false)),
            vec![PowerAction::PauseAgent]
        );
        assert_eq!(p.decide(&reading(12, "Discharging", false)), vec![]);
        assert_eq!(p.decide(&reading(29, "Charging", true)), vec![]);
        assert_eq!(
            p.decide(&reading(30, "Charging", true)),
            vec![PowerAction::ResumeAgent]
        );
    }

    #[test]
    fn reads_a_fake_power_supply_dir() {
        let d = tempfile::tempdir().unwrap();
        let w = |p: &str, v: &str| {
            let f = d.path().join(p);
            std::fs::create_dir_all(f.parent().unwrap()).unwrap();
            std::fs::write(f, v).unwrap();
        };
        w("battery/type", "Battery\n");
        w("battery/capacity", "42\n");
        w("battery/status", "Discharging\n");
        w("battery/temp", "355\n");
        w("battery/input_suspend", "0\n");
        w("ac/type", "Mains\n");
        w("ac/online", "1\n");
        let r = read_power(d.path()).unwrap();
        assert_eq!(r.percent, Some(42));
        assert!(r.external_power && r.supplied());
        assert_eq!(r.temperature_c, Some(35.5));
        let s = find_charge_switch(d.path()).unwrap();
        assert_eq!(s.file, "battery/input_suspend");
        assert_eq!(read_charging(d.path(), &s), Some(true));
        set_charging(d.path(), &s, false).unwrap();
        assert_eq!(std::fs::read_to_string(d.path().join(s.file)).unwrap(), "1");
        assert_eq!(read_charging(d.path(), &s), Some(false));
        // The sysfs choice list with the current value in brackets.
        w(
            "battery/charge_behaviour",
            "auto [inhibit-charge] force-discharge\n",
        );
        let cb = CHARGE_SWITCHES
            .iter()
            .find(|s| s.file == "battery/charge_behaviour")
            .unwrap();
        assert_eq!(read_charging(d.path(), cb), Some(false));
    }
}
