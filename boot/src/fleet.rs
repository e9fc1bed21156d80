//! `boot fleet`: one PXE server for many hosts, each booting its own configuration. The
//! server is `dnsmasq` (DHCP and TFTP in one Debian package); this writes what it serves and
//! its configuration, nothing runs here.
//!
//! A BIOS host's PXE ROM gets `pxelinux.0`, which boots the BIOS image through MEMDISK
//! ([`crate::Syslinux`]); PXELINUX, too, fetches its files by bare names. The bootloader's
//! UEFI PXE application fetches `kernel-x86_64`, `ramdisk` (Bastion's bundle)
//! and `boot.json` from the TFTP root by those bare names, so hosts cannot be told apart by
//! path; dnsmasq's `tftp-unique-root=mac` does it instead: a client's files come from
//! `tftp/<its MAC, lower case, dashes>/` (dnsmasq(8)). DHCP answers only the listed MACs (an
//! unknown machine on the network is not booted into Bastion) and tells BIOS and UEFI clients
//! apart by their client-architecture option (RFC 4578 section 2.1; IANA: 0 BIOS, 7 and 9
//! x86-64 UEFI).

use anyhow::{bail, Context, Result};
use std::fmt::Write as _;
use std::path::{Path, PathBuf};

/// A host's Ethernet address.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Mac(pub [u8; 6]);

impl Mac {
    /// Six hex octets separated by `:` or `-`.
    pub fn parse(s: &str) -> Result<Mac> {
        let parts: Vec<&str> = s.split([':', '-']).collect();
        let mut m = [0u8; 6];
        if parts.len() != 6 || parts.iter().any(|p| p.len() != 2 || !p.bytes().all(|b| b.is_ascii_hexdigit())) {
            bail!("`{s}` is not a MAC address (six hex octets, e.g. 52:54:00:12:34:56)");
        }
        for (o, p) in m.iter_mut().zip(&parts) {
            *o = u8::from_str_radix(p, 16).with_context(|| format!("`{s}` is not a MAC address: `{p}` is not a hex octet"))?;
        }
        if m[0] & 1 != 0 {
            bail!("`{s}` is a multicast address, not a host's");
        }
        Ok(Mac(m))
    }

    /// `52:54:00:12:34:56`, as dnsmasq's `dhcp-host` takes it.
    pub fn colons(&self) -> String {
        self.0.iter().map(|o| format!("{o:02x}")).collect::<Vec<_>>().join(":")
    }

    /// `52-54-00-12-34-56`: the folder name `tftp-unique-root=mac` looks for.
    pub fn dashes(&self) -> String {
        self.colons().replace(':', "-")
    }
}

/// The network dnsmasq serves.
#[derive(Debug, Clone)]
pub struct Network {
    /// The interface it listens on (only that one).
    pub interface: String,
    /// `START,END` (or `START,END,NETMASK`) of the DHCP range.
    pub range: String,
}

/// One host: its MAC and its configuration file.
#[derive(Debug, Clone)]
pub struct Host {
    pub mac: Mac,
    pub config: PathBuf,
}

/// Parses `MAC=CONFIG`.
pub fn parse_host(s: &str) -> Result<Host> {
    let (mac, config) = s.split_once('=').with_context(|| format!("--host `{s}`: expected MAC=CONFIG"))?;
    Ok(Host { mac: Mac::parse(mac).with_context(|| format!("--host `{s}`"))?, config: PathBuf::from(config) })
}

/// dnsmasq's configuration for `hosts`, serving `tftp_root` (absolute); BIOS clients get
/// PXELINUX when `bios` (the folders hold it).
pub fn dnsmasq_conf(tftp_root: &Path, net: &Network, hosts: &[Host], bios: bool) -> String {
    let mut c = String::new();
    let _ = writeln!(c, "# A Bastion fleet, written by `boot fleet`. Serve it with:");
    let _ = writeln!(c, "#   dnsmasq --keep-in-foreground --conf-file=<this file>");
    let _ = writeln!(c, "# DHCP and TFTP only: no DNS.");
    let _ = writeln!(c, "port=0");
    let _ = writeln!(c, "interface={}", net.interface);
    let _ = writeln!(c, "bind-interfaces");
    let _ = writeln!(c, "dhcp-range={},1h", net.range);
    let _ = writeln!(c, "# Only these hosts get an answer: an unknown machine is never booted into Bastion.");
    let _ = writeln!(c, "dhcp-ignore=tag:!known");
    for h in hosts {
        let _ = writeln!(c, "dhcp-host={}  # {}", h.mac.colons(), h.config.display());
    }
    let _ = writeln!(c, "# Client architecture (RFC 4578, option 93): 7 and 9 are x86-64 UEFI, 0 is BIOS.");
    let _ = writeln!(c, "dhcp-match=set:efi-x86_64,option:client-arch,7");
    let _ = writeln!(c, "dhcp-match=set:efi-x86_64,option:client-arch,9");
    let _ = writeln!(c, "dhcp-boot=tag:efi-x86_64,bootloader");
    if bios {
        let _ = writeln!(c, "dhcp-match=set:bios,option:client-arch,0");
        let _ = writeln!(c, "# PXELINUX, which boots the BIOS image through MEMDISK.");
        let _ = writeln!(c, "dhcp-boot=tag:bios,pxelinux.0");
    } else {
        let _ = writeln!(c, "# BIOS clients get no boot file: PXELINUX and MEMDISK were not installed when this was written.");
    }
    let _ = writeln!(c, "enable-tftp");
    let _ = writeln!(c, "tftp-root={}", tftp_root.display());
    let _ = writeln!(c, "# Each host's files come from tftp/<its MAC with dashes>/: its own bundle.");
    let _ = writeln!(c, "tftp-unique-root=mac");
    let _ = writeln!(c, "log-dhcp");
    c
}

