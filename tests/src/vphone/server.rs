//! A private adb server (Debian's real `adb`, platform-tools 29.0.6) on its own port, so tests
//! never touch the user's server on 5037.

use super::phone::VirtualPhone;
use std::process::{Command, Output};
use std::time::{Duration, Instant};

/// An adb server started with `adb -P PORT start-server`, killed on drop.
pub struct AdbServer {
    port: u16,
    home: tempfile::TempDir,
}

impl AdbServer {
    /// Starts a private server on a free port. Panics if `adb` is missing or fails.
    pub fn start() -> AdbServer {
        let port = {
            let l = std::net::TcpListener::bind("127.0.0.1:0").expect("bind 127.0.0.1:0");
            l.local_addr().unwrap().port()
        };
        let home = tempfile::Builder::new()
            .prefix("vphone-adb-home-")
            .tempdir()
            .expect("create adb home");
        let server = AdbServer { port, home };
        let out = server.adb(&["start-server"]);
        assert!(
            out.status.success(),
            "adb -P {port} start-server failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        server
    }

    /// The server's port (`adb -P PORT`, or `ANDROID_ADB_SERVER_PORT`).
    pub fn port(&self) -> u16 {
        self.port
    }

    /// A `Command` for `adb -P PORT` with this server's environment (its own `~/.android`).
    pub fn command(&self) -> Command {
        let mut cmd = Command::new("adb");
        cmd.arg("-P")
            .arg(self.port.to_string())
            .env("HOME", self.home.path())
            .env("ANDROID_SDK_HOME", self.home.path())
            .env_remove("ANDROID_SERIAL")
            .env_remove("ADB_VENDOR_KEYS");
        cmd
    }

    /// Runs `adb -P PORT ARGS...` and returns its output.
    pub fn adb(&self, args: &[&str]) -> Output {
        self.command()
            .args(args)
            .output()
            .expect("run adb (install the adb package)")
    }

    /// `adb -s SERIAL push LOCAL REMOTE` through this server; returns its output.
    pub fn push(&self, serial: &str, local: &std::path::Path, remote: &str) -> Output {
        let local = local.to_str().expect("a UTF-8 local path");
        self.adb(&["-s", serial, "push", local, remote])
    }

    /// `adb connect` to the phone, then waits until the server lists it as `device` (or
    /// `unauthorized` / `offline` for a phone that never accepts / never answers). Returns the
    /// `adb connect` output.
    pub fn connect(&self, phone: &VirtualPhone) -> Output {
        let serial = phone.serial();
        let out = self.adb(&["connect", &serial]);
        let want = phone.profile().auth.listed_state();
        let listed = self.poll_state(&serial, want, Duration::from_secs(20));
        assert!(
            listed.as_deref() == Some(want),
            "{serial} did not become {want} after adb connect (listed: {listed:?}): {}{}\n{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr),
            phone.logs()
        );
        out
    }

    /// Waits until the server lists the phone in state `want`; panics with the last state seen
    /// and the phone's logs after `timeout`.
    pub fn wait_for_state(&self, phone: &VirtualPhone, want: &str, timeout: Duration) {
        let serial = phone.serial();
        let listed = self.poll_state(&serial, want, timeout);
        assert!(
            listed.as_deref() == Some(want),
            "{serial} did not become {want} within {timeout:?} (listed: {listed:?})\n{}",
            phone.logs()
        );
    }

    /// Polls `adb devices` until `serial` is in state `want` or `timeout` passes; returns the
    /// last state seen.
    fn poll_state(&self, serial: &str, want: &str, timeout: Duration) -> Option<String> {
        let deadline = Instant::now() + timeout;
        loop {
            let listed = self.state(serial);
            if listed.as_deref() == Some(want) || Instant::now() >= deadline {
                return listed;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// The device's state as `adb devices` lists it (`device`, `offline`, `unauthorized`).
    pub fn state(&self, serial: &str) -> Option<String> {
        let out = self.adb(&["devices"]);
        String::from_utf8_lossy(&out.stdout).lines().find_map(|l| {
            let mut f = l.split_whitespace();
            (f.next() == Some(serial)).then(|| f.next().unwrap_or("").to_owned())
        })
    }
}

impl Drop for AdbServer {
    fn drop(&mut self) {
        let _ = self.adb(&["kill-server"]);
    }
}
