//! A fleet from one PXE server (issue "Boot media and fleets", item 3): `boot fleet` writes one
//! PXE folder per host and a dnsmasq configuration; dnsmasq (Debian's, unmodified) runs
//! inside a network namespace this test creates, on a bridge with one tap device per host,
//! and two QEMU hosts with different MAC addresses boot from it over PXE, one with UEFI
//! firmware (OVMF, which gets the bootloader's UEFI application) and one with BIOS firmware
//! (SeaBIOS and iPXE, which get PXELINUX): dnsmasq tells them apart by the client-architecture
//! option (RFC 4578). Each must run the guests of its own config (told apart by the guest
//! names on its console) and none of the other's. No address outside the namespace is used; the namespace (and with it the bridge
//! and taps) is removed afterwards, also when the test fails.
//!
//! Skipped, with the reason, where it cannot run: not root, no network namespaces, no
//! /dev/net/tun. dnsmasq, PXELINUX and MEMDISK are requirements (`cargo xtask test` installs
//! them).

use qemu_tests::emulators::Tap;
use qemu_tests::guests::image_with_guests;
use qemu_tests::{kernel, run_boot, Emulator, Platform, RunOptions};
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

const DNSMASQ: &str = "/usr/sbin/dnsmasq";

/// The namespace and the server in it; removed on drop.
struct Netns {
    name: String,
    server: Option<Child>,
}

impl Drop for Netns {
    fn drop(&mut self) {
        if let Some(mut s) = self.server.take() {
            let _ = s.kill();
            let _ = s.wait();
        }
        // Deleting the namespace removes its bridge and taps (their last reference goes with
        // the QEMUs, which the emulators' drops have killed by now).
        let _ = Command::new("ip").args(["netns", "delete", &self.name]).status();
    }
}

fn ip(ns: Option<&str>, args: &str) -> Result<(), String> {
    let mut c = Command::new("ip");
    if let Some(ns) = ns {
        c.args(["netns", "exec", ns, "ip"]);
    }
    let out = c.args(args.split_whitespace()).output().map_err(|e| format!("cannot run ip: {e}"))?;
    if out.status.success() {
        Ok(())
    } else {
        Err(format!("`ip {args}` failed: {}", String::from_utf8_lossy(&out.stderr).trim()))
    }
}

/// Why the test cannot run here, if it cannot.
fn unable() -> Option<String> {
    // SAFETY: no preconditions.
    if unsafe { libc::geteuid() } != 0 {
        return Some("needs root (network namespaces and tap devices)".into());
    }
    if !Path::new("/dev/net/tun").exists() {
        return Some("no /dev/net/tun (tap devices)".into());
    }
    None
}