/// Writes the fleet into `out`: per host, `hosts/<mac>/` (its bundle and the stripped kernel)
/// and `tftp/<mac>/` (the PXE folder), then `dnsmasq.conf`. Every config is validated
/// first; a MAC given twice is refused.
pub fn build(kernel: &Path, out: &Path, net: &Network, hosts: &[Host]) -> Result<Fleet> {
    if hosts.is_empty() {
        bail!("a fleet needs at least one --host MAC=CONFIG");
    }
    for (i, h) in hosts.iter().enumerate() {
        if let Some(o) = hosts[..i].iter().find(|o| o.mac == h.mac) {
            bail!("--host {}: given twice ({} and {})", h.mac.colons(), o.config.display(), h.config.display());
        }
        crate::validate_config(&h.config).with_context(|| format!("host {}", h.mac.colons()))?;
    }
    if net.interface.is_empty() || !(2..=3).contains(&net.range.split(',').count()) {
        bail!("a fleet needs --interface IF and --range START,END[,NETMASK] (the lease time is set here)");
    }
    // Each goes into one line of dnsmasq.conf: a line break would add options.
    let one_line = |s: &str| !s.contains(['\n', '\r']);
    if !one_line(&net.interface) || !one_line(&net.range) || hosts.iter().any(|h| !one_line(&h.config.to_string_lossy())) {
        bail!("an interface, range or config path with a line break cannot go into dnsmasq.conf");
    }
    let tftp = out.join("tftp");
    let (mut bios, mut notes) = (true, Vec::new());
    for h in hosts {
        let work = out.join("hosts").join(h.mac.dashes());
        let a = crate::build_all(kernel, &h.config, &work, false, false, true).with_context(|| format!("host {}", h.mac.colons()))?;
        let dst = tftp.join(h.mac.dashes());
        let _ = std::fs::remove_dir_all(&dst);
        std::fs::create_dir_all(&dst).with_context(|| format!("cannot create {}", dst.display()))?;
        let src = a.pxe.expect("a PXE folder was asked for");
        copy_tree(&src, &dst)?;
        bios &= a.report.pxe_bios;
        notes.extend(a.report.notes.into_iter().map(|n| format!("host {}: {n}", h.mac.colons())));
    }
    let root = std::fs::canonicalize(&tftp).with_context(|| format!("cannot resolve {}", tftp.display()))?;
    let conf = out.join("dnsmasq.conf");
    std::fs::write(&conf, dnsmasq_conf(&root, net, hosts, bios)).with_context(|| format!("cannot write {}", conf.display()))?;
    Ok(Fleet { conf, bios, notes })
}

/// What [`build`] wrote.
#[derive(Debug)]
pub struct Fleet {
    /// `dnsmasq.conf`.
    pub conf: PathBuf,
    /// BIOS hosts boot too (every host's folder holds PXELINUX).
    pub bios: bool,
    /// What could not be done, per host.
    pub notes: Vec<String>,
}

/// Copies the folder `src` into `dst` (created), subfolders included.
fn copy_tree(src: &Path, dst: &Path) -> Result<()> {
    std::fs::create_dir_all(dst).with_context(|| format!("cannot create {}", dst.display()))?;
    for e in std::fs::read_dir(src).with_context(|| format!("cannot read {}", src.display()))? {
        let e = e?;
        if e.file_type()?.is_dir() {
            copy_tree(&e.path(), &dst.join(e.file_name()))?;
        } else {
            std::fs::copy(e.path(), dst.join(e.file_name())).with_context(|| format!("cannot copy {}", e.path().display()))?;
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn macs_are_six_hex_octets_of_a_unicast_address() {
        let m = Mac::parse("52:54:00:AB:cd:0f").unwrap();
        assert_eq!(m.0, [0x52, 0x54, 0, 0xab, 0xcd, 0x0f]);
        assert_eq!(m.colons(), "52:54:00:ab:cd:0f");
        // dnsmasq(8), tftp-unique-root=mac: "lowercase zero padded digits separated by dashes".
        assert_eq!(m.dashes(), "52-54-00-ab-cd-0f");
        assert_eq!(Mac::parse("52-54-00-ab-cd-0f").unwrap(), m);
        for bad in ["52:54:00:ab:cd", "52:54:00:ab:cd:0f:11", "52:54:00:ab:cd:f", "52:54:00:ab:cd:0g", "5:254:00:ab:cd:0f", "52:54:00:ab:cd:+f", ""] {
            assert!(Mac::parse(bad).unwrap_err().to_string().contains("not a MAC address"), "{bad}");
        }
        // Bit 0 of the first octet marks a group address (IEEE 802).
        assert!(Mac::parse("01:00:5e:00:00:01").unwrap_err().to_string().contains("multicast"));
        let h = parse_host("52:54:00:00:00:01=configs/a.toml").unwrap();
        assert_eq!((h.mac.0[5], h.config), (1, PathBuf::from("configs/a.toml")));
        assert!(parse_host("52:54:00:00:00:01").unwrap_err().to_string().contains("expected MAC=CONFIG"));
    }

    #[test]
    fn dnsmasq_answers_only_the_fleet_and_serves_each_host_its_folder() {
        let hosts = [
            Host { mac: Mac([0x52, 0x54, 0, 0, 0, 1]), config: "a.toml".into() },
            Host { mac: Mac([0x52, 0x54, 0, 0, 0, 2]), config: "b.toml".into() },
        ];
        let net = Network { interface: "br0".into(), range: "10.77.0.100,10.77.0.200".into() };
        let c = dnsmasq_conf(Path::new("/srv/fleet/tftp"), &net, &hosts, true);
        let lines: Vec<&str> = c.lines().filter(|l| !l.starts_with('#')).collect();
        for want in [
            "port=0",
            "interface=br0",
            "bind-interfaces",
            "dhcp-range=10.77.0.100,10.77.0.200,1h",
            "dhcp-ignore=tag:!known",
            "dhcp-host=52:54:00:00:00:01  # a.toml",
            "dhcp-host=52:54:00:00:00:02  # b.toml",
            "dhcp-match=set:efi-x86_64,option:client-arch,7",
            "dhcp-match=set:efi-x86_64,option:client-arch,9",
            "dhcp-boot=tag:efi-x86_64,bootloader",
            "dhcp-match=set:bios,option:client-arch,0",
            "dhcp-boot=tag:bios,pxelinux.0",
            "enable-tftp",
            "tftp-root=/srv/fleet/tftp",
            "tftp-unique-root=mac",
        ] {
            assert!(lines.contains(&want), "missing `{want}` in:\n{c}");
        }
        // Nothing is booted without an architecture tag (no catch-all dhcp-boot).
        assert_eq!(lines.iter().filter(|l| l.starts_with("dhcp-boot=")).count(), 2);
        // Without PXELINUX in the folders, BIOS clients get nothing (and are told why here).
        let c = dnsmasq_conf(Path::new("/srv/fleet/tftp"), &net, &hosts, false);
        assert!(!c.contains("tag:bios") && !c.contains("pxelinux.0"), "{c}");
        assert_eq!(c.lines().filter(|l| l.starts_with("dhcp-boot=")).count(), 1);
    }

    #[test]
    fn a_fleet_refuses_a_mac_given_twice_an_invalid_config_and_no_hosts() {
        let dir = tempfile::tempdir().unwrap();
        let good = dir.path().join("good.toml");
        std::fs::write(&good, "[hypervisor]\n").unwrap();
        let bad = dir.path().join("bad.toml");
        std::fs::write(&bad, "[hypervisor]\nshutdown = \"later\"\n").unwrap();
        let net = Network { interface: "br0".into(), range: "10.0.0.2,10.0.0.9".into() };
        let k = Path::new("/nonexistent");
        let mac = Mac([2, 0, 0, 0, 0, 1]);
        let e = format!("{:#}", build(k, dir.path(), &net, &[]).unwrap_err());
        assert!(e.contains("at least one --host"), "{e}");
        let twice = [Host { mac, config: good.clone() }, Host { mac, config: good.clone() }];
        let e = format!("{:#}", build(k, dir.path(), &net, &twice).unwrap_err());
        assert!(e.contains("--host 02:00:00:00:00:01: given twice"), "{e}");
        let e = format!("{:#}", build(k, dir.path(), &net, &[Host { mac, config: bad }]).unwrap_err());
        assert!(e.contains("host 02:00:00:00:00:01") && e.contains("bad.toml:2:"), "{e}");
        for range in ["10.0.0.2", "10.0.0.2,10.0.0.9,255.255.255.0,12h"] {
            let net = Network { interface: "br0".into(), range: range.into() };
            let e = format!("{:#}", build(k, dir.path(), &net, &[Host { mac, config: good.clone() }]).unwrap_err());
            assert!(e.contains("--range START,END[,NETMASK]"), "{range}: {e}");
        }
        let evil = Network { interface: "br0\ndhcp-script=/tmp/x".into(), range: "10.0.0.2,10.0.0.9".into() };
        let e = format!("{:#}", build(k, dir.path(), &evil, &[Host { mac, config: good }]).unwrap_err());
        assert!(e.contains("line break"), "{e}");
    }
}