#[test]
fn two_hosts_boot_over_pxe_from_one_dnsmasq_each_with_its_own_guests() {
    if let Some(why) = unable() {
        eprintln!("skipped: {why}");
        return;
    }
    assert!(Path::new(DNSMASQ).exists(), "dnsmasq is missing; install it with:\n  apt-get install dnsmasq-base");
    let hosts = [("52:54:00:0f:1e:01", "alpha", "tap0", Platform::QemuUefi), ("52:54:00:0f:1e:02", "beta", "tap1", Platform::QemuBios)];
    // Each host's config, staged with its guest image.
    let configs: Vec<_> = hosts
        .iter()
        .map(|(_, guest, _, _)| {
            let cfg = format!("[hypervisor]\nlog_level = \"info\"\n\n[[guest]]\nname = \"{guest}\"\nkernel = \"guests/echo.bin\"\nmemory_mib = 4\n");
            image_with_guests(&format!("fleet-{guest}"), &cfg, &["echo"])
        })
        .collect();
    let out = configs[0].dir.join("fleet");
    let _ = std::fs::remove_dir_all(&out);
    let mut args = vec!["fleet".to_string(), "--kernel".into(), kernel().display().to_string(), "--out".into(), out.display().to_string()];
    args.extend(["--interface", "br0", "--range", "10.77.0.100,10.77.0.199"].map(String::from));
    for ((mac, _, _, _), img) in hosts.iter().zip(&configs) {
        args.extend(["--host".into(), format!("{mac}={}", img.dir.join("bastion.toml").display())]);
    }
    run_boot(&args).unwrap_or_else(|e| panic!("{e}"));

    // A run killed before its cleanup (a harness timeout) left its namespace: remove those
    // whose test process is gone.
    let list = Command::new("ip").args(["netns", "list"]).output().map(|o| String::from_utf8_lossy(&o.stdout).into_owned()).unwrap_or_default();
    for stale in list.split_whitespace().filter(|n| n.starts_with("bastion-fleet-")) {
        let pid = stale.trim_start_matches("bastion-fleet-");
        if !Path::new(&format!("/proc/{pid}")).exists() {
            let _ = Command::new("ip").args(["netns", "delete", stale]).status();
        }
    }
    // The network: a namespace with a bridge (the server's address) and a tap per host.
    let name = format!("bastion-fleet-{}", std::process::id());
    if let Err(e) = ip(None, &format!("netns add {name}")) {
        eprintln!("skipped: network namespaces are not available here ({e})");
        return;
    }
    let mut ns = Netns { name: name.clone(), server: None };
    let setup = || -> Result<(), String> {
        ip(Some(&name), "link set lo up")?;
        ip(Some(&name), "link add br0 type bridge")?;
        ip(Some(&name), "addr add 10.77.0.1/24 dev br0")?;
        ip(Some(&name), "link set br0 up")?;
        for (_, _, tap, _) in &hosts {
            ip(Some(&name), &format!("tuntap add dev {tap} mode tap"))?;
            ip(Some(&name), &format!("link set {tap} master br0"))?;
            ip(Some(&name), &format!("link set {tap} up"))?;
        }
        Ok(())
    };
    if let Err(e) = setup() {
        eprintln!("skipped: cannot build the fleet's network in a namespace ({e})");
        return;
    }
    // dnsmasq as an administrator would run it, with its lease and log files in the test's
    // folder instead of /var.
    let log = out.join("dnsmasq.log");
    let server = Command::new("ip")
        .args(["netns", "exec", &name, DNSMASQ, "--keep-in-foreground"])
        .arg(format!("--conf-file={}", out.join("dnsmasq.conf").display()))
        .arg(format!("--dhcp-leasefile={}", out.join("leases").display()))
        .arg(format!("--pid-file={}", out.join("dnsmasq.pid").display()))
        .arg(format!("--log-facility={}", log.display()))
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap_or_else(|e| panic!("cannot start dnsmasq: {e}"));
    ns.server = Some(server);
    std::thread::sleep(Duration::from_millis(500));
    if let Some(Ok(Some(status))) = ns.server.as_mut().map(|s| s.try_wait()) {
        let mut err = String::new();
        let _ = std::io::Read::read_to_string(ns.server.as_mut().unwrap().stderr.as_mut().unwrap(), &mut err);
        panic!("dnsmasq ended at once ({status}): {err}");
    }

    let mut emus: Vec<Emulator> = hosts
        .iter()
        .zip(&configs)
        .map(|((mac, _, tap, platform), img)| {
            let opts = RunOptions { pxe: true, tap: Some(Tap { netns: name.clone(), ifname: tap.to_string(), mac: mac.to_string() }), ..RunOptions::SMP2 };
            Emulator::start(*platform, img, &opts)
        })
        .collect();
    let t = Platform::QemuUefi.boot_timeout() * 2;
    for (emu, (mac, guest, _, platform)) in emus.iter_mut().zip(&hosts) {
        let fail = |e: qemu_tests::Failure| {
            panic!("host {mac}: {e}\n\ndnsmasq's log:\n{}", std::fs::read_to_string(&log).unwrap_or_default())
        };
        emu.expect(&format!("guest {guest}: starting"), t).unwrap_or_else(fail);
        emu.expect(&format!("[{guest}] echo: ready"), t).unwrap_or_else(fail);
        let first = emu.time_of(&format!("[{guest}] ")).map_or(f64::NAN, |d| d.as_secs_f64());
        eprintln!("fleet: host {mac} ({} PXE from dnsmasq): first guest line {first:.1} s after QEMU started", platform.name());
    }
    for (emu, (mac, guest, _, _)) in emus.iter().zip(&hosts) {
        let other = hosts.iter().find(|h| h.1 != *guest).unwrap().1;
        let text = emu.transcript();
        assert!(!text.contains(&format!("guest {other}")), "host {mac} runs {other}'s config too:\n{text}");
        let n = text.lines().filter(|l| l.contains("guest ") && l.contains(": starting")).count();
        assert_eq!(n, 1, "host {mac} starts one guest:\n{text}");
    }
    // dnsmasq served each host by its MAC, and by its architecture: the UEFI host its bundle
    // through the bootloader's application, the BIOS host PXELINUX, MEMDISK and the disk
    // image, and neither the other's (its log names the files it sent from each folder).
    let served = std::fs::read_to_string(&log).unwrap_or_default();
    for (mac, _, _, platform) in &hosts {
        let folder = mac.replace(':', "-");
        let (uefi, bios) = (["bootloader", "ramdisk"], ["pxelinux.0", "memdisk", "bastion-bios.img"]);
        let (want, not) = if *platform == Platform::QemuUefi { (&uefi[..], &bios[..]) } else { (&bios[..], &uefi[..]) };
        for f in want {
            assert!(served.contains(&format!("{folder}/{f}")), "dnsmasq did not send {folder}/{f}:\n{served}");
        }
        for f in not {
            assert!(!served.contains(&format!("{folder}/{f}")), "dnsmasq sent {folder}/{f} to a {} host:\n{served}", platform.name());
        }
    }
    for e in &mut emus {
        e.kill();
    }
    drop(emus);
    drop(ns);
    assert!(!Command::new("ip").args(["netns", "list"]).output().unwrap().stdout.windows(name.len()).any(|w| w == name.as_bytes()), "namespace {name} left behind");
}
